"""RecData -> SplitData: chronological per-user splits, seeded dense ids, `pos`, pseudo-titles.

- **Split** (``data.split``). ``leave_last``: per user, interactions are ordered by time (ties keep
  file order): the last ``data.test_per_user`` go to test, the ``data.valid_per_user`` before them
  to valid, the rest to train; a user always keeps at least one train interaction (a user with
  fewer than ``test + valid + 1`` interactions gives up valid first, then test). ``global_time``:
  all interactions in time order (ties keep file order), the first ``split_fractions[0]`` share
  to train, the next to valid, the rest to test: train on the past, test on the future, as the
  LLM-recommendation papers do. ``column``: the source's ``split`` column, exactly. ``auto`` =
  ``column`` when the source has one, else ``leave_last``.
- **Duplicate interactions.** The same (user, item) pair more than once keeps only its last
  interaction (latest timestamp; ties: the later one in the file), the others are counted under
  ``duplicate`` in the skipped records: one pair never sits in train and test at once.
- **New users and items.** A user or item whose first interaction is held out is kept: it has no
  training interaction (the ``new`` group of the metrics) and CF falls back for it (see
  :mod:`ckf_dist.cf.tables`).
- **Ids.** Dense ``u`` / ``i`` come from a seeded random permutation of the sorted raw ids, never
  from file order, so an id's number carries no signal (the P5 leakage pitfall).
- **pos.** ``label`` where the source gives one, else ``rating >= data.like_threshold``.
- **Titles.** Items without a source title get a pseudo-title from their most distinctive
  *training* review words (:func:`pseudo_titles`). Valid/test reviews are never read, so no
  held-out text reaches a prompt through a title; items seen only in valid/test (cold items)
  still get an id and a title (from their description, else a neutral placeholder name).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ckf_dist.config import DataConfig
from ckf_dist.data.errors import DataError
from ckf_dist.data.table import SPLITS, RecData, SplitData

_WORD = re.compile(r"[a-z]+")
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been before being below
    between both but by can cannot could couldn did didn do does doesn doing don down during each even ever every
    few for from further get gets got had hadn has hasn have haven having he her here hers herself him himself his
    how however i if in into is isn it its itself just let like made make makes many may me might more most much
    must my myself never no nor not now of off on once one only or other ought our ours ourselves out over own
    put quite rather really same say says see seem seems she should shouldn since so some still such than that the
    their theirs them themselves then there these they thing things this those though through thus to too under
    until up upon us use used uses using very was wasn way we well were weren what when where whether which while
    who whom whose why will with within without won would wouldn yes yet you your yours yourself yourselves
    amazon bought buy buying item items product products purchase purchased review reviews star stars ve ll re
    great good nice best better bad ok okay lot lots little bit work works worked working price time times
    """.split()
)
FALLBACK_TITLE = "Unreviewed Item"

log = logging.getLogger(__name__)


def chronological_split(user_codes: np.ndarray, valid_per_user: int, test_per_user: int) -> np.ndarray:
    """Split names for rows already sorted by (user, time); `user_codes` int [n], grouped."""
    n = len(user_codes)
    if n == 0:
        return np.array([], dtype=object)
    starts = np.r_[0, np.flatnonzero(np.diff(user_codes)) + 1]
    sizes = np.diff(np.r_[starts, n])
    size = np.repeat(sizes, sizes)
    rank_from_end = size - 1 - (np.arange(n) - np.repeat(starts, sizes))
    n_test = np.minimum(test_per_user, size - 1)
    n_valid = np.minimum(valid_per_user, size - 1 - n_test)
    out = np.full(n, "train", dtype=object)
    out[rank_from_end < n_test + n_valid] = "valid"
    out[rank_from_end < n_test] = "test"
    return out


