"""SplitData -> prompt samples per split and task (the JSON dicts the shards store).

Sample schema (exactly these keys; the CKF model, shards and CF baselines read them)::

    key          "<split>/<task>/<u>/<n>", unique
    task, split  names
    user         dense user id u;  user_id: its raw id
    items        item ids for the placeholders after the user one, in prompt order
    history      history item ids, oldest first (the ones the prompt lists, or for
                 review_rating / explanation the recent train items)
    history_ratings  the rating the user gave each history item (None: unrated), for the
                 rating-aware CF fold-in of a user without a trained row (cf/foldin.py)
    prompt       CF prompt (model.placeholder_token marks the CF slots)
    prompt_text  its text-only twin (no placeholder)
    target       answer text
    label        ctr 0/1; rating / review_rating the true rating; None otherwise
    candidates   topk candidate item ids ([] otherwise);  answer: index of the true one (-1 otherwise)
    warm         user has more than data.cold_threshold train interactions
    group        "warm" | "cold" | "new" (no train interaction)

Protocol:

- **History** of a row = the user's last ``data.history_len`` interactions *strictly before* it in
  time that are known when it is predicted: a train row sees earlier train rows; a valid row also
  earlier valid rows; a test row every earlier row (train, valid, test). A row never sees itself,
  nor anything at or after its timestamp. ctr (explicit) lists the history as liked and disliked
  titles (TALLRec / CoLLM); ctr (sampled) and topk list *liked* (``pos`` = 1) items; rating lists
  items with their ratings ("title, rating: r"); review_rating and explanation keep the history
  in ``history`` (for the meta-network) without listing it.
- **Negatives** are sampled uniformly (seeded) from items the user never interacted with in
  any split, so a negative is never a hidden positive. topk negatives also avoid titles already
  among the candidates, so exact-match HR@1 is unambiguous.
- **ctr** (``data.ctr_negatives``): ``explicit`` (the default on rated or labelled data) makes
  every interaction of the split one row labelled by ``pos``, with no synthetic negative, as
  CoLLM / TALLRec / BinLLM; ``sampled`` pairs every interaction with ONE sampled unseen item
  labelled 0 and the same history.
- **topk**: only *liked* interactions are targets; the true item plus ``data.topk_candidates
  - 1`` negatives, shuffled (seeded); ``answer`` = the true item's slot; target = its title.
- **rating / review_rating**: interactions with a rating (review_rating: and a non-empty
  review, cut to its first ``data.review_words`` words); target = the rounded rating digit.
- **explanation**: interactions with a non-empty summary; the summary is the target. Empty
  summaries are skipped and counted.
- **Caps**: by default every eligible training interaction gives a sample. ``data.samples_per_user``
  > 0 keeps at most that many per user and task, a *seeded uniform sample* of the eligible train
  interactions (kept in time order); for sampled ctr that is ceil(cap / 2) interactions, each with
  its negative, truncated to the cap. valid/test are never capped.
- **Groups**: ``group`` is the user's group, ``warm`` (more than ``data.cold_threshold`` training
  interactions), ``cold`` (1 to that many) or ``new`` (none: first seen after training);
  ``warm`` is the same as a bool.
- **Seeds**: each (split, task, user) draws from its own
  ``random.Random("ckf-samples/<seed>/<split>/<task>/<u>")`` stream (string seeds hash
  deterministically): a user's samples depend only on that user's rows, so any partition of the
  users (one process, or many workers and blocks) gives the same samples, and adding a task or
  changing one split's settings leaves the other samples unchanged.

Skipped targets (empty summary, too few unseen items) are counted: pass ``counts`` to receive
them; a one-line summary is logged.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ckf_dist.config import Config
from ckf_dist.data.errors import DataError
from ckf_dist.data.table import SPLITS, SplitData
from ckf_dist.rating_scale import RatingScale
from ckf_dist.tasks import (
    TASKS,
    available_tasks,
    count_placeholders,
    item_stats_text,
    missing_requirement,
    render,
    yes_no,
)

__all__ = ["build_samples", "count_placeholders", "SAMPLE_KEYS", "check_sample", "history_ratings"]

log = logging.getLogger(__name__)

SAMPLE_KEYS = ("key", "task", "split", "user", "user_id", "items", "history", "history_ratings", "prompt", "prompt_text",
               "target", "label", "candidates", "answer", "warm", "group")
SPLIT_LEVEL = {"train": 0, "valid": 1, "test": 2, "serve": 2}
"""A row of split S may see earlier rows of splits whose level is <= S's (serving sees everything)."""


