"""Out-of-fold CF tables for the LLM's training rows (``cf.cross_fit``; why: :mod:`ckf_dist.data.folds`).

For K folds of the training interactions, model k is the CF backbone trained as the full one
(same seed, same weight decay, early stopping on the same validation rows) on the training
interactions outside fold k. Its vectors live in a space of their own: a dot-product model is
unchanged when users and items are turned by the same orthogonal matrix, so two fits agree only up
to such a turn. Each fold's tables are therefore aligned with the full model's by orthogonal
Procrustes on the items both have a vector for (R = argmin ||Q_k R - Q||, R orthogonal), applied to
its users and items alike: scores are unchanged, and the CF-to-LLM mapping, learned on fold
vectors in training and applied to the full model's at test time, sees one space. Biases are
scalars and need no alignment. Rows a fold model has no training data for are zero, as in the full
tables (a user whose every training interaction is in fold k is folded in from its history).

This module knows SplitData, CFConfig and the tables; nothing of prompts or the LLM.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ckf_dist.cf.fit import train_cf
from ckf_dist.cf.tables import CFTables
from ckf_dist.config import CFConfig
from ckf_dist.config_sections import SEQUENTIAL_CF
from ckf_dist.data.folds import interaction_folds
from ckf_dist.data.table import SplitData

log = logging.getLogger(__name__)

LEFT_OUT = "cross_fit_left_out"
"""The split name a fold's training interactions get while its model trains (neither train nor valid)."""


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[d, d] orthogonal R minimising ||source R - target|| over the rows (both [n, d])."""
    u, _, vt = np.linalg.svd(source.astype(np.float64).T @ target.astype(np.float64))
    return u @ vt


def without_fold(split_data: SplitData, fold: int, folds: int) -> SplitData:
    """`split_data` with the training interactions of `fold` moved out of the training split."""
    inter = split_data.inter
    train = (inter["split"] == "train").to_numpy()
    drop = np.zeros(len(inter), dtype=bool)
    drop[train] = interaction_folds(inter["u"].to_numpy()[train], inter["i"].to_numpy()[train], folds) == fold
    return dataclasses.replace(split_data, inter=inter.assign(split=np.where(drop, LEFT_OUT, inter["split"].to_numpy())))


def fit_cross_folds(split_data: SplitData, cfg: CFConfig, seed: int, full: CFTables, model_name: str,
                    history_len: int = 10) -> dict[str, np.ndarray]:
    """The K = ``cfg.cross_fit`` out-of-fold tables of `model_name`, aligned with `full` (its tables
    on all training rows): user_emb [K, U, d], item_emb [K, I, d], and for MF user_bias [K, U],
    item_bias [K, I]; the layout :class:`CFTables` stores as ``cross_fit``."""
    folds = int(cfg.cross_fit)
    if folds < 2:
        raise ValueError(f"cf.cross_fit must be >= 2 to fit folds, got {folds}")
    if model_name in SEQUENTIAL_CF:
        raise ValueError(f"cf.cross_fit: {model_name} encodes histories and has no tables to cross-fit (mf, lightgcn)")
    one = dataclasses.replace(cfg, weight_decays=[float(full.meta["weight_decay"])], cross_fit=0)
    out: dict[str, list[np.ndarray]] = {}
    for k in range(folds):
        t, report = train_cf(without_fold(split_data, k, folds), one, seed, model_name, progress=False,
                             history_len=history_len)
        both = (np.abs(t.item_emb).sum(1) > 0) & (np.abs(full.item_emb).sum(1) > 0)  # items with a vector in both fits
        r = procrustes(t.item_emb[both], full.item_emb[both])
        out.setdefault("user_emb", []).append((t.user_emb @ r).astype(np.float32))
        out.setdefault("item_emb", []).append((t.item_emb @ r).astype(np.float32))
        if t.user_bias is not None and t.item_bias is not None:
            out.setdefault("user_bias", []).append(t.user_bias.astype(np.float32))
            out.setdefault("item_bias", []).append(t.item_bias.astype(np.float32))
        log.info("cross-fit fold %d/%d of %s: %d training interactions, valid %s, best epoch %d", k + 1, folds,
                 model_name, report["num_train"], report["valid_score"], report["best_epoch"])
    return {name: np.stack(arrays) for name, arrays in out.items()}