def global_time_split(timestamps: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Split names by one cut in time: rows sorted by time (stable), the first fractions[0] share
    train, the next fractions[1] valid, the rest test. Rows with the same timestamp as a cut go to
    the later split, so no held-out row is older than (or as old as) a row before it."""
    n = len(timestamps)
    out = np.full(n, "test", dtype=object)
    if n == 0:
        return out
    order = np.argsort(timestamps, kind="stable")
    ts = np.asarray(timestamps)[order]
    bounds = []
    for share in (fractions[0], fractions[0] + fractions[1]):
        k = int(round(share * n))
        k = n if k >= n else int(np.searchsorted(ts, ts[k], side="left")) if k > 0 else 0
        bounds.append(k)
    names = np.empty(n, dtype=object)
    names[: bounds[0]] = "train"
    names[bounds[0]: bounds[1]] = "valid"
    names[bounds[1]:] = "test"
    out[order] = names
    return out


def resolve_split(cfg: DataConfig, has_column: bool) -> str:
    """The split protocol in force: data.split, with auto = column when the source has one."""
    if cfg.split == "auto":
        return "column" if has_column else "leave_last"
    return cfg.split


def roman(n: int) -> str:
    """n >= 1 as a roman numeral (title suffixes stay free of digits)."""
    out = ""
    for value, sym in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                       (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out, n = out + sym, n - value
    return out


def _tokens(text: str, banned: frozenset[str] | set[str]) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if 3 <= len(w) <= 20 and w not in STOPWORDS and w not in banned]


def pseudo_titles(
    docs: list[list[str]],
    n_words: int,
    banned: Iterable[str] = (),
    taken: Iterable[str] = (),
    fallback: str = FALLBACK_TITLE,
) -> list[str]:
    """Readable, unique titles from each item's most distinctive words (TF-IDF-like over items).

    docs[k]: the texts of item k (one string per review). A word scores
    ``reviews of k using it * log((1 + N) / (1 + items using it))``: frequent for this item,
    rare across items. The top `n_words` words, title-cased, form the title. Items whose titles
    collide (with each other or with `taken`, the real titles) take further words of their own
    ranking; when those run out a roman counter ``II``, ``III`` is appended (no digits). `banned` words (raw ids)
    never appear, nor does any token with a digit, so a title cannot encode an id. Items with no
    usable words get `fallback`, de-duplicated the same way.
    """
    banned = frozenset(b.lower() for b in banned)
    rf: list[Counter] = []
    df: Counter = Counter()
    for texts in docs:
        c: Counter = Counter()
        for t in texts:
            c.update(set(_tokens(t, banned)))
        rf.append(c)
        df.update(c.keys())
    n = sum(1 for c in rf if c)
    ranked: list[list[str]] = []
    for c in rf:
        scored = sorted(c.items(), key=lambda kv: (-kv[1] * math.log((1 + n) / (1 + df[kv[0]])), kv[0]))
        ranked.append([w for w, _ in scored])

    depth = [min(n_words, len(r)) for r in ranked]
    taken_set = set(taken)

    def render(k: int) -> str:
        return " ".join(w.capitalize() for w in ranked[k][: depth[k]]) or fallback

    while True:
        groups: dict[str, list[int]] = defaultdict(list)
        for k in range(len(docs)):
            groups[render(k)].append(k)
        grew = False
        for title, ks in groups.items():
            if len(ks) > 1 or title in taken_set:
                for k in ks:
                    if depth[k] < len(ranked[k]):
                        depth[k] += 1
                        grew = True
        if not grew:
            break

    titles = [render(k) for k in range(len(docs))]
    used = set(taken_set)
    out = []
    for t in titles:
        final, j = t, 2
        while final in used:
            final, j = f"{t} {roman(j)}", j + 1
        used.add(final)
        out.append(final)
    return out


def _positive(inter: pd.DataFrame, like_threshold: float) -> np.ndarray:
    label = inter["label"].to_numpy(dtype=np.float64)
    from_rating = (inter["rating"].to_numpy(dtype=np.float64) >= like_threshold).astype(np.float64)
    return np.where(np.isnan(label), from_rating, label)


def _dense_ids(raw: pd.Series, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Seeded permutation of the sorted unique raw ids -> (ids in dense order, dense code per row)."""
    codes, uniq = pd.factorize(raw, sort=True)
    perm = rng.permutation(len(uniq))  # dense id k <- sorted id perm[k]
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return [str(x) for x in np.asarray(uniq, dtype=object)[perm]], inverse[codes].astype(np.int64)


def split_dataset(data: RecData, cfg: DataConfig, seed: int) -> SplitData:
    """Split, remap and title a loaded data set (see the module docstring for the rules)."""
    inter = data.interactions
    if len(inter) == 0:
        raise DataError(f"{data.name}: no interactions to split")
    user_code = pd.factorize(inter["user"])[0]
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), user_code))
    inter = inter.iloc[order].reset_index(drop=True)
    user_code = user_code[order]
    dup = inter.duplicated(["user", "item"], keep="last").to_numpy()  # rows in (user, time, file) order
    if dup.any():
        log.warning("%s: %d duplicate (user, item) interaction(s): kept the last of each, skipped %d", data.name,
                    int(dup.sum()), int(dup.sum()))
        inter = inter[~dup].reset_index(drop=True)
        user_code = user_code[~dup]

    source = inter["split"].to_numpy(dtype=object)
    protocol = resolve_split(cfg, bool((source != "").any()))
    if protocol == "column":
        wrong = sorted(set(source) - set(SPLITS))
        if wrong:
            raise DataError(f"{data.name}: split column has value {wrong[0]!r} (expected train, valid or test)")
        split = source.copy()
    elif protocol == "global_time":
        split = global_time_split(inter["timestamp"].to_numpy(), cfg.split_fractions)
    else:
        split = chronological_split(user_code, cfg.valid_per_user, cfg.test_per_user)
    if not (split == "train").any():
        raise DataError(f"{data.name}: the {protocol} split left no training interaction")
    inter = inter.assign(split=split)

    user_ids, u = _dense_ids(inter["user"], np.random.default_rng([seed, 101]))
    item_ids, i = _dense_ids(inter["item"], np.random.default_rng([seed, 102]))

    meta = data.items.drop_duplicates("item").set_index("item")
    titles = [str(meta["title"].get(it, "") or "") for it in item_ids]
    text = [str(meta["description"].get(it, "") or "") for it in item_ids]
    need = [k for k, t in enumerate(titles) if not t.strip()]
    if need:
        train = inter["split"].to_numpy() == "train"
        docs: dict[int, list[str]] = defaultdict(list)
        for k, review, summary in zip(i[train], inter["review"][train], inter["summary"][train]):
            docs[int(k)].append(f"{review} {summary}")
        banned = set(item_ids) | set(user_ids)
        derived = pseudo_titles([docs.get(k) or ([text[k]] if text[k] else []) for k in need],
                                n_words=cfg.title_words, banned=banned,
                                taken={t for t in titles if t.strip()})
        for k, t in zip(need, derived):
            titles[k] = t

    out = pd.DataFrame(
        {
            "u": u,
            "i": i,
            "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
            "rating": inter["rating"].to_numpy(dtype=np.float64),
            "label": inter["label"].to_numpy(dtype=np.float64),
            "review": inter["review"].to_numpy(dtype=object),
            "summary": inter["summary"].to_numpy(dtype=object),
            "split": inter["split"].to_numpy(dtype=object),
            "pos": _positive(inter, cfg.like_threshold),
        }
    )
    out = out.iloc[np.lexsort((np.arange(len(out)), out["timestamp"].to_numpy(), out["u"].to_numpy()))]
    skipped = Counter(data.skipped)
    if dup.any():
        skipped["duplicate"] += int(dup.sum())
    return SplitData(
        name=data.name,
        inter=out.reset_index(drop=True),
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_text=text,
        cold_threshold=cfg.cold_threshold,
        skipped={k: int(v) for k, v in sorted(skipped.items())},
        protocol=protocol,
        rating_scale=list(data.rating_scale or [1.0, 5.0, 1.0]),
    )