class _User:
    """One user's interactions in time order, as arrays (positions index into these)."""

    __slots__ = ("u", "raw", "group", "i", "ts", "level", "split", "pos", "rating", "rating_text", "review", "summary",
                 "has_review", "has_summary", "liked", "rated", "seen")

    def __init__(self, u: int, raw: str, rows: dict[str, np.ndarray], cold_threshold: int):
        self.u = u
        self.raw = raw
        self.i = rows["i"]
        self.ts = rows["timestamp"]
        self.split = rows["split"]
        self.level = np.array([SPLIT_LEVEL[x] for x in self.split], dtype=np.int64)
        self.pos = rows["pos"]
        self.rating = rows["rating"]
        self.rating_text = rows["rating_text"]
        self.review = rows["review"]
        self.summary = rows["summary"]
        self.has_review = rows["has_review"]
        self.has_summary = rows["has_summary"]
        self.liked = self.pos >= 0.5
        self.rated = ~np.isnan(self.rating)
        self.seen = set(self.i.tolist())
        n_train = int((self.split == "train").sum())
        self.group = "new" if n_train == 0 else "warm" if n_train > cold_threshold else "cold"

    def history(self, p: int, split: str, n: int, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Positions of the last n interactions strictly before position p in time (p = len: after all)
        that a row of `split` may see (see the module docstring), optionally restricted to `mask`."""
        cut = len(self.i) if p >= len(self.i) else int(np.searchsorted(self.ts, self.ts[p], side="left"))
        ok = self.level[:cut] <= SPLIT_LEVEL[split]
        if mask is not None:
            ok &= mask[:cut]
        return np.flatnonzero(ok)[-n:] if n > 0 else np.array([], dtype=np.int64)


def train_item_ratings(items: np.ndarray, ratings: np.ndarray, split: np.ndarray, num_items: int) -> np.ndarray:
    """[num_items, 2]: the sum and the count of each item's rated training interactions (what
    data.item_rating_stats states; summed over partitions by the distributed preparation)."""
    keep = (np.asarray(split) == "train") & ~np.isnan(np.asarray(ratings, dtype=np.float64))
    i = np.asarray(items, dtype=np.int64)[keep]
    r = np.asarray(ratings, dtype=np.float64)[keep]
    return np.stack([np.bincount(i, weights=r, minlength=num_items), np.bincount(i, minlength=num_items)], axis=1)


@dataclass
class SampleContext:
    """What sample building needs beyond one user's rows: O(items), the same for every user."""

    titles: list[str]
    """Title of each item id i."""
    scale: RatingScale
    explicit_ctr: bool
    """data.ctr_negatives in force is explicit (see resolve_ctr_negatives)."""
    item_ratings: Optional[np.ndarray] = None
    """train_item_ratings, when data.item_rating_stats is on."""

    @property
    def num_items(self) -> int:
        return len(self.titles)

    @classmethod
    def of(cls, sd: SplitData, cfg: Config) -> "SampleContext":
        stats = None
        if cfg.data.item_rating_stats:
            inter = sd.inter
            stats = train_item_ratings(inter["i"].to_numpy(), inter["rating"].to_numpy(dtype=np.float64),
                                       inter["split"].to_numpy(dtype=object).astype(str), len(sd.item_titles))
        return cls(list(sd.item_titles), sd.scale, resolve_ctr_negatives(cfg.data, sd) == "explicit", stats)


