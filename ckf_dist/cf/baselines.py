"""Popularity and CF baselines, scored on the very sample dicts the LLM is evaluated on.

Every baseline turns the (valid or test) samples of a task into per-sample predictions and hands
them to :func:`ckf_dist.eval.metrics.task_metrics`, the same function the CKF evaluation loop
calls, so the numbers in one table are comparable sample for sample.

Models and what they predict (statistics from ``split == "train"`` only):
  - ``popularity``
      ctr:    the item's smoothed positive rate (pos_i + a g) / (n_i + a), g the global training
              positive rate, a = PRIOR_STRENGTH; an item unseen in train gets g.
      rating, review_rating: the item's damped mean rating (sum_i + a mu) / (n_i + a), mu the
              global mean; an unseen item gets mu.
      topk:   the item's training interaction count (most popular first).
  - ``mf`` (``ckf_dist.cf.fit``, tuned on validation; a user without training interactions is
    folded in from the sample's history, :meth:`CFTables.user_vectors`, as the CKF model does):
      ctr and topk: ``CFTables.score`` (for an MSE-trained MF that is the predicted rating:
      higher = more likely liked).
      rating, review_rating: the predicted rating clipped to the training rating range (MSE-trained
      MF only; a BPR-trained MF does not predict ratings and reports ctr and topk only).
  - ``lightgcn``: BPR; ctr and topk only.
  - ``sasrec``, ``din`` (``ckf_dist.cf.sequential``): the model's own score after the sample's
    history (its user vector is the encoding of that history); ctr and topk only.
  - ``retrieval`` (explanation only): the most similar training summary. For (u, i): among the
    training summaries of item i, the one whose writer is closest to u (cosine of the backbone's
    user vectors, u folded in from its history when new); an item without training summaries
    takes u's latest training summary, and failing that the most frequent training summary.

This module knows SplitData, sample dicts and CF tables; it knows nothing of the LLM.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ckf_dist.cf.tables import CFTables
from ckf_dist.cf.fit import train_cf
from ckf_dist.config import ALL_TASKS, Config
from ckf_dist.data.samples import history_ratings
from ckf_dist.data.table import SplitData
from ckf_dist.eval.metrics import task_metrics
from ckf_dist.eval.selection import eval_cap, select

log = logging.getLogger(__name__)

PRIOR_STRENGTH = 5.0
"""Pseudo-count `a` of the popularity baselines' shrinkage towards the global rate / mean."""
RATING_TASKS = ("rating", "review_rating")


class Popularity:
    """Item statistics of the training split; scores any (user, item) by the item alone."""

    name = "popularity"

    def __init__(self, split_data: SplitData, prior: float = PRIOR_STRENGTH):
        train = split_data.part("train")
        n_items = split_data.num_items
        i = train["i"].to_numpy(np.int64)
        self.count = np.bincount(i, minlength=n_items).astype(np.float64)
        pos = train["pos"].to_numpy(np.float64)
        g = float(np.nanmean(pos)) if len(pos) else 0.0
        n_pos = np.bincount(i, weights=np.nan_to_num(pos), minlength=n_items)
        self.pos_rate = (n_pos + prior * g) / (self.count + prior)
        rated = train["rating"].notna().to_numpy()
        self.has_rating = bool(rated.any())
        if self.has_rating:
            r = train["rating"].to_numpy(np.float64)[rated]
            mu = float(r.mean())
            n_r = np.bincount(i[rated], minlength=n_items)
            self.mean_rating = (np.bincount(i[rated], weights=r, minlength=n_items) + prior * mu) / (n_r + prior)

    def tasks(self) -> tuple[str, ...]:
        return ("ctr", "topk") + (RATING_TASKS if self.has_rating else ())

    def predict(self, task: str, samples: Sequence[Mapping]) -> list:
        if task == "ctr":
            return [float(self.pos_rate[s["items"][0]]) for s in samples]
        if task == "topk":
            return [self.count[np.asarray(s["candidates"], dtype=np.int64)] for s in samples]
        if task in RATING_TASKS:
            return [float(self.mean_rating[s["items"][0]]) for s in samples]
        raise ValueError(f"popularity has no prediction for task {task!r}")


class CFBaseline:
    """A trained CF model's tables as a baseline."""

    def __init__(self, name: str, tables: CFTables):
        self.name = name
        self.tables = tables
        self.loss = tables.meta.get("loss", "bpr")

    def tasks(self) -> tuple[str, ...]:
        return ("ctr", "topk") + (RATING_TASKS if self.loss == "mse" else ())

    def predict(self, task: str, samples: Sequence[Mapping]) -> list:
        if not samples:
            return []
        users = [s["user"] for s in samples]
        histories = [s["history"] for s in samples]
        ratings = history_ratings(samples)
        if task == "topk":  # one batched call per candidate count
            out: list = [None] * len(samples)
            by_count: dict[int, list[int]] = {}
            for k, s in enumerate(samples):
                by_count.setdefault(len(s["candidates"]), []).append(k)
            for rows in by_count.values():
                cands = np.asarray([samples[k]["candidates"] for k in rows], dtype=np.int64)
                scores = self.tables.score_with_history([users[k] for k in rows], [histories[k] for k in rows], cands,
                                                        [ratings[k] for k in rows])
                for k, row in zip(rows, scores):
                    out[k] = row
            return out
        items = np.array([s["items"][0] for s in samples], dtype=np.int64)
        scores = self.tables.score_with_history(users, histories, items, ratings)
        if task == "ctr":
            return scores.tolist()
        if task in RATING_TASKS and self.loss == "mse":
            lo, hi = self.tables.meta.get("rating_range", (-np.inf, np.inf))
            return np.clip(scores, lo, hi).tolist()
        raise ValueError(f"{self.name} has no prediction for task {task!r}")


