"""Pure metric functions and the one per-task metrics entry point, :func:`task_metrics`.

This module owns how a list of per-sample predictions becomes the metrics dict of a task; it
knows nothing of models (no torch, no LLM, no CF tables). The CKF evaluation loop and the CF /
popularity baselines (``ckf_dist.cf.baselines``) both call :func:`task_metrics`, so every model
is scored by the same code on the same samples.

Conventions
- Every metric returns a Python ``float``, or ``None`` where it is undefined (an empty input,
  AUC over one class only). ``None`` is written as JSON ``null``.
- Ties are never broken in the model's favour: AUC gives a tied (positive, negative) pair 1/2;
  HR@k / NDCG@k are the *expected* values when tied candidates are ordered uniformly at random
  (a constant scorer gets HR@k = k / N, not 1).
- The breakdown: every task dict holds the metrics over all samples, then ``warm``, ``cold`` and
  ``new`` sub-dicts over the samples of each user group, each with its sample count ``n``; an
  empty group is ``{"auc": null, ..., "n": 0}``. The group is ``sample["group"]`` ("warm",
  "cold" or "new": a user with 0 training interactions is new, 1..``data.cold_threshold`` cold,
  more warm); a sample without ``group`` falls back to ``sample["warm"]`` (warm / cold).

Each hand-written metric is pinned by ``tests/eval/test_metrics_reference.py`` to a well-kept
implementation on random inputs:
- ``auc`` = ``sklearn.metrics.roc_auc_score``; ``uauc`` = its unweighted mean over the users
  having both labels (CoLLM / BinLLM's UAUC);
- ``ndcg_at_k`` = ``sklearn.metrics.ndcg_score(k=k)`` with one relevant candidate (ties are
  averaged the same way, ``ignore_ties=False``); ``hit_rate_at_k`` =
  ``sklearn.metrics.top_k_accuracy_score`` when no score is tied;
- ``mae`` / ``rmse`` = ``sklearn.metrics.mean_absolute_error`` / sqrt(``mean_squared_error``);
- ``bleu4`` = NLTK's ``corpus_bleu`` (weights 0.25 x 4, ``SmoothingFunction().method2``) on the
  tokens of :func:`tokenize`, one reference per hypothesis;
- ``rouge_n`` / ``rouge_l`` = Google's ``rouge-score`` (``RougeScorer(use_stemmer=False)``),
  F-measure averaged over samples. Its default tokenizer gives the same tokens as
  :func:`tokenize` on any text whose lowercase form has no non-ASCII letter or digit; on other
  text :func:`tokenize` keeps the Unicode letters and digits inside tokens (``"Café crème"`` ->
  ``["café", "crème"]``) where rouge-score splits on them and keeps ASCII runs only
  (``["caf", "cr", "me"]``). With ``RougeScorer(tokenizer=...)`` wrapping :func:`tokenize` the
  scores are equal on any text.

Text metrics tokenize with :func:`tokenize`: lowercase, every run of characters that are not
letters or digits (punctuation, whitespace, underscore) is a separator. So ``"Don't stop!"`` ->
``["don", "t", "stop"]``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "auc",
    "uauc",
    "hit_rate_at_k",
    "ndcg_at_k",
    "mae",
    "rmse",
    "tokenize",
    "bleu4",
    "rouge_n",
    "rouge_l",
    "GROUPS",
    "grouped",
    "sample_groups",
    "metric_names",
    "task_metrics",
]

# --------------------------------------------------------------------------------------------
# Classification / ranking


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def auc(labels: Sequence[float], scores: Sequence[float]) -> Optional[float]:
    """ROC AUC by ranks (Mann-Whitney U), tie-aware: tied scores share their average rank, so a
    tied positive/negative pair counts 1/2. labels: [n] in {0, 1}; scores: [n]. None when the
    input lacks either class."""
    y = _as_1d(labels, "labels")
    s = _as_1d(scores, "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of s (ascending), ties sharing the mean of their ranks."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Start index of each run of equal values, and the run's mean 1-based rank.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def uauc(users: Sequence[int], labels: Sequence[float], scores: Sequence[float]) -> tuple[Optional[float], int]:
    """Mean per-user AUC (unweighted) over the users having both labels.

    Returns (uauc, number of users averaged); uauc is None when no user has both labels (for
    instance with one evaluation sample per user)."""
    u = np.asarray(users).reshape(-1)
    y = _as_1d(labels, "labels")
    s = _as_1d(scores, "scores")
    if not (len(u) == len(y) == len(s)):
        raise ValueError("users, labels and scores differ in length")
    if len(u) == 0:
        return None, 0
    order = np.argsort(u, kind="mergesort")
    u, y, s = u[order], y[order], s[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    values = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        v = auc(y[a:b], s[a:b])
        if v is not None:
            values.append(v)
    if not values:
        return None, 0
    return float(np.mean(values)), len(values)


def _answer_rank_parts(scores: Sequence[Sequence[float]], answers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: g = candidates scored strictly above the answer, t = others tied with it."""
    if len(scores) != len(answers):
        raise ValueError(f"{len(scores)} score rows but {len(answers)} answers")
    g = np.empty(len(answers), dtype=np.int64)
    t = np.empty(len(answers), dtype=np.int64)
    for j, (row, a) in enumerate(zip(scores, answers)):
        r = _as_1d(row, "candidate scores")
        a = int(a)
        if not 0 <= a < len(r):
            raise ValueError(f"answer index {a} out of range for {len(r)} candidates")
        g[j] = int((r > r[a]).sum())
        t[j] = int((r == r[a]).sum()) - 1
    return g, t


