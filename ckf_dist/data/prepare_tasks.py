"""The tasks of `ckf data prepare`: module-level functions of (shared context, one argument).

Each runs on any worker of either engine (:mod:`ckf_dist.data.executor`) and exchanges data only
through files under the staging folder, so memory stays that of one block:

1. :func:`read_task` parses one read task of the source and writes its rows into one file per
   *user partition* (a range of a seeded hash of the raw user id: the order the dense user ids
   follow), with small statistics (items, ratings, flags, bad-record counts).
2. :func:`split_partition` sorts one partition's rows by user and time, splits them, numbers the
   items and counts each user's partition-local rank (the global dense id is that plus the users
   of the partitions before); it returns the training word counts pseudo-titles need.
3. :func:`sample_partition` writes the partition's final split table and builds its users'
   samples (one seeded stream per user), spilling them into runs bucketed by the top bits of the
   sample hash.
4. :func:`write_shard_job` writes a run of consecutive shards: the buckets that hold their ranks,
   each sorted by (hash, key), cut at the shard boundaries.

:func:`count_below` answers order-statistic queries for the global time split.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ckf_dist.config import Config, DataConfig
from ckf_dist.data.errors import BadRecords
from ckf_dist.data.fingerprint import RowDigest
from ckf_dist.data.samples import SampleContext, UserSampler, train_item_ratings, users_of
from ckf_dist.data.shards import encode_sample, sample_hashes, shard_path, write_tar
from ckf_dist.data.source import ReadTask, Source, rows_frame
from ckf_dist.data.splits import (
    TimeCuts,
    banned_words,
    duplicate_mask,
    id_hashes,
    split_names,
    split_table,
    train_word_counts,
)
from ckf_dist.data.table import SPLITS, SplitData
from ckf_dist.fsutil import atomic_write

RAW_COLUMNS = ("user", "item", "timestamp", "rating", "label", "review", "summary", "split", "order", "uh")
HOLD_ROWS = 262144
"""Parsed rows a read task holds before writing them to the partitions' files."""
FLUSH_BYTES = 32 << 20
"""Encoded samples a partition task holds before spilling them to a run file."""


# ------------------------------------------------------------------------------------------ files
def _write_ipc(path: Path, table, metadata: Optional[dict] = None) -> None:
    import pyarrow as pa

    if metadata:
        table = table.replace_schema_metadata({k: json.dumps(v) for k, v in metadata.items()})

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    atomic_write(path, write)


def _read_ipc(path: Path):
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as src:
        return pa.ipc.open_file(src).read_all()