class SummaryRetrieval:
    """The explanation baseline: the most similar training summary (module docstring)."""

    name = "retrieval"

    def __init__(self, split_data: SplitData, tables: CFTables):
        train = split_data.part("train")
        train = train[train["summary"].str.strip().str.len() > 0]
        self.tables = tables
        self.by_item: dict[int, list[tuple[int, str]]] = {}
        self.latest: dict[int, str] = {}
        for u, i, text in zip(train["u"].tolist(), train["i"].tolist(), train["summary"].tolist()):
            self.by_item.setdefault(int(i), []).append((int(u), str(text).strip()))
            self.latest[int(u)] = str(text).strip()  # rows are in time order per user
        counts = train["summary"].str.strip().value_counts()
        self.fallback = str(counts.index[0]) if len(counts) else ""

    def tasks(self) -> tuple[str, ...]:
        return ("explanation",)

    def predict(self, task: str, samples: Sequence[Mapping]) -> list:
        if task != "explanation":
            raise ValueError(f"retrieval has no prediction for task {task!r}")
        out = []
        for s in samples:
            pool = self.by_item.get(int(s["items"][0]))
            if not pool:
                out.append(self.latest.get(int(s["user"]), self.fallback))
                continue
            me = self.tables.user_vectors([s["user"]], [s["history"]], [s["items"]], history_ratings([s]))[0]
            writer_ids = [u for u, _ in pool]
            # writers by their trained rows (a sequential backbone's row: its training history's encoding)
            writers = (self.tables.user_emb[writer_ids].astype(np.float64) if self.tables.sequential
                       else self.tables.user_vectors(writer_ids, [[] for _ in pool]))
            sim = writers @ me / (np.linalg.norm(writers, axis=1) * np.linalg.norm(me) + 1e-12)
            out.append(pool[int(np.argmax(sim))][1])
        return out


def run_baselines(
    split_data: SplitData,
    samples_by_split: Mapping[str, Sequence[Mapping]],
    cfg: Config,
    seed: int,
    *,
    split: str = "test",
    tables: Optional[Mapping[str, CFTables]] = None,
) -> dict[str, dict[str, dict]]:
    """Score popularity and the cfg.cf.baselines CF models on `samples_by_split[split]`.

    tables: already trained CF tables by model name (e.g. the backbone CKF uses); missing ones
    are trained here with :func:`ckf_dist.cf.fit.train_cf`. Returns
    ``{model: {task: metrics dict of task_metrics}}`` for the tasks each model can predict."""
    by_task: dict[str, list] = {}
    for s in samples_by_split.get(split, []):
        by_task.setdefault(s["task"], []).append(s)
    # the rows the LLM evaluator scores (eval_cap), so every table row shares them
    by_task = {t: select(v, eval_cap(cfg.eval, t), cfg.seed) for t, v in by_task.items()}
    models: list[Any] = [Popularity(split_data)]
    for name in cfg.cf.baselines:
        t = (tables or {}).get(name)
        if t is None:
            t, report = train_cf(split_data, cfg.cf, seed, name, history_len=cfg.data.history_len)
            log.info("%s: weight_decay=%g valid %s=%s", name, report["weight_decay"], report["valid_metric"], report["valid_score"])
        models.append(CFBaseline(name, t))
    backbone = (tables or {}).get(cfg.cf.model) or next((m.tables for m in models if isinstance(m, CFBaseline)), None)
    if "explanation" in by_task and backbone is not None:
        models.append(SummaryRetrieval(split_data, backbone))
    results: dict[str, dict[str, dict]] = {}
    for m in models:
        out = {}
        for task in ALL_TASKS:
            if task in by_task and task in m.tasks():
                out[task] = task_metrics(task, by_task[task], m.predict(task, by_task[task]), cfg.eval.ks)
        results[m.name] = out
    return results


_NOT_COLUMNS = ("n", "warm", "cold", "new", "uauc_users")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}"


def baseline_table_markdown(results: Mapping[str, Mapping[str, Mapping]], group: str = "all") -> str:
    """A markdown table: one row per model, one column per (task, metric), for the split the
    results were computed on. group: "all", "warm", "cold" or "new" users. A model that does not
    predict a task shows "–"; so does an undefined metric (e.g. UAUC with no user having both
    labels)."""
    tasks = [t for t in ALL_TASKS if any(t in r for r in results.values())]
    cols = []
    for t in tasks:
        keys = next(r[t] for r in results.values() if t in r)
        cols += [(t, m) for m in keys if m not in _NOT_COLUMNS]
    head = "| model | " + " | ".join(f"{t} {m}" for t, m in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    rows = []
    for name, r in results.items():
        cells = []
        for t, m in cols:
            d = r.get(t)
            if d is not None and group != "all":
                d = d[group]
            cells.append(_fmt(d.get(m)) if d is not None else "–")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    n = {t: next((r[t]["n"] if group == "all" else r[t][group]["n"]) for r in results.values() if t in r) for t in tasks}
    note = "samples: " + ", ".join(f"{t} {n[t]}" for t in tasks)
    return "\n".join([head, rule, *rows, "", note])