def hit_rate_at_k(scores: Sequence[Sequence[float]], answers: Sequence[int], k: int) -> Optional[float]:
    """HR@k with one relevant candidate per sample. scores: per sample, one score per candidate
    (rows may differ in length); answers: the index of the true candidate in each row.

    With g candidates strictly above the answer and t tied with it, the answer's rank is uniform
    on g+1 .. g+1+t, so the sample's hit probability is clip((k - g) / (t + 1), 0, 1)."""
    if len(answers) == 0:
        return None
    g, t = _answer_rank_parts(scores, answers)
    return float(np.mean(np.clip((k - g) / (t + 1.0), 0.0, 1.0)))


def ndcg_at_k(scores: Sequence[Sequence[float]], answers: Sequence[int], k: int) -> Optional[float]:
    """NDCG@k with one relevant candidate (ideal DCG = 1): 1 / log2(rank + 1) if rank <= k, else 0,
    averaged over the uniformly random order of tied candidates (see :func:`hit_rate_at_k`)."""
    if len(answers) == 0:
        return None
    g, t = _answer_rank_parts(scores, answers)
    total = 0.0
    for gj, tj in zip(g.tolist(), t.tolist()):
        ranks = np.arange(gj + 1, min(gj + 1 + tj, k) + 1)  # 1-based ranks that fall within k
        total += float((1.0 / np.log2(ranks + 1.0)).sum()) / (tj + 1)
    return total / len(answers)


# --------------------------------------------------------------------------------------------
# Regression


