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
- **Ids.** Dense ``u`` / ``i`` number the raw ids in the order of a seeded 64-bit hash of each id
  (ties by the id), never in file order, so an id's number carries no signal (the P5 leakage
  pitfall); an id's rank needs only the hashes, so a cluster computes it without gathering rows.
- **pos.** ``label`` where the source gives one, else ``rating >= data.like_threshold``.
- **Titles.** Items without a source title get a pseudo-title from their most distinctive
  *training* review words (:func:`pseudo_titles`). Valid/test reviews are never read, so no
  held-out text reaches a prompt through a title; items seen only in valid/test (cold items)
  still get an id and a title (from their description, else a neutral placeholder name).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter, defaultdict
from typing import Callable, Iterable, Optional, Sequence

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


TimeCuts = tuple[Optional[int], Optional[int]]
"""(train/valid cut, valid/test cut) of data.split=global_time: rows with timestamp < cut come before
it; None = after every row."""
_BEFORE_ALL = np.iinfo(np.int64).min


def global_time_cuts(n: int, fractions: Sequence[float], kth: Callable[[int], int]) -> TimeCuts:
    """The cuts of n rows in time order: the first fractions[0] share train, the next fractions[1]
    valid, the rest test. `kth(k)` is the k-th smallest timestamp (0-based). Rows with the same
    timestamp as a cut go to the later split, so no held-out row is older than (or as old as) a
    row before it."""
    cuts = []
    for share in (fractions[0], fractions[0] + fractions[1]):
        k = int(round(share * n))
        cuts.append(None if k >= n else _BEFORE_ALL if k <= 0 else int(kth(k)))
    return cuts[0], cuts[1]


def split_by_time(timestamps: np.ndarray, cuts: TimeCuts) -> np.ndarray:
    """Split names of rows from their timestamps and the global cuts."""
    ts = np.asarray(timestamps, dtype=np.int64)
    before = [np.ones(len(ts), bool) if c is None else ts < c for c in cuts]
    return np.where(before[0], "train", np.where(before[1], "valid", "test")).astype(object)