class _Builder:
    def __init__(self, ctx: SampleContext, cfg: Config, counts: Counter):
        self.cfg = cfg
        self.d = cfg.data
        self.ph = cfg.model.placeholder_token
        self.titles = ctx.titles
        self.scale = ctx.scale
        self.num_items = ctx.num_items
        self.counts = counts
        self.explicit_ctr = ctx.explicit_ctr
        self.item_ratings = ctx.item_ratings

    def item_fields(self, item: int, own_rating: Optional[float] = None) -> dict:
        """The fields of a target item: its title and, with data.item_rating_stats, its training
        ratings less `own_rating` (a training row's own: it reads what a held-out row reads)."""
        out = {"title": self.titles[item]}
        if self.item_ratings is not None:
            total, count = self.item_ratings[item]
            if own_rating is not None:
                total, count = total - own_rating, count - 1
            out["item_stats"] = item_stats_text(float(total), int(round(count)))
        return out

    def target_fields(self, split: str, user: _User, p: int) -> dict:
        """item_fields of the interaction at position p."""
        own = float(user.rating[p]) if user.split[p] == "train" and user.rated[p] else None
        return self.item_fields(int(user.i[p]), own)

    # -- sampling helpers ---------------------------------------------------------------

    def negatives(self, rng: random.Random, user: _User, k: int, avoid_titles: Optional[set] = None) -> Optional[list[int]]:
        """k distinct items the user never interacted with (and, if given, whose titles are not in
        `avoid_titles`, which is updated); None when too few exist."""
        out: list[int] = []
        taken: set[int] = set()

        def ok(j: int) -> bool:
            return j not in user.seen and j not in taken and (avoid_titles is None or self.titles[j] not in avoid_titles)

        def take(j: int) -> None:
            out.append(j)
            taken.add(j)
            if avoid_titles is not None:
                avoid_titles.add(self.titles[j])

        for _ in range(20 * k + 50):  # rejection sampling: cheap while most items are unseen
            j = rng.randrange(self.num_items)
            if ok(j):
                take(j)
                if len(out) == k:
                    return out
        pool = [j for j in range(self.num_items) if ok(j)]
        rng.shuffle(pool)
        for j in pool:
            if len(out) == k:
                break
            if ok(j):  # re-check: titles taken meanwhile
                take(j)
        return out if len(out) == k else None

    def pick_train(self, rng: random.Random, eligible: list[int], n: int) -> list[int]:
        """Seeded uniform sample of at most n eligible positions, back in time order."""
        if len(eligible) <= n:
            return eligible
        return sorted(rng.sample(eligible, n))

    def sample(self, split: str, task: str, user: _User, n: int, items: list[int], at: np.ndarray,
               fields: dict, target: str, label: Optional[float], candidates: Optional[list[int]] = None,
               answer: int = -1) -> dict:
        """One sample; `at`: the positions of its history among the user's interactions."""
        if self.d.features_first:
            fields = {**fields, "features_first": True}
        prompt, prompt_text = render(task, fields, self.ph)
        u = user.u
        return {
            "key": f"{split}/{task}/{u}/{n}",
            "task": task,
            "split": split,
            "user": int(u),
            "user_id": user.raw,
            "items": [int(x) for x in items],
            "history": [int(x) for x in user.i[at]],
            "history_ratings": [None if r != r else float(r) for r in user.rating[at].tolist()],
            "prompt": prompt,
            "prompt_text": prompt_text,
            "target": target,
            "label": None if label is None else float(label),
            "candidates": [int(x) for x in (candidates or [])],
            "answer": int(answer),
            "warm": user.group == "warm",
            "group": user.group,
        }

    # -- tasks ---------------------------------------------------------------------------

    def ctr(self, split: str, user: _User, positions: list[int], rng: random.Random, cap: Optional[int]) -> list[dict]:
        out: list[dict] = []
        for p in positions:
            item, label = int(user.i[p]), float(user.pos[p])
            if self.explicit_ctr:
                at = user.history(p, split, self.d.history_len)
                hist = user.i[at].tolist()
                fields = {"history": [self.titles[h] for h, ok in zip(hist, user.liked[at]) if ok],
                          "disliked": [self.titles[h] for h, ok in zip(hist, user.liked[at]) if not ok]}
                out.append(self.sample(split, "ctr", user, len(out), [item], at,
                                       {**fields, **self.target_fields(split, user, p)}, yes_no(label), label))
                continue
            at = user.history(p, split, self.d.history_len, user.liked)
            fields = {"history": [self.titles[h] for h in user.i[at].tolist()]}
            out.append(self.sample(split, "ctr", user, len(out), [item], at, {**fields, **self.target_fields(split, user, p)},
                                   yes_no(label), label))
            neg = self.negatives(rng, user, 1)
            if neg is None:
                self.counts[f"ctr/{split}/no_unseen_items"] += 1
                continue
            out.append(self.sample(split, "ctr", user, len(out), neg, at, {**fields, **self.item_fields(neg[0])},
                                   "No", 0.0))
        return out if cap is None else out[:cap]

    def topk(self, split: str, user: _User, positions: list[int], rng: random.Random) -> list[dict]:
        out: list[dict] = []
        for p in positions:
            at = user.history(p, split, self.d.history_len, user.liked)
            hist = user.i[at].tolist()
            item = int(user.i[p])
            negs = self.negatives(rng, user, self.d.topk_candidates - 1, avoid_titles={self.titles[item]})
            if negs is None:
                self.counts[f"topk/{split}/too_few_unseen_items"] += 1
                continue
            cands = [item] + negs
            rng.shuffle(cands)
            fields = {"history": [self.titles[h] for h in hist], "candidates": [self.titles[c] for c in cands]}
            out.append(self.sample(split, "topk", user, len(out), cands, at, fields, self.titles[item], None,
                                   candidates=cands, answer=cands.index(item)))
        return out

    def rating(self, split: str, user: _User, positions: list[int]) -> list[dict]:
        out: list[dict] = []
        for p in positions:
            at = user.history(p, split, self.d.history_len, user.rated)
            hist = user.i[at].tolist()
            fields = {"history": [(self.titles[h], d) for h, d in zip(hist, user.rating_text[at].tolist())],
                      **self.target_fields(split, user, p), "scale": self.scale}
            r = float(user.rating[p])
            out.append(self.sample(split, "rating", user, len(out), [int(user.i[p])], at, fields, self.scale.answer(r), r))
        return out

    def review_rating(self, split: str, user: _User, positions: list[int]) -> list[dict]:
        out: list[dict] = []
        for p in positions:
            at = user.history(p, split, self.d.history_len)
            review = " ".join(str(user.review[p]).split()[: self.d.review_words])
            fields = {"title": self.titles[int(user.i[p])], "review": review, "scale": self.scale}
            r = float(user.rating[p])
            out.append(self.sample(split, "review_rating", user, len(out), [int(user.i[p])], at, fields,
                                   self.scale.answer(r), r))
        return out

    def explanation(self, split: str, user: _User, positions: list[int]) -> list[dict]:
        out: list[dict] = []
        for p in positions:
            at = user.history(p, split, self.d.history_len)
            out.append(self.sample(split, "explanation", user, len(out), [int(user.i[p])], at,
                                   {"title": self.titles[int(user.i[p])]}, str(user.summary[p]).strip(), None))
        return out

    # -- driver ----------------------------------------------------------------------------

    def eligible(self, task: str, user: _User, split: str) -> list[int]:
        """Positions of the user's `split` rows that are targets of `task` (empty summaries are counted as skipped)."""
        in_split = user.split == split
        if task == "topk":
            mask = in_split & (user.pos >= 0.5)
        elif task == "rating":
            mask = in_split & ~np.isnan(user.rating)
        elif task == "review_rating":
            mask = in_split & ~np.isnan(user.rating) & user.has_review
        elif task == "explanation":
            empty = int((in_split & ~user.has_summary).sum())
            if empty:
                self.counts[f"explanation/{split}/empty_summary"] += empty
            mask = in_split & user.has_summary
        else:
            mask = in_split
        return np.flatnonzero(mask).tolist()

    def _cap(self, split: str) -> Optional[int]:
        return self.d.samples_per_user if split == "train" and self.d.samples_per_user > 0 else None

    def build(self, task: str, split: str, user: _User, rng: random.Random) -> list[dict]:
        positions = self.eligible(task, user, split)
        if not positions:
            return []
        cap = self._cap(split)
        if cap is not None:
            per = (cap + 1) // 2 if task == "ctr" and not self.explicit_ctr else cap
            positions = self.pick_train(rng, positions, per)
        if task == "ctr":
            return self.ctr(split, user, positions, rng, cap)
        if task == "topk":
            return self.topk(split, user, positions, rng)
        return getattr(self, task)(split, user, positions)


