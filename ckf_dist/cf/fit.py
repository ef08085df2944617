"""Training of the CF backbones (MF, LightGCN, and the sequential SASRec and DIN of
:mod:`ckf_dist.cf.sequential`), model selection on validation, export.

Entry point::

    tables, report = train_cf(split_data, cfg.cf, seed)            # cfg.cf.model
    tables, report = train_cf(split_data, cfg.cf, seed, "lightgcn")

What it does, for each weight decay in ``cfg.weight_decays``:
  1. build the model from the same seed (every grid point starts from the same initialisation),
  2. train with Adam(lr) on ``split == "train"`` rows only, for at most ``cfg.epochs`` epochs,
  3. after every epoch score the validation split; stop after ``cfg.patience`` epochs without
     improvement and restore the best epoch's parameters.
The weight decay with the best validation score wins; its tables are returned. The report lists
every grid point's validation score, best epoch and epochs run.

Objectives (``cfg.loss``; ``auto`` = ``mse`` when the data has ratings, else ``bpr``; LightGCN is
always BPR):
  - mse: mean (r_ui - score(u, i))^2 over training ratings. Validation: RMSE on validation ratings
    (predictions clipped to the training rating range), lower is better.
  (Validation uses the rows of users with training data; see ``_Data``.)
  - bpr: -log sigmoid(score(u, i) - score(u, j)) over training *positives* (``pos == 1``), one
    negative j per positive per epoch, drawn uniformly from the items that are not among u's
    training positives. Validation: sampled AUC, i.e. for every validation positive the fraction
    of ``VALID_NEGATIVES`` fixed sampled items (not u's training positives, not the item itself)
    scored below it (ties 1/2), averaged; higher is better.
Regularisation, each in the convention of its model's literature, chosen so that the default
grid (1e-5, 1e-4, 1e-3) brackets the optimum:
  - MF: L2 on every parameter but the global bias through Adam's (coupled) weight decay, i.e.
    the objective mean batch loss + (wd / 2) ||theta||^2.
  - LightGCN: wd * mean over the batch of (1/2)||ego rows of u, i, j||^2, as in its paper.
  NOTE (ML-100K leave-last-out, dim 32, lr 0.01, valid RMSE of MF-MSE): the per-batch form on MF gave 0.993 at
  all of 1e-5, 1e-4, 1e-3 and needed wd = 0.1 for its best, 0.974; the full-parameter form gives
  0.987 / 0.974 / 1.036, its optimum inside the default grid. For LightGCN the full-parameter
  form was worse (best valid sampled AUC 0.902 vs 0.910), so it keeps the paper's form.

CPU threads: training runs with one torch thread (restored afterwards). NOTE: the ops are tiny;
with another job busy on the 2-core machine an ML-100K epoch took 3.1-3.7 s (MF) and 2.0-3.2 s
(LightGCN) with 2 threads but 0.3-0.8 s and 0.3-0.5 s with 1.

Exported rows of users and items with no training interaction (for BPR: no training positive)
are zeroed (biases too), so they score as the global / item prior instead of a random
initialisation; users are folded in from their history by the consumers (see cf/tables.py).

This module knows SplitData and CFConfig; it knows nothing of prompts or the LLM.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ckf_dist.cf.lightgcn import LightGCN, normalized_adjacency
from ckf_dist.cf.mf import MF
from ckf_dist.cf.pairs import INIT_STD, VALID_NEGATIVES, PairData as _Data
from ckf_dist.cf.sequential import export_sequential, fit_sequential, row_histories
from ckf_dist.cf.tables import CFTables
from ckf_dist.config import CFConfig
from ckf_dist.config_sections import CF_MODELS, SEQUENTIAL_CF
from ckf_dist.data.table import SplitData

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ["u", "i", "timestamp", "rating", "label", "split", "pos"]
"""The columns of the split table CF training reads (no text)."""
VALID_CHUNK = 2048
"""Validation rows scored at once (bounds the BPR validation's memory)."""


def resolve_loss(model_name: str, cfg: CFConfig, has_rating: bool) -> str:
    """'mse', 'bpr' or 'bce' for a model: LightGCN is BPR; SASRec and DIN binary cross-entropy
    (see cf/sequential.py); MF follows cfg.loss (auto: mse iff ratings)."""
    if model_name == "lightgcn":
        return "bpr"
    if model_name in SEQUENTIAL_CF:
        return "bce"
    if model_name != "mf":
        raise ValueError(f"unknown CF model {model_name!r} ({', '.join(CF_MODELS)})")
    if cfg.loss == "auto":
        return "mse" if has_rating else "bpr"
    if cfg.loss == "mse" and not has_rating:
        raise ValueError("cf.loss=mse needs ratings, and this dataset has none")
    return cfg.loss


def _build(model_name: str, data: _Data, cfg: CFConfig, loss: str, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    if model_name == "mf":
        gb = data.mean_rating if loss == "mse" else 0.0
        return MF(data.num_users, data.num_items, cfg.dim, init_std=INIT_STD, global_bias=gb, generator=gen)
    adj = normalized_adjacency(data.u.numpy(), data.i.numpy(), data.num_users, data.num_items)
    return LightGCN(data.num_users, data.num_items, cfg.dim, adj, layers=cfg.lightgcn_layers, init_std=INIT_STD, generator=gen)


def _tables_of(model: torch.nn.Module, data: _Data, loss: str) -> dict[str, Any]:
    t = model.export()
    unseen_u = ~data.user_seen
    t["user_emb"][unseen_u] = 0.0
    if "user_bias" in t:
        t["user_bias"][unseen_u] = 0.0
    unseen_i = ~data.item_seen
    t["item_emb"][unseen_i] = 0.0
    if "item_bias" in t:
        t["item_bias"][unseen_i] = 0.0
    return t


def _score(t: dict[str, Any], users: np.ndarray, items: np.ndarray) -> np.ndarray:
    s = np.einsum("...d,...d->...", t["user_emb"][users].astype(np.float64), t["item_emb"][items].astype(np.float64))
    if "user_bias" in t:
        s = s + t["user_bias"][users] + t["item_bias"][items] + t["global_bias"]
    return s


def _validate(model: torch.nn.Module, data: _Data, loss: str) -> float:
    """The validation score; higher is better for bpr (AUC), lower for mse (RMSE)."""
    model.eval()
    t = _tables_of(model, data, loss)
    model.train()
    if loss == "mse":
        lo, hi = data.rating_range
        pred = np.clip(_score(t, data.valid_u, data.valid_i), lo, hi)
        return float(np.sqrt(np.mean((pred - data.valid_r) ** 2)))
    # In row chunks: the negatives' vectors of every row at once ([rows, VALID_NEGATIVES, d] float64)
    # would take 51 KB per validation row at d = 64, e.g. 4 GB for 80k users.
    wins = 0.0
    for a in range(0, len(data.valid_u), VALID_CHUNK):
        u = data.valid_u[a:a + VALID_CHUNK]
        s_pos = _score(t, u, data.valid_i[a:a + VALID_CHUNK])[:, None]
        s_neg = _score(t, u[:, None], data.valid_neg[a:a + VALID_CHUNK])
        wins += float(((s_neg < s_pos) + 0.5 * (s_neg == s_pos)).sum())
    return wins / data.valid_neg.size


def _fit(model_name: str, data: _Data, cfg: CFConfig, loss: str, wd: float, seed: int, progress: bool) -> tuple[torch.nn.Module, dict]:
    """Train one grid point with early stopping; returns the best-epoch model and its record."""
    t0 = time.perf_counter()
    model = _build(model_name, data, cfg, loss, seed)
    batch_l2 = isinstance(model, LightGCN)
    if batch_l2:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        decayed = [p for n, p in model.named_parameters() if n != "global_bias"]
        opt = torch.optim.Adam(
            [{"params": decayed, "weight_decay": wd}, {"params": [model.global_bias], "weight_decay": 0.0}], lr=cfg.lr
        )
    gen = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng([seed, 11])
    sign = 1.0 if loss == "bpr" else -1.0  # compare sign * score: higher is better
    best, best_epoch, best_state, bad, epoch = -math.inf, 0, None, 0, 0
    n = len(data.u)
    history = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{model_name}/{loss} wd={wd:g}", leave=False, disable=None if progress else True)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen)
        neg = torch.from_numpy(data.sample_negatives(data.u.numpy(), rng)) if loss == "bpr" else None
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            users, items = data.u[idx], data.i[idx]
            if loss == "mse":
                (pred,) = model(users, items)
                main = (pred - data.rating[idx]).pow(2).mean()
                batch_loss = main
            else:
                negs = neg[idx]
                s_pos, s_neg = model(users, items, negs)
                main = -torch.nn.functional.logsigmoid(s_pos - s_neg).mean()
                batch_loss = main + wd * 0.5 * model.l2(users, items, negs).mean() if batch_l2 else main
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            total += float(main.detach()) * len(idx)
        record = {"epoch": epoch, "train_loss": total / n, "valid": None}
        history.append(record)
        if not data.has_valid:
            continue
        score = record["valid"] = _validate(model, data, loss)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", valid=f"{score:.4f}")
        if sign * score > best:
            best, best_epoch, bad = sign * score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, {
        "weight_decay": wd,
        "valid_score": sign * best if best_state is not None else None,
        "best_epoch": best_epoch if best_state is not None else epoch,
        "epochs_run": epoch,
        "stopped_early": epoch < cfg.epochs,
        "seconds": round(time.perf_counter() - t0, 3),
        "history": history,
    }


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` inside the block (CF training runs on a fixed share of cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_cf(
    split_data: SplitData,
    cfg: CFConfig,
    seed: int,
    model_name: Optional[str] = None,
    *,
    progress: bool = True,
    threads: int = 1,
    history_len: int = 10,
) -> tuple[CFTables, dict]:
    """Train `model_name` (default cfg.model) over cfg.weight_decays; keep the best on validation.

    Returns (tables, report). report: model, loss, dim, valid_metric, valid_higher_is_better,
    weight_decay (the chosen one), valid_score, best_epoch, grid (one record per weight decay:
    weight_decay, valid_score, best_epoch, epochs_run, stopped_early, seconds, history of
    per-epoch train_loss / valid), num_train, seconds. Without validation rows there is no early
    stopping: every grid point trains cfg.epochs epochs and the first weight decay is kept.
    threads: torch intra-op threads while training (see the module NOTE). history_len: the
    sequential backbones' history window (``data.history_len``, the prompts' window)."""
    t0 = time.perf_counter()
    model_name = model_name or cfg.model
    loss = resolve_loss(model_name, cfg, split_data.has_rating)
    sequential = model_name in SEQUENTIAL_CF
    data = _Data(split_data, "bpr" if sequential else loss, seed)  # BCE models validate like BPR ones
    if len(data.u) == 0:
        raise ValueError(f"{model_name}/{loss}: no training interactions to fit on {split_data.name}")
    higher = loss != "mse"
    grid: list[dict] = []
    best: Optional[tuple[torch.nn.Module, dict]] = None
    hist = row_histories(split_data, history_len) if sequential else None
    # torch's global RNG (dropout) seeded from `seed` and restored after: the tables do not depend
    # on what ran before in the process, so equal inputs give equal tables (the cf stage's lineage)
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for wd in cfg.weight_decays:
            if sequential:
                model, rec = fit_sequential(model_name, split_data, data, cfg, float(wd), seed, history_len, hist)
            else:
                model, rec = _fit(model_name, data, cfg, loss, float(wd), seed, progress)
            grid.append(rec)
            log.info("%s/%s wd=%g valid=%s best_epoch=%d epochs=%d", model_name, loss, wd, rec["valid_score"],
                     rec["best_epoch"], rec["epochs_run"])
            if best is None or (
                rec["valid_score"] is not None
                and (rec["valid_score"] > best[1]["valid_score"] if higher else rec["valid_score"] < best[1]["valid_score"])
            ):
                best = (model, rec)
        model, rec = best
        t = export_sequential(model, split_data, data, history_len, cfg) if sequential else _tables_of(model, data, loss)
    report = {
        "model": model_name,
        "loss": loss,
        "dim": cfg.dim,
        "valid_metric": "rmse" if loss == "mse" else f"sampled_auc@{VALID_NEGATIVES}",
        "valid_higher_is_better": higher,
        "weight_decay": rec["weight_decay"],
        "valid_score": rec["valid_score"],
        "best_epoch": rec["best_epoch"],
        "grid": grid,
        "num_train": int(len(data.u)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    meta = {k: report[k] for k in ("model", "loss", "dim", "valid_metric", "weight_decay", "valid_score", "best_epoch")}
    meta.update(seed=seed, dataset=split_data.name, fold_in_ridge=cfg.fold_in_ridge)
    if loss == "mse":
        meta["rating_range"] = list(data.rating_range)
    if sequential:
        meta["encoder"] = t["encoder_meta"]
    tables = CFTables(
        user_emb=t["user_emb"].astype(np.float32),
        item_emb=t["item_emb"].astype(np.float32),
        user_ids=list(split_data.user_ids),
        item_ids=list(split_data.item_ids),
        meta=meta,
        user_bias=t.get("user_bias"),
        item_bias=t.get("item_bias"),
        global_bias=float(t.get("global_bias", 0.0)),
        encoder=t.get("encoder") or {},
    )
    return tables, report