def global_time_split(timestamps: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Split names by one cut in time (see global_time_cuts), for rows held in one array."""
    ts = np.sort(np.asarray(timestamps, dtype=np.int64), kind="stable")
    return split_by_time(timestamps, global_time_cuts(len(ts), fractions, lambda k: ts[k]))


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


_ID_WORD = re.compile(r"[a-z]{3,20}")


def _tokens(text: str, banned: frozenset[str] | set[str]) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if 3 <= len(w) <= 20 and w not in STOPWORDS and w not in banned]


def banned_words(ids: Iterable[str]) -> set[str]:
    """The raw ids a pseudo-title could spell: those that are one title word (3-20 letters) once
    lowercased; every other id can never equal a title word."""
    return {x.lower() for x in ids if _ID_WORD.fullmatch(x.lower())}


def review_word_counts(texts: Iterable[str], banned: frozenset[str] | set[str] = frozenset()) -> Counter:
    """Word -> number of `texts` using it (the per-item statistic behind a pseudo-title; counts of
    one item's reviews held in pieces add up)."""
    c: Counter = Counter()
    for t in texts:
        c.update(set(_tokens(t, banned)))
    return c


def pseudo_titles(
    docs: list[list[str]],
    n_words: int,
    banned: Iterable[str] = (),
    taken: Iterable[str] = (),
    fallback: str = FALLBACK_TITLE,
) -> list[str]:
    """Readable, unique titles from each item's most distinctive words (TF-IDF-like over items).

    docs[k]: the texts of item k (one string per review); see :func:`titles_from_word_counts`.
    `banned` words (raw ids) never appear.
    """
    banned_set = frozenset(b.lower() for b in banned)
    return titles_from_word_counts([review_word_counts(texts, banned_set) for texts in docs], n_words, taken, fallback)


def titles_from_word_counts(rf: list[Counter], n_words: int, taken: Iterable[str] = (),
                            fallback: str = FALLBACK_TITLE) -> list[str]:
    """Titles from rf[k] (word -> reviews of item k using it). A word scores
    ``reviews of k using it * log((1 + N) / (1 + items using it))``: frequent for this item,
    rare across items. The top `n_words` words, title-cased, form the title. Items whose titles
    collide (with each other or with `taken`, the real titles) take further words of their own
    ranking; when those run out a roman counter ``II``, ``III`` is appended (no digits). No token
    has a digit, so a title cannot encode an id. Items with no usable words get `fallback`,
    de-duplicated the same way.
    """
    df: Counter = Counter()
    for c in rf:
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
        for k in range(len(rf)):
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

    titles = [render(k) for k in range(len(rf))]
    used = set(taken_set)
    out = []
    for t in titles:
        final, j = t, 2
        while final in used:
            final, j = f"{t} {roman(j)}", j + 1
        used.add(final)
        out.append(final)
    return out


def finish_titles(titles: list[str], text: list[str], counts: dict[int, Counter], n_words: int,
                  banned: frozenset[str] | set[str]) -> list[str]:
    """Item titles with the empty ones derived: `counts[k]` = review_word_counts of item k's
    training reviews (items without any use their description, else the fallback name)."""
    titles = list(titles)
    need = [k for k, t in enumerate(titles) if not t.strip()]
    if need:
        rf = [counts[k] if k in counts else review_word_counts([text[k]] if text[k] else [], banned) for k in need]
        derived = titles_from_word_counts(rf, n_words, taken={t for t in titles if t.strip()})
        for k, t in zip(need, derived):
            titles[k] = t
    return titles


def item_texts(titles: Sequence[str], descriptions: Sequence[str]) -> list[str]:
    """One text per item: "title, description", or the title when the description is empty."""
    return [f"{t}, {d}".strip() if str(d).strip() else str(t) for t, d in zip(titles, descriptions)]


def item_names(titles: list[str], text: list[str], cfg: DataConfig) -> list[str]:
    """How prompts, answers and outputs name each item: its title, or "title, description" with
    data.title_description (unique as the titles are)."""
    return item_texts(titles, text) if cfg.title_description else titles


def _positive(inter: pd.DataFrame, like_threshold: float) -> np.ndarray:
    label = inter["label"].to_numpy(dtype=np.float64)
    from_rating = (inter["rating"].to_numpy(dtype=np.float64) >= like_threshold).astype(np.float64)
    return np.where(np.isnan(label), from_rating, label)


def id_hashes(raw: Sequence[str] | np.ndarray, seed: int, kind: str) -> np.ndarray:
    """Seeded 64-bit hash of each raw id (uint64 [n]); `kind` ("user" / "item") salts it."""
    if not len(raw):
        return np.zeros(0, dtype=np.uint64)
    key = hashlib.sha256(f"ckf-ids/{seed}/{kind}".encode()).hexdigest()[:16]
    return pd.util.hash_array(np.asarray(raw, dtype=object), hash_key=key, categorize=False)


def hash_rank(raw: Sequence[str] | np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Positions of distinct raw ids sorted by (hash, id): dense id k <- raw[order[k]]."""
    if not len(raw):
        return np.zeros(0, dtype=np.int64)
    return np.lexsort((np.asarray(raw, dtype=object).astype(str), hashes))


def _dense_ids(raw: pd.Series, seed: int, kind: str) -> tuple[list[str], np.ndarray]:
    """Dense ids of a raw id column -> (ids in dense order, dense code per row)."""
    codes, uniq = pd.factorize(raw)
    uniq = np.asarray(uniq, dtype=object)
    order = hash_rank(uniq, id_hashes(uniq, seed, kind))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return [str(x) for x in uniq[order]], inverse[codes].astype(np.int64)


def duplicate_mask(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True for every interaction of a (user, item) pair but its last, for rows of whole users in
    (user, time, file order) order (see "Duplicate interactions")."""
    return pd.DataFrame({"u": users, "i": items}).duplicated(keep="last").to_numpy()


def split_names(protocol: str, user_codes: np.ndarray, timestamps: np.ndarray, source: np.ndarray,
                cfg: DataConfig, cuts: Optional[TimeCuts]) -> np.ndarray:
    """Split name of each row of whole users sorted by (user, time, file order); `user_codes` groups
    them, `source` is the source's split column, `cuts` the global_time cuts."""
    if protocol == "column":
        wrong = sorted(set(source) - set(SPLITS))
        if wrong:
            raise DataError(f"split column has value {wrong[0]!r} (expected train, valid or test)")
        return np.asarray(source, dtype=object).copy()
    if protocol == "global_time":
        assert cuts is not None
        return split_by_time(timestamps, cuts)
    return chronological_split(user_codes, cfg.valid_per_user, cfg.test_per_user)


def split_table(rows: pd.DataFrame, u: np.ndarray, i: np.ndarray, split: np.ndarray, like_threshold: float) -> pd.DataFrame:
    """The SplitData.inter rows of raw `rows` (already in (u, time, file order) order) with their
    dense ids and split names."""
    return pd.DataFrame(
        {
            "u": np.asarray(u, dtype=np.int64),
            "i": np.asarray(i, dtype=np.int64),
            "timestamp": rows["timestamp"].to_numpy(dtype=np.int64),
            "rating": rows["rating"].to_numpy(dtype=np.float64),
            "label": rows["label"].to_numpy(dtype=np.float64),
            "review": rows["review"].to_numpy(dtype=object),
            "summary": rows["summary"].to_numpy(dtype=object),
            "split": np.asarray(split, dtype=object),
            "pos": _positive(rows, like_threshold),
        }
    )


def train_word_counts(table: pd.DataFrame, need: Optional[set[int]], banned: frozenset[str] | set[str]) -> dict[int, Counter]:
    """Item -> review_word_counts of its training reviews and summaries, for the items in `need`
    (None = every item): the statistic pseudo-titles come from."""
    train = table["split"].to_numpy() == "train"
    out: dict[int, Counter] = defaultdict(Counter)
    for k, review, summary in zip(table["i"].to_numpy()[train], table["review"].to_numpy()[train],
                                  table["summary"].to_numpy()[train]):
        k = int(k)
        if need is None or k in need:
            out[k].update(set(_tokens(f"{review} {summary}", banned)))
    return dict(out)


def split_dataset(data: RecData, cfg: DataConfig, seed: int) -> SplitData:
    """Split, remap and title a loaded data set (see the module docstring for the rules)."""
    inter = data.interactions
    if len(inter) == 0:
        raise DataError(f"{data.name}: no interactions to split")
    user_ids, u = _dense_ids(inter["user"], seed, "user")
    item_ids, i = _dense_ids(inter["item"], seed, "item")
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), u))
    inter, u, i = inter.iloc[order].reset_index(drop=True), u[order], i[order]
    dup = duplicate_mask(u, i)
    if dup.any():
        log.warning("%s: %d duplicate (user, item) interaction(s): kept the last of each, skipped %d", data.name,
                    int(dup.sum()), int(dup.sum()))
        inter, u, i = inter[~dup].reset_index(drop=True), u[~dup], i[~dup]

    source = inter["split"].to_numpy(dtype=object)
    protocol = resolve_split(cfg, bool((source != "").any()))
    cuts = None
    if protocol == "global_time":
        ts = np.sort(inter["timestamp"].to_numpy(dtype=np.int64))
        cuts = global_time_cuts(len(ts), cfg.split_fractions, lambda k: ts[k])
    try:
        split = split_names(protocol, u, inter["timestamp"].to_numpy(), source, cfg, cuts)
    except DataError as e:
        raise DataError(f"{data.name}: {e}") from None
    if not (split == "train").any():
        raise DataError(f"{data.name}: the {protocol} split left no training interaction")
    out = split_table(inter, u, i, split, cfg.like_threshold)

    meta = data.items.drop_duplicates("item").set_index("item")
    titles = [str(meta["title"].get(it, "") or "") for it in item_ids]
    text = [str(meta["description"].get(it, "") or "") for it in item_ids]
    need = {k for k, t in enumerate(titles) if not t.strip()}
    if need:
        banned = frozenset(banned_words(item_ids) | banned_words(user_ids))
        titles = finish_titles(titles, text, train_word_counts(out, need, banned), cfg.title_words, banned)
    titles = item_names(titles, text, cfg)
    skipped = Counter(data.skipped)
    if dup.any():
        skipped["duplicate"] += int(dup.sum())
    return SplitData(
        name=data.name,
        inter=out,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_text=text,
        cold_threshold=cfg.cold_threshold,
        skipped={k: int(v) for k, v in sorted(skipped.items())},
        protocol=protocol,
        rating_scale=list(data.rating_scale or [1.0, 5.0, 1.0]),
    )