def resolve_ctr_negatives(d, sd: SplitData) -> str:
    """data.ctr_negatives in force: auto = explicit when the data carry ratings or labels."""
    return ctr_negatives_of(d, sd.has_rating, sd.has_label)


def ctr_negatives_of(d, has_rating: bool, has_label: bool) -> str:
    """resolve_ctr_negatives from the data's flags."""
    if d.ctr_negatives != "auto":
        return d.ctr_negatives
    return "explicit" if (has_rating or has_label) else "sampled"


def protocol_of(cfg: Config, sd: SplitData) -> dict:
    """The evaluation protocol a run's numbers come from, as written into metrics.json."""
    d = cfg.data
    out = {"split": sd.protocol, "ctr_negatives": resolve_ctr_negatives(d, sd), "like_threshold": d.like_threshold,
           "history_len": d.history_len, "topk_candidates": d.topk_candidates,
           "topk_score": f"answer log-prob / tokens ** {cfg.eval.candidate_length_power:g}; hr@1 = greedy exact title",
           "rating_scale": list(sd.rating_scale),
           "rating_score": "expected value over the scale's levels (mae/rmse); most likely level (mae_greedy/rmse_greedy)",
           "cold_threshold": d.cold_threshold, "samples_per_user": d.samples_per_user,
           "eval_max_samples_per_task": cfg.eval.max_samples_per_task, "eval_task_caps": dict(cfg.eval.task_caps)}
    if sd.protocol == "global_time":
        out["split_fractions"] = list(d.split_fractions)
    return out