def partition_of(uh: np.ndarray, n_parts: int) -> np.ndarray:
    """User partition of each user hash: n_parts equal ranges of the 64-bit hash space, in hash order."""
    if n_parts <= 1:
        return np.zeros(len(uh), dtype=np.int64)
    width = np.uint64((1 << 64) // n_parts + 1)
    return (np.asarray(uh, dtype=np.uint64) // width).astype(np.int64)


# ------------------------------------------------------------------------------------------ 1. read
@dataclass
class ReadStats:
    """What the driver needs from the rows of one read task (one kind: with or without a split)."""

    rows: int = 0
    items: set = field(default_factory=set)
    ratings: set = field(default_factory=set)
    has_rating: bool = False
    has_label: bool = False
    has_review: bool = False
    has_summary: bool = False
    banned_users: set = field(default_factory=set)
    first_order: Optional[int] = None
    ts_min: Optional[int] = None
    ts_max: Optional[int] = None

    def add(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
        self.rows += len(df)
        self.items.update(df["item"].unique().tolist())
        r = df["rating"].to_numpy()
        r = r[np.isfinite(r)]
        self.ratings.update(np.unique(np.round(r, 6)).tolist())
        self.has_rating |= bool(len(r))
        self.has_label |= bool(df["label"].notna().any())
        self.has_review |= bool((df["review"].str.len() > 0).any())
        self.has_summary |= bool((df["summary"].str.len() > 0).any())
        self.banned_users |= banned_words(df["user"].unique().tolist())
        o, ts = int(df["order"].min()), df["timestamp"].to_numpy()
        self.first_order = o if self.first_order is None else min(self.first_order, o)
        self.ts_min = int(ts.min()) if self.ts_min is None else min(self.ts_min, int(ts.min()))
        self.ts_max = int(ts.max()) if self.ts_max is None else max(self.ts_max, int(ts.max()))

    def merge(self, o: "ReadStats") -> "ReadStats":
        def lo(a, b):
            return b if a is None else a if b is None else min(a, b)

        def hi(a, b):
            return b if a is None else a if b is None else max(a, b)

        return ReadStats(self.rows + o.rows, self.items | o.items, self.ratings | o.ratings,
                         self.has_rating or o.has_rating, self.has_label or o.has_label,
                         self.has_review or o.has_review, self.has_summary or o.has_summary,
                         self.banned_users | o.banned_users, lo(self.first_order, o.first_order),
                         lo(self.ts_min, o.ts_min), hi(self.ts_max, o.ts_max))


@dataclass
class ReadCtx:
    source: Source
    mode: str
    seed: int
    n_parts: int
    staging: Path


def raw_dir(staging: Path, p: int) -> Path:
    return staging / "raw" / f"p{p:05d}"


def read_task(ctx: ReadCtx, task: ReadTask) -> dict:
    """Parse one read task into the raw files of the user partitions; returns counts and ReadStats
    of the rows with and without a split."""
    import pyarrow as pa

    bad = BadRecords(ctx.mode)
    stats = {True: ReadStats(), False: ReadStats()}
    batches: dict[int, list] = {}
    held, chunk = 0, 0

    def flush() -> None:
        for p, tables in batches.items():
            d = raw_dir(ctx.staging, p)
            d.mkdir(parents=True, exist_ok=True)
            _write_ipc(d / f"t{task.index:06d}-{chunk:04d}.arrow", pa.concat_tables(tables))
        batches.clear()

    for cols in ctx.source.read(task, bad):
        df = rows_frame(cols)
        df["uh"] = id_hashes(df["user"].to_numpy(dtype=object), ctx.seed, "user")
        with_split = (df["split"] != "").to_numpy()
        stats[True].add(df[with_split])
        stats[False].add(df[~with_split])
        part = partition_of(df["uh"].to_numpy(), ctx.n_parts)
        for p in np.unique(part).tolist():
            batches.setdefault(p, []).append(pa.Table.from_pandas(df[part == p], preserve_index=False))
        held += len(df)
        if held >= HOLD_ROWS:  # a task reading a large file (one gzip stream) holds a bounded share
            flush()
            held, chunk = 0, chunk + 1
    flush()
    return {"counts": dict(bad.counts), "stats": stats}


# ------------------------------------------------------------------------------------------ time cuts
@dataclass
class CountCtx:
    staging: Path
    drop_empty_split: bool


def _raw_rows(staging: Path, p: int, columns: Optional[list[str]], drop_empty_split: bool) -> pd.DataFrame:
    files = sorted(raw_dir(staging, p).glob("t*.arrow"))
    if not files:
        return pd.DataFrame({c: [] for c in (columns or RAW_COLUMNS)})
    cols = None if columns is None else list(dict.fromkeys(columns + (["split"] if drop_empty_split else [])))
    import pyarrow as pa

    table = pa.concat_tables([_read_ipc(f).select(cols) if cols else _read_ipc(f) for f in files])
    df = table.to_pandas()
    if drop_empty_split:
        df = df[df["split"] != ""]
    return df


def _user_order(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows of whole users in (hashed user, user, time, input order) order, each (user, item) pair's
    duplicates dropped but its last; and how many were dropped."""
    df = df.sort_values(["uh", "user", "timestamp", "order"], kind="mergesort").reset_index(drop=True)
    dup = duplicate_mask(df["user"].to_numpy(dtype=object), df["item"].to_numpy(dtype=object))
    return (df[~dup].reset_index(drop=True) if dup.any() else df), int(dup.sum())


def count_below(ctx: CountCtx, arg: tuple[int, list[int]]) -> list[int]:
    """(partition, pivots) -> rows of the partition (duplicates dropped) with timestamp < each pivot."""
    p, pivots = arg
    rows, _ = _user_order(_raw_rows(ctx.staging, p, ["uh", "user", "item", "timestamp", "order"], ctx.drop_empty_split))
    ts = np.sort(rows["timestamp"].to_numpy(dtype=np.int64))
    return [int(np.searchsorted(ts, x, side="left")) for x in pivots]


# ------------------------------------------------------------------------------------------ 2. split
@dataclass
class SplitCtx:
    staging: Path
    drop_empty_split: bool
    protocol: str
    data: DataConfig
    cuts: Optional[TimeCuts]
    item_index: dict
    """raw item id -> dense id i."""
    need_titles: frozenset
    """Dense ids of the items whose titles come from training reviews."""
    banned: frozenset


def split_partition(ctx: SplitCtx, p: int) -> dict:
    """Split one user partition; returns users, rows per split, cold users, title word counts and
    (data.item_rating_stats) its items' training rating sums and counts."""
    import pyarrow as pa

    df = _raw_rows(ctx.staging, p, None, ctx.drop_empty_split)
    if not len(df):
        return {"users": 0, "rows": {s: 0 for s in SPLITS}, "cold_users": 0, "words": {}, "duplicates": 0,
                "item_ratings": None}
    df, duplicates = _user_order(df)
    uh, user = df["uh"].to_numpy(dtype=np.uint64), df["user"].to_numpy(dtype=object)
    new_user = np.ones(len(df), dtype=bool)
    if len(df):
        new_user[1:] = (uh[1:] != uh[:-1]) | (user[1:] != user[:-1])
    lu = np.cumsum(new_user) - 1
    split = split_names(ctx.protocol, lu, df["timestamp"].to_numpy(), df["split"].to_numpy(dtype=object), ctx.data, ctx.cuts)
    i = np.fromiter((ctx.item_index[x] for x in df["item"].to_numpy(dtype=object)), dtype=np.int64, count=len(df))
    table = split_table(df, lu, i, split, ctx.data.like_threshold)
    out = ctx.staging / "split"
    out.mkdir(parents=True, exist_ok=True)
    _write_ipc(out / f"p{p:05d}.arrow", pa.Table.from_pandas(table, preserve_index=False))
    _write_ipc(out / f"users-p{p:05d}.arrow", pa.table({"user": pa.array(user[new_user].tolist(), type=pa.string())}))
    n_users = int(new_user.sum())
    train = np.bincount(lu[split == "train"], minlength=n_users) if n_users else np.zeros(0, np.int64)
    need = ctx.need_titles
    return {
        "users": n_users,
        "rows": {s: int((split == s).sum()) for s in SPLITS},
        "cold_users": int((train <= ctx.data.cold_threshold).sum()),
        "words": train_word_counts(table, set(need), ctx.banned) if need else {},
        "duplicates": duplicates,
        "item_ratings": (train_item_ratings(table["i"].to_numpy(), table["rating"].to_numpy(), split, len(ctx.item_index))
                         if ctx.data.item_rating_stats else None),
    }


# ------------------------------------------------------------------------------------------ 3. samples
@dataclass
class SampleCtx:
    staging: Path
    split_dir: Path
    cfg: Config
    context: SampleContext
    offsets: list[int]
    """First dense user id of each partition."""
    bits: dict[str, int]
    """Bucket bits per split: a sample's bucket is the top `bits` bits of its hash."""


def buckets_of(h: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 0:
        return np.zeros(len(h), dtype=np.int64)
    return (np.asarray(h, dtype=np.uint64) >> np.uint64(64 - bits)).astype(np.int64)


def split_part_path(split_dir: Path, p: int) -> Path:
    return SplitData.parts_dir(split_dir) / f"part-{p:05d}.parquet"


class _Spill:
    """A split's encoded samples, spilled to run files with one record batch per hash bucket."""

    def __init__(self, folder: Path, split: str, p: int, seed: int, bits: int):
        self.folder, self.split, self.p, self.seed, self.bits = folder, split, p, seed, bits
        self.keys: list[str] = []
        self.data: list[bytes] = []
        self.size = 0
        self.runs: list[str] = []
        self.bucket_counts = np.zeros(1 << bits, dtype=np.int64)

    def add(self, key: str, data: bytes) -> None:
        self.keys.append(key)
        self.data.append(data)
        self.size += len(data)

    def flush(self) -> None:
        import pyarrow as pa

        if not self.keys:
            return
        h = sample_hashes(self.keys, self.seed)
        b = buckets_of(h, self.bits)
        order = np.argsort(b, kind="stable")
        keys = np.asarray(self.keys, dtype=object)[order]
        data = [self.data[j] for j in order]
        hs, bs = h[order], b[order]
        cuts = np.flatnonzero(np.diff(bs)) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, len(bs)]
        schema = pa.schema([("h", pa.uint64()), ("key", pa.string()), ("data", pa.binary())])
        buckets = [int(bs[s]) for s in starts]
        path = self.folder / self.split / f"p{self.p:05d}-{len(self.runs):04d}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = schema.with_metadata({"buckets": json.dumps(buckets)})

        def write(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
                for s, e in zip(starts.tolist(), ends.tolist()):
                    w.write_batch(pa.record_batch([pa.array(hs[s:e], type=pa.uint64()),
                                                   pa.array(keys[s:e].tolist(), type=pa.string()),
                                                   pa.array(data[s:e], type=pa.binary())], schema=schema))

        atomic_write(path, write)
        np.add.at(self.bucket_counts, bs, 1)
        self.runs.append(str(path))
        self.keys, self.data, self.size = [], [], 0


def sample_partition(ctx: SampleCtx, p: int) -> dict:
    """Write partition p's final split table and spill its users' samples; returns counts, the
    fingerprint piece, the runs and the samples per bucket."""
    split_dir = ctx.split_dir
    if not (ctx.staging / "split" / f"p{p:05d}.arrow").is_file():
        return {"digest": RowDigest(0, 0, ()), "tasks": {s: {} for s in SPLITS}, "skipped": {},
                "runs": {s: [] for s in SPLITS}, "buckets": {s: np.zeros(1 << ctx.bits[s], dtype=np.int64) for s in SPLITS}}
    table = _read_ipc(ctx.staging / "split" / f"p{p:05d}.arrow").to_pandas()
    users = _read_ipc(ctx.staging / "split" / f"users-p{p:05d}.arrow").column("user").to_pylist()
    base = ctx.offsets[p]
    table["u"] = table["u"].to_numpy(dtype=np.int64) + base
    path = split_part_path(split_dir, p)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    digest = RowDigest.of(table)

    cfg = ctx.cfg
    skipped: Counter = Counter()
    sampler = UserSampler(ctx.context, cfg, skipped)
    tasks: dict[str, Counter] = {s: Counter() for s in SPLITS}
    spills = {s: _Spill(ctx.staging / "samples", s, p, cfg.seed, ctx.bits[s]) for s in SPLITS}
    for user in users_of(table, users, ctx.context.scale, cfg.data.cold_threshold, base=base):
        for split in SPLITS:
            spill = spills[split]
            for task in cfg.tasks:
                for s in sampler.samples(user, split, task):
                    spill.add(s["key"], encode_sample(s))
                    tasks[split][task] += 1
            if spill.size >= FLUSH_BYTES:
                spill.flush()
    for spill in spills.values():
        spill.flush()
    return {
        "digest": digest,
        "tasks": {s: dict(c) for s, c in tasks.items()},
        "skipped": dict(skipped),
        "runs": {s: spills[s].runs for s in SPLITS},
        "buckets": {s: spills[s].bucket_counts for s in SPLITS},
    }


# ------------------------------------------------------------------------------------------ 4. shards
@dataclass
class ShardJob:
    """Shards [(k, first rank, end rank)] of `split`, and the buckets holding those ranks (the
    first one starting at rank `first`)."""

    split: str
    shards: list[tuple[int, int, int]]
    buckets: list[int]
    first: int


@dataclass
class WriteCtx:
    shards_dir: Path
    runs: dict[str, list[str]]


def _bucket_rows(runs: list[str], buckets: set[int]) -> dict[int, list]:
    import pyarrow as pa

    out: dict[int, list] = {b: [] for b in buckets}
    for run in runs:
        with pa.memory_map(run, "r") as src:
            reader = pa.ipc.open_file(src)
            index = json.loads(reader.schema.metadata[b"buckets"])
            for j, b in enumerate(index):
                if b in out:
                    out[b].append(reader.get_batch(j))
    return out


def write_shard_job(ctx: WriteCtx, job: ShardJob) -> list[dict]:
    """Write the job's shards; returns their manifest records."""
    import pyarrow as pa

    keys: list[str] = []
    data: list[bytes] = []
    if job.buckets:
        found = _bucket_rows(ctx.runs[job.split], set(job.buckets))
        for b in job.buckets:
            if not found[b]:
                continue
            t = pa.Table.from_batches(found[b])
            h = t.column("h").to_numpy()
            k = np.asarray(t.column("key").to_pylist(), dtype=object)
            order = np.lexsort((k.astype(str), h))
            keys.extend(k[order].tolist())
            d = t.column("data").to_pylist()
            data.extend(d[j] for j in order)
    out = []
    for k, lo, hi in job.shards:
        a, b = lo - job.first, hi - job.first
        path = ctx.shards_dir / shard_path(job.split, k)
        size, digest = write_tar(path, zip(keys[a:b], data[a:b]))
        out.append({"path": shard_path(job.split, k), "samples": hi - lo, "bytes": size, "sha256": digest})
    return out


def partition_users(staging: Path, p: int) -> list[str]:
    """Raw ids of partition p's users, in dense-id order (none for an empty partition)."""
    path = staging / "split" / f"users-p{p:05d}.arrow"
    return _read_ipc(path).column("user").to_pylist() if path.is_file() else []
