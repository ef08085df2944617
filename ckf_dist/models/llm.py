"""Loading any local HF causal LM directory (LLaMA, Qwen2, Mistral, the embedded tiny model) as
the base LLM, with the CF placeholder token registered.

Must not know: CF tables, prompts' structure, DeepSpeed, Ray. Nothing is ever fetched from a model
hub (``local_files_only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ckf_dist.config import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class ModelDirError(ConfigError):
    """A model directory that cannot serve as the base LLM; the message is one line."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def ensure_placeholder(model, tokenizer, placeholder_token: str, where: str = "tokenizer") -> int:
    """Register ``placeholder_token`` as one special token and make sure the model has a row for it.

    Resizes the input (and output) embeddings only when the new id is past the last row; models
    whose embedding matrix already has spare rows (e.g. Qwen2) keep their size. Returns its id.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    if placeholder_token not in vocab:
        try:
            added = tokenizer.add_tokens([AddedToken(placeholder_token, special=True, normalized=False)], special_tokens=True)
        except Exception as e:  # noqa: BLE001 - any failure means "no room"
            raise ModelDirError(f"{where}: no room for the placeholder token {placeholder_token!r} ({_first_line(e)})") from None
        if added != 1:
            raise ModelDirError(f"{where}: no room for the placeholder token {placeholder_token!r}")
    pid = tokenizer.convert_tokens_to_ids(placeholder_token)
    enc = tokenizer(f"a {placeholder_token} b", add_special_tokens=False)["input_ids"]
    alone = tokenizer(placeholder_token, add_special_tokens=False)["input_ids"]
    if pid is None or alone != [pid] or enc.count(pid) != 1:
        raise ModelDirError(f"{where}: the placeholder token {placeholder_token!r} does not encode to exactly one id")
    rows = model.get_input_embeddings().weight.shape[0]
    if pid >= rows:
        try:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except Exception as e:  # noqa: BLE001
            raise ModelDirError(f"{where}: cannot resize the embeddings for the placeholder token ({_first_line(e)})") from None
    return int(pid)


def load_llm(path: str | Path, placeholder_token: str, dtype: Optional[torch.dtype] = torch.float32):
    """Load a local HF causal LM directory -> (model, tokenizer), placeholder token registered.

    Raises a one-line :class:`ModelDirError` (a ConfigError) when the directory is missing, has no
    config / weights / tokenizer, or the tokenizer cannot take the placeholder. The tokenizer gets
    right padding and, when it has none, ``pad = eos`` (pad positions are masked out anyway).
    The model is returned in eval mode; its parameters are not frozen here (injection does that).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ModelDirError(f"model.path {p}: not a directory")
    if not (p / "config.json").is_file():
        raise ModelDirError(f"model.path {p}: no config.json (not an HF model directory)")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ModelDirError(f"model.path {p}: no weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelDirError(f"model.path {p}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelDirError(f"model.path {p}: cannot load the tokenizer ({_first_line(e)})") from None
    if tokenizer.eos_token_id is None:
        raise ModelDirError(f"model.path {p}: the tokenizer has no EOS token")
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise ModelDirError(f"model.path {p}: cannot load the model ({_first_line(e)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    ensure_placeholder(model, tokenizer, placeholder_token, where=f"model.path {p}")
    model.eval()
    return model, tokenizer