def _users(sd: SplitData) -> list[_User]:
    return users_of(sd.inter, sd.user_ids, sd.scale, sd.cold_threshold)


def users_of(inter, user_ids: Sequence[str], scale: RatingScale, cold_threshold: int, base: int = 0) -> list[_User]:
    """The users of an interaction table holding every row of each of its users (columns of
    SplitData.inter); `user_ids[u - base]` is the raw id of user u."""
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["u"].to_numpy()))
    inter = inter.iloc[order]
    u = inter["u"].to_numpy()
    cols = {
        "i": inter["i"].to_numpy(dtype=np.int64),
        "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
        "split": inter["split"].to_numpy(dtype=object).astype(str),
        "pos": inter["pos"].to_numpy(dtype=np.float64),
        "rating": inter["rating"].to_numpy(dtype=np.float64),
        "rating_text": scale.answer_texts(inter["rating"].to_numpy(dtype=np.float64)),
        "review": inter["review"].to_numpy(dtype=object),
        "summary": inter["summary"].to_numpy(dtype=object),
        "has_review": (inter["review"].str.strip().str.len() > 0).to_numpy(dtype=bool),
        "has_summary": (inter["summary"].str.strip().str.len() > 0).to_numpy(dtype=bool),
    }
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1] if len(u) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(u)]
    return [_User(int(u[s]), str(user_ids[int(u[s]) - base]), {k: v[s:e] for k, v in cols.items()}, cold_threshold)
            for s, e in zip(starts.tolist(), ends.tolist())]


def check_tasks(cfg: Config, name: str, avail: list[str]) -> None:
    """DataError unless every task of cfg.tasks exists and can be built (`avail`: available_tasks)."""
    for t in cfg.tasks:
        if t not in TASKS:
            raise DataError(f"unknown task {t!r} (choose from {', '.join(TASKS)})")
        if t not in avail:
            raise DataError(f"task {t!r} needs {missing_requirement(t)}, which dataset {name!r} lacks "
                            f"(available: {', '.join(avail)})")


def user_rng(seed: int, split: str, task: str, u: int) -> random.Random:
    """The random stream of one (split, task, user): see "Seeds" in the module docstring."""
    return random.Random(f"ckf-samples/{seed}/{split}/{task}/{u}")


class UserSampler:
    """Samples of one user at a time: the unit every engine shares."""

    def __init__(self, ctx: SampleContext, cfg: Config, counts: Optional[Counter] = None):
        self.cfg = cfg
        self.counts: Counter = counts if counts is not None else Counter()
        self.builder = _Builder(ctx, cfg, self.counts)

    def samples(self, user: _User, split: str, task: str) -> list[dict]:
        return self.builder.build(task, split, user, user_rng(self.cfg.seed, split, task, user.u))