def mae(labels: Sequence[float], preds: Sequence[float]) -> Optional[float]:
    """Mean absolute error; None for no samples."""
    y, p = _as_1d(labels, "labels"), _as_1d(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and preds {p.shape} differ in shape")
    return float(np.abs(y - p).mean()) if len(y) else None


def rmse(labels: Sequence[float], preds: Sequence[float]) -> Optional[float]:
    """Root mean squared error; None for no samples."""
    y, p = _as_1d(labels, "labels"), _as_1d(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and preds {p.shape} differ in shape")
    return float(np.sqrt(((y - p) ** 2).mean())) if len(y) else None


# --------------------------------------------------------------------------------------------
# Text

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase; runs of letters/digits are tokens, everything else separates them."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> Optional[float]:
    """Corpus BLEU-4 in [0, 1], one reference per hypothesis, uniform weights, brevity penalty:
    NLTK's ``corpus_bleu([[tokenize(r)] for r in references], [tokenize(h) for h in hypotheses],
    weights=(0.25,) * 4, smoothing_function=SmoothingFunction().method2)``.

    p_n = (clipped n-gram matches summed over the corpus) / (sum over hypotheses of
    max(1, hypothesis n-grams)): as in NLTK, a hypothesis with fewer than n tokens (an empty one
    included) still adds 1 to the n-gram denominator. BLEU = BP * exp(mean_n log p_n),
    BP = 1 if c > r else exp(1 - r / c) with c, r the total hypothesis / reference token counts.
    Smoothing (Lin & Och 2004, NLTK's ``method2``): p_n = (m_n + 1) / (l_n + 1) for n = 2, 3, 4,
    so a small corpus without any 4-gram match is not zeroed; p_1 is unsmoothed (no unigram
    match at all gives 0). Empty corpus -> None; empty hypotheses overall -> 0.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return None
    matches = [0] * 4
    totals = [0] * 4
    c = r = 0
    for ref, hyp in zip(references, hypotheses):
        rt, ht = tokenize(ref), tokenize(hyp)
        c += len(ht)
        r += len(rt)
        for n in range(1, 5):
            hg, rg = _ngrams(ht, n), _ngrams(rt, n)
            matches[n - 1] += sum(min(cnt, rg[g]) for g, cnt in hg.items())
            totals[n - 1] += max(len(ht) - n + 1, 1)
    if c == 0 or matches[0] == 0:
        return 0.0
    log_p = math.log(matches[0] / totals[0])
    for n in range(1, 4):
        log_p += math.log((matches[n] + 1) / (totals[n] + 1))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return float(bp * math.exp(log_p / 4.0))


def _f1(overlap: int, n_hyp: int, n_ref: int) -> float:
    if overlap == 0 or n_hyp == 0 or n_ref == 0:
        return 0.0
    p, rc = overlap / n_hyp, overlap / n_ref
    return 2 * p * rc / (p + rc)


def rouge_n(references: Sequence[str], hypotheses: Sequence[str], n: int) -> Optional[float]:
    """ROUGE-N F1 averaged over samples: overlap = clipped n-gram matches, P = overlap / hyp
    n-grams, R = overlap / ref n-grams. A sample where either side has no n-gram scores 0.
    None for no samples."""
    def f1(ref: list[str], hyp: list[str]) -> float:
        hg, rg = _ngrams(hyp, n), _ngrams(ref, n)
        return _f1(sum(min(cnt, rg[g]) for g, cnt in hg.items()), sum(hg.values()), sum(rg.values()))

    return _mean_over_pairs(references, hypotheses, f1)


def _mean_over_pairs(references: Sequence[str], hypotheses: Sequence[str],
                     score: Callable[[list[str], list[str]], float]) -> Optional[float]:
    """Mean of score(reference tokens, hypothesis tokens) over the pairs; None for no pairs."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return None
    return float(np.mean([score(tokenize(ref), tokenize(hyp)) for ref, hyp in zip(references, hypotheses)]))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> Optional[float]:
    """ROUGE-L F1 (beta = 1) averaged over samples: P = LCS / |hyp|, R = LCS / |ref| in tokens.
    None for no samples."""
    return _mean_over_pairs(references, hypotheses, lambda ref, hyp: _f1(_lcs(hyp, ref), len(hyp), len(ref)))


# --------------------------------------------------------------------------------------------
# Breakdown and the per-task entry point


def _take(col: Any, idx: np.ndarray) -> Any:
    if isinstance(col, np.ndarray):
        return col[idx]
    return [col[j] for j in idx.tolist()]


GROUPS = ("warm", "cold", "new")
"""The user groups of the breakdown: warm (more than ``data.cold_threshold`` training
interactions), cold (1..cold_threshold), new (none)."""


def _group_labels(groups: Any) -> np.ndarray:
    """[n] bool (True = warm, False = cold) or [n] str in GROUPS -> [n] str array."""
    g = np.asarray(groups).reshape(-1)
    if g.dtype == bool:
        return np.where(g, "warm", "cold")
    g = g.astype(str)
    bad = sorted(set(g.tolist()) - set(GROUPS))
    if bad:
        raise ValueError(f"unknown user group(s) {bad}; expected one of {list(GROUPS)}")
    return g


def grouped(metric_fn: Callable[..., dict], groups: Sequence[Any], *columns: Any) -> dict:
    """Apply ``metric_fn(*columns) -> {metric: value}`` to all samples and to each user group.
    columns: per-sample sequences (numpy arrays or lists, ragged rows allowed), all of length n;
    groups: [n] group names ("warm", "cold", "new"), or [n] bool warm flags (True = "warm",
    False = "cold"; the "new" group is then empty).

    Returns ``{**metrics, "n": n, "warm": {**metrics, "n": n_warm}, "cold": {...}, "new": {...}}``.
    An empty group has every metric None (metric_fn must return None values for empty input, as
    every metric of this module does)."""
    labels = _group_labels(groups)
    for c in columns:
        if len(c) != len(labels):
            raise ValueError(f"column of length {len(c)} but {len(labels)} group labels")

    def one(idx: np.ndarray) -> dict:
        if len(idx) == 0:
            keys = metric_fn(*[_take(c, idx) for c in columns]).keys()
            return {**{k: None for k in keys}, "n": 0}
        return {**metric_fn(*[_take(c, idx) for c in columns]), "n": int(len(idx))}

    out = one(np.arange(len(labels)))
    for name in GROUPS:
        out[name] = one(np.flatnonzero(labels == name))
    return out


def sample_groups(samples: Sequence[Mapping]) -> list[str]:
    """Each sample's user group: ``sample["group"]`` when present (and not None), else "warm" /
    "cold" from ``sample["warm"]``."""
    out = []
    for s in samples:
        g = s.get("group")
        out.append(str(g) if g is not None else ("warm" if s["warm"] else "cold"))
    return out


def metric_names(task: str, ks: Sequence[int] = (1, 5, 10)) -> list[str]:
    """The metric keys :func:`task_metrics` writes for a task (besides n and the GROUPS)."""
    if task == "ctr":
        return ["auc", "uauc", "uauc_users"]
    if task == "topk":
        names = ["hr@1"]
        for k in sorted(set(int(k) for k in ks)):
            names += [f"hr@{k}", f"ndcg@{k}"]
        return list(dict.fromkeys(names))
    if task in ("rating", "review_rating"):
        return ["mae", "rmse"]
    if task == "explanation":
        return ["bleu4", "rouge1", "rouge2", "rougeL"]
    raise ValueError(f"unknown task {task!r}")


def _ctr(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    value, n_users = uauc(users, labels, scores)
    return {"auc": auc(labels, scores), "uauc": value, "uauc_users": n_users}


def _topk_fn(ks: Sequence[int]) -> Callable[..., dict]:
    ks = sorted(set(int(k) for k in ks))

    def fn(scores: list, answers: np.ndarray, choices: np.ndarray) -> dict:
        out: dict[str, Any] = {}
        if len(answers) and (choices >= -1).all():
            out["hr@1"] = float(np.mean(choices == answers))  # greedy exact-match choice
        else:
            out["hr@1"] = hit_rate_at_k(scores, answers, 1)
        for k in ks:
            out[f"hr@{k}"] = out["hr@1"] if k == 1 else hit_rate_at_k(scores, answers, k)
            out[f"ndcg@{k}"] = ndcg_at_k(scores, answers, k)
        return out

    return fn


def _rating(labels: np.ndarray, preds: np.ndarray) -> dict:
    return {"mae": mae(labels, preds), "rmse": rmse(labels, preds)}


def _explanation(refs: list, hyps: list) -> dict:
    return {
        "bleu4": bleu4(refs, hyps),
        "rouge1": rouge_n(refs, hyps, 1),
        "rouge2": rouge_n(refs, hyps, 2),
        "rougeL": rouge_l(refs, hyps),
    }


def task_metrics(task: str, samples: Sequence[Mapping], preds: Sequence[Any], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Turn per-sample predictions of one task into its metrics dict, with the user-group breakdown.

    samples: the sample dicts (keys used: ``user``, ``label``, ``answer``, ``target``, and
    ``group``, or ``warm`` where a sample has no ``group``; see :func:`sample_groups`).
    preds, one per sample:
      - ctr: a score, higher = more likely liked (P(Yes), a CF score, a predicted rating).
        -> auc, uauc (+ uauc_users: users with both labels that uauc averages).
      - topk: the scores of the sample's candidates (same order as ``sample["candidates"]``), or a
        mapping ``{"scores": [...], "choice": int}`` where choice is the candidate index chosen by
        greedy decoding (-1 = no exact match). With choices, hr@1 is the exact-match rate (as in
        the CKF paper); otherwise it comes from the scores. -> hr@1, hr@k and ndcg@k for k in ks.
      - rating / review_rating: the predicted rating. -> mae, rmse.
      - explanation: the generated text. -> bleu4, rouge1, rouge2, rougeL.
    Returns e.g. ``{"auc": 0.71, "uauc": 0.68, "uauc_users": 512, "n": 943,
    "warm": {"auc": ..., "uauc": ..., "uauc_users": ..., "n": 900}, "cold": {...}, "new": {...}}``.
    """
    if len(samples) != len(preds):
        raise ValueError(f"{task}: {len(samples)} samples but {len(preds)} predictions")
    groups = _group_labels(sample_groups(samples))
    if task == "ctr":
        users = np.array([int(s["user"]) for s in samples], dtype=np.int64)
        labels = np.array([float(s["label"]) for s in samples], dtype=np.float64)
        scores = np.array([float(p) for p in preds], dtype=np.float64)
        return grouped(_ctr, groups, users, labels, scores)
    if task == "topk":
        answers = np.array([int(s["answer"]) for s in samples], dtype=np.int64)
        scores, choices = [], []
        for p in preds:
            if isinstance(p, Mapping):
                scores.append(np.asarray(p["scores"], dtype=np.float64))
                choices.append(int(p["choice"]) if p.get("choice") is not None else -2)
            else:
                scores.append(np.asarray(p, dtype=np.float64))
                choices.append(-2)  # -2: no greedy choice given
        return grouped(_topk_fn(ks), groups, scores, answers, np.array(choices, dtype=np.int64))
    if task in ("rating", "review_rating"):
        labels = np.array(
            [float(s["label"]) if s.get("label") is not None else float(s["target"]) for s in samples],
            dtype=np.float64,
        )
        return grouped(_rating, groups, labels, np.array([float(p) for p in preds], dtype=np.float64))
    if task == "explanation":
        return grouped(_explanation, groups, [str(s["target"]) for s in samples], [str(p) for p in preds])
    raise ValueError(f"unknown task {task!r}")
