"""The one place a CKF model is assembled from a run: base LLM + tokenizer, frozen CF tables,
the output of the mode stage (BinLLM's codes, A-LLMRec's aligned items), CKFModel, and the
collators that feed it.

Training (every rank), evaluation, `ckf recommend` and the benchmarks call
:func:`build_ckf_model`; nobody else constructs :class:`CKFModel` from files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ckf_dist.cf.align import load_aligned_items
from ckf_dist.cf.binarize import TextCodes, load_binarizer
from ckf_dist.cf.sequential import build_encoder
from ckf_dist.cf.tables import CFTables, load_cf_tables
from ckf_dist.config import Config
from ckf_dist.models.ckf import CKFModel
from ckf_dist.data.collate import Collator
from ckf_dist.models.llm import load_llm


@dataclass
class BuiltModel:
    model: CKFModel
    tokenizer: object
    collator: Collator
    """Training batches (with the text-only twin when the curriculum is on)."""
    eval_collator: Collator
    """Evaluation batches (no twin)."""
    tables: CFTables
    codes: Optional[TextCodes] = None
    """model.mapping=binllm: the code strings the collators write into the prompts."""


def assemble_ckf_model(cfg: Config, llm, tok, user_vecs: torch.Tensor, item_vecs: torch.Tensor,
                       device: torch.device | str = "cpu", user_encoder: Optional[torch.nn.Module] = None,
                       item_tokens: Optional[torch.Tensor] = None, tables: Optional[CFTables] = None) -> CKFModel:
    """The one CKFModel constructor call: `llm` + `tok` with frozen CF vectors (a sequential
    backbone's encoder, A-LLMRec's aligned items), on `device`. :func:`build_ckf_model` feeds it
    from a run's files; the GPU benchmark from a random LLaMA. `tables` (MF with biases) gives the
    rating-aware fold-in its biases and ridge; with its out-of-fold tables (``cf.cross_fit``) the
    vectors are :meth:`CFTables.model_inputs` stacked, and so are the biases."""
    fold = {}
    if tables is not None and tables.item_bias is not None and not tables.sequential:
        fold = {"item_bias": torch.from_numpy(tables.model_item_bias(stacked=tables.folds > 0)),
                "global_bias": tables.global_bias, "fold_in_ridge": tables.fold_in_ridge,
                "biases_in_vectors": bool(cfg.model.cf_biases and tables.user_bias is not None)}
    return CKFModel(llm, tok, user_vecs, item_vecs, cfg, user_encoder=user_encoder, item_tokens=item_tokens, **fold).to(device)


def build_ckf_model(cfg: Config, llm_path: str | Path, cf_path: str | Path, device: torch.device | str = "cpu",
                    dtype: Optional[torch.dtype] = torch.float32, mode_path: Optional[str | Path] = None) -> BuiltModel:
    """Load the base LLM from `llm_path` (in `dtype`) and the CF tables from `cf_path`, build the
    CKF model on `device` and its collators. The model's CF vectors are
    :meth:`CFTables.model_inputs` (``model.cf_biases``); a sequential backbone's encoder comes with them. `mode_path`: the mode stage's output
    (``Run.mode_file``), read when ``model.needs_mode_stage()``."""
    tables = load_cf_tables(cf_path)
    if cfg.model.needs_mode_stage() and mode_path is None:
        raise ValueError(f"model.mapping={cfg.model.mapping} needs the output of its mode stage (mode_path)")
    codes = None
    if cfg.model.prompt_kind() == "codes":
        codes = TextCodes(tables, load_binarizer(mode_path), cfg.model.binllm_compress)
    llm, tok = load_llm(llm_path, cfg.model.placeholder_token, dtype=dtype)
    # with out-of-fold tables, the model holds them after the full ones; only training rows read them
    users, items = tables.model_inputs(cfg.model.cf_biases, stacked=tables.folds > 0)
    encoder = build_encoder(tables) if tables.sequential else None
    aligned = None
    if cfg.model.mapping == "allmrec" and cfg.model.needs_mode_stage():
        aligned = torch.from_numpy(load_aligned_items(mode_path, tables.num_items))
    model = assemble_ckf_model(cfg, llm, tok, torch.from_numpy(users), torch.from_numpy(items), device, user_encoder=encoder,
                               item_tokens=aligned, tables=tables)
    sizes = {"num_users": tables.num_users, "num_items": tables.num_items}
    folds = {"cross_fit": tables.folds} if tables.folds else {}
    return BuiltModel(model=model, tokenizer=tok, collator=make_collator(cfg, tok, codes=codes, **sizes, **folds),
                      eval_collator=make_collator(cfg, tok, text_twin=False, codes=codes, **sizes), tables=tables,
                      codes=codes)


def make_collator(cfg: Config, tok, text_twin: Optional[bool] = None, num_users: Optional[int] = None,
                  num_items: Optional[int] = None, codes: Optional[TextCodes] = None, cross_fit: int = 0) -> Collator:
    """The collator of `tok` for `cfg` (training; evaluation with `text_twin=False`), checking CF ids
    against the table sizes when given; `codes` for model.mapping=binllm; `cross_fit` (training
    with out-of-fold tables): the number of folds whose tables follow the full ones."""
    return Collator(tok, cfg, tok.convert_tokens_to_ids(cfg.model.placeholder_token), text_twin=text_twin,
                    num_users=num_users, num_items=num_items, codes=codes, cross_fit=cross_fit)