def build_samples(sd: SplitData, cfg: Config, counts: Optional[dict] = None) -> dict[str, list[dict]]:
    """Samples for every task of ``cfg.tasks`` and every split: {"train": [...], "valid": [...], "test": [...]}.

    Raises DataError when a requested task cannot be built from this data (e.g. rating on
    label-only data). `counts`, when given, receives the skipped-target counters.
    """
    check_tasks(cfg, sd.name, available_tasks(sd))
    skipped: Counter = Counter()
    sampler = UserSampler(SampleContext.of(sd, cfg), cfg, skipped)
    users = _users(sd)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for task in cfg.tasks:
            for user in users:
                out[split].extend(sampler.samples(user, split, task))
    if skipped:
        log.warning("%s samples: skipped %s", sd.name, ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    if counts is not None:
        counts.update(skipped)
    log.info("%s samples: %s", sd.name, ", ".join(f"{s}={len(v)}" for s, v in out.items()))
    return out


def history_ratings(samples: Sequence[Mapping[str, Any]]) -> list[list[Optional[float]]]:
    """Each sample's ``history_ratings`` (None for an unrated item; all None for samples written
    without the field), aligned with its ``history``."""
    return [list(s.get("history_ratings") or [None] * len(s["history"])) for s in samples]


def check_sample(sample: dict, placeholder: str) -> None:
    """Raise ValueError unless `sample` has the schema's keys and placeholder invariants."""
    key = sample.get("key")
    problems = []
    if tuple(sample) != SAMPLE_KEYS:
        problems.append(f"keys {list(sample)} != {list(SAMPLE_KEYS)}")
    elif count_placeholders(sample["prompt"], placeholder) != 1 + len(sample["items"]):
        problems.append("prompt placeholders != 1 + len(items)")
    elif count_placeholders(sample["prompt_text"], placeholder):
        problems.append("prompt_text contains the placeholder")
    elif sample["task"] == "topk" and not (sample["items"] == sample["candidates"]
                                           and 0 <= sample["answer"] < len(sample["candidates"])):
        problems.append("topk items/candidates/answer inconsistent")
    elif sample["task"] != "topk" and (sample["candidates"] or sample["answer"] != -1):
        problems.append("candidates/answer set outside topk")
    if problems:
        raise ValueError(f"sample {key}: {problems[0]}")


def _serving_user(sd: SplitData, u: int) -> _User:
    """User u with every known interaction treated as history (serving time: nothing is held out)."""
    rows = sd.inter[sd.inter["u"] == u]
    if not len(rows):
        raise DataError(f"user {sd.user_ids[u]!r} has no interactions")
    group = _users(SplitData(name=sd.name, inter=rows, user_ids=sd.user_ids, item_ids=sd.item_ids,
                             item_titles=sd.item_titles, item_text=sd.item_text, cold_threshold=sd.cold_threshold,
                             rating_scale=sd.rating_scale))[0].group
    sub = rows.copy()
    sub["split"] = "train"
    user = users_of(sub, sd.user_ids, sd.scale, sd.cold_threshold)[0]
    user.group = group
    return user


def build_topk_request(sd: SplitData, cfg: Config, u: int, candidates: list[int], n: int = 0) -> dict:
    """A topk sample for serving: the user's latest liked items as history, `candidates` to rank.

    Same template and fields as the training/evaluation topk samples, so the candidate
    likelihoods `ckf recommend` computes are exactly the evaluation's scores.
    """
    b = _Builder(SampleContext.of(sd, cfg), cfg, Counter())
    user = _serving_user(sd, u)
    at = user.history(len(user.i), "serve", cfg.data.history_len, user.liked)
    fields = {"history": [sd.item_titles[h] for h in user.i[at].tolist()], "candidates": [sd.item_titles[c] for c in candidates]}
    s = b.sample("serve", "topk", user, n, candidates, at, fields, sd.item_titles[candidates[0]], None,
                 candidates=list(candidates), answer=0)
    return s


def build_explanation_request(sd: SplitData, cfg: Config, u: int, item: int) -> dict:
    """An explanation sample for serving (target empty: it is generated)."""
    b = _Builder(SampleContext.of(sd, cfg), cfg, Counter())
    user = _serving_user(sd, u)
    at = user.history(len(user.i), "serve", cfg.data.history_len)
    return b.sample("serve", "explanation", user, 0, [item], at, {"title": sd.item_titles[item]}, "", None)
