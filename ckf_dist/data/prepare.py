"""`ckf data prepare` at any scale: the driver of the staged preparation, on either engine.

``data.engine=local`` runs every task in this process; ``data.engine=ray`` runs them as Ray Data
maps (one block per task) on the cluster of ``dist.ray_address`` / ``RAY_ADDRESS``, else on a
local Ray bound to 127.0.0.1
(:mod:`ckf_dist.data.executor`). The tasks (:mod:`ckf_dist.data.prepare_tasks`) and their
arguments are the same, and every output is a function of the data alone (per-user random
streams, dense ids and shard order from seeded hashes, an order-free fingerprint), so both engines
write the same split table, the same shards and the same manifest, whatever the number of workers
and of blocks (``data.block_mb``).

The driver holds only what is O(items) (the item ids, titles and the raw-to-dense item map the
tasks receive once) and O(tasks) (their small results: counts, paths, samples per hash bucket):
never the interaction table or the samples. Stages:

1. read: the source's read tasks (byte ranges, row groups, generator blocks) -> rows in files per
   user partition; statistics -> the item ids, the rating scale, the split protocol and, for
   ``global_time``, the two cut timestamps (exact order statistics by a few rounds of counting);
2. split: per partition -> users, rows per split, word counts for pseudo-titles -> dense user id
   offsets, item titles, the hash buckets of each split;
3. samples: per partition -> the final split table part, the samples spilled by hash bucket;
4. shards: per run of consecutive shards -> the tar files; then the manifest and the split's
   meta.json (user ids streamed from the partitions' files).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ckf_dist.config import Config
from ckf_dist.data.errors import BadRecords, DataError
from ckf_dist.data.executor import LocalExecutor, RayExecutor, peak_rss_mb
from ckf_dist.data.fingerprint import RowDigest
from ckf_dist.data.loaders import open_source, resolve_scale
from ckf_dist.data.prepare_tasks import (
    CountCtx,
    ReadCtx,
    ReadStats,
    SampleCtx,
    ShardJob,
    SplitCtx,
    WriteCtx,
    count_below,
    partition_users,
    read_task,
    sample_partition,
    split_partition,
    write_shard_job,
)
from ckf_dist.data.samples import SampleContext, check_tasks, ctr_negatives_of
from ckf_dist.data.shards import num_shards, shard_bounds, split_manifest, write_manifest
from ckf_dist.data.source import Source
from ckf_dist.data.splits import (
    TimeCuts,
    banned_words,
    finish_titles,
    global_time_cuts,
    hash_rank,
    id_hashes,
    item_names,
    resolve_split,
)
from ckf_dist.data.table import SPLITS, SplitData
from ckf_dist.fsutil import atomic_write
from ckf_dist.rating_scale import RatingScale
from ckf_dist.tasks import available_tasks_from

log = logging.getLogger(__name__)

BUCKET_SAMPLES = 16384
"""Target samples per hash bucket of a split (the unit shard writers load)."""
JOB_SAMPLES = 65536
"""Target samples per shard-writing task."""
PIVOTS = 63
"""Pivots per round of the global-time order-statistic search."""


def make_executor(cfg: Config):
    if cfg.data.engine == "ray":
        return RayExecutor(cfg.dist.ray_address, cfg.data.workers,
                           env_vars={"OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    return LocalExecutor()


def _kth_values(ex, shared, n_parts: int, ks: list[int], lo: int, hi: int) -> dict[int, int]:
    """The k-th smallest timestamp (0-based) for each k, by rounds of counting below pivots."""
    bounds = {k: [lo, hi] for k in ks}
    while any(a < b for a, b in bounds.values()):
        pivots = sorted({a + 1 + (b - a) * j // PIVOTS for a, b in bounds.values() if a < b for j in range(PIVOTS)})
        per_part = ex.map(count_below, shared, [(p, pivots) for p in range(n_parts)])
        below = dict(zip(pivots, np.sum(np.asarray(per_part, dtype=np.int64), axis=0).tolist()))
        for k, (a, b) in bounds.items():
            if a < b:
                # the answer v satisfies below(v) <= k < below(v + 1)
                a = max([a] + [x for x in pivots if a < x <= b and below[x] <= k])
                b = min([b] + [x - 1 for x in pivots if a < x <= b and below[x] > k])
                bounds[k] = [a, b]
    return {k: a for k, (a, _) in bounds.items()}


def _bits_for(estimate: int) -> int:
    return max(0, min(20, math.ceil(math.log2(max(1, estimate) / BUCKET_SAMPLES)))) if estimate > BUCKET_SAMPLES else 0


def _shard_jobs(split: str, n_samples: int, n: int, bucket_counts: np.ndarray) -> list[ShardJob]:
    """Runs of consecutive shards of about JOB_SAMPLES samples, with the buckets holding their ranks."""
    bounds = shard_bounds(n_samples, n)
    offsets = np.r_[0, np.cumsum(bucket_counts)]
    jobs, k = [], 0
    while k < n:
        j = k + 1
        while j < n and bounds[j + 1] - bounds[k] <= JOB_SAMPLES:
            j += 1
        lo, hi = int(bounds[k]), int(bounds[j])
        shards = [(s, int(bounds[s]), int(bounds[s + 1])) for s in range(k, j)]
        if hi > lo:
            b0 = int(np.searchsorted(offsets, lo, side="right") - 1)
            b1 = int(np.searchsorted(offsets, hi - 1, side="right") - 1)
            buckets = [b for b in range(b0, b1 + 1) if bucket_counts[b] > 0]
            jobs.append(ShardJob(split, shards, buckets, int(offsets[b0])))
        else:
            jobs.append(ShardJob(split, shards, [], lo))
        k = j
    return jobs


def _write_meta(folder: Path, staging: Path, n_parts: int, meta: dict) -> None:
    """meta.json exactly as SplitData.save writes it, the user ids streamed partition by partition."""
    tail = {k: v for k, v in meta.items() if k != "name"}

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write('{"name": ' + json.dumps(meta["name"]) + ', "user_ids": [')
            first = True
            for p in range(n_parts):
                ids = partition_users(staging, p)
                if ids:
                    f.write((", " if not first else "") + ", ".join(json.dumps(x) for x in ids))
                    first = False
            f.write("]")
            for k, v in tail.items():
                f.write(", " + json.dumps(k) + ": " + json.dumps(v))
            f.write("}")

    atomic_write(folder / "meta.json", write)


@dataclass
class _Input:
    """What the read stage leaves: the source, its partitions and what the rows say."""

    source: Source
    n_tasks: int
    n_parts: int
    counts: Counter
    """Bad records by reason."""
    kept: ReadStats
    """Statistics of the rows kept (without a split where others have one, a row is dropped)."""
    drop_empty_split: bool
    protocol: str
    item_ids: list[str]
    titles: list[str]
    text: list[str]
    scale: list[float]


@dataclass
class _Users:
    """What the split stage leaves."""

    rows: dict[str, int]
    offsets: list[int]
    titles: list[str]
    cold_users: int
    explicit_ctr: bool
    bits: dict[str, int]
    item_ratings: Optional[np.ndarray] = None
    """samples.train_item_ratings of every partition, summed (data.item_rating_stats)."""


@dataclass
class _Samples:
    """What the samples stage leaves."""

    digest: RowDigest
    per_task: dict[str, Counter]
    runs: dict[str, list[str]]
    bucket_counts: dict[str, np.ndarray]


def _read(ex, cfg: Config, staging: Path) -> _Input:
    d = cfg.data
    bad = BadRecords(d.on_bad_record)
    source = open_source(d, cfg.seed, bad)
    block = int(d.block_mb * (1 << 20))
    tasks = source.plan(block, lambda fn, items: ex.map(_apply, ex.share(fn), items))
    n_parts = max(1, len(tasks), math.ceil(source.size_hint(tasks) / block))
    results = ex.map(read_task, ex.share(ReadCtx(source, d.on_bad_record, cfg.seed, n_parts, staging)), tasks)
    counts = Counter(bad.counts)
    with_split, without = ReadStats(), ReadStats()
    for r in results:
        counts.update(r["counts"])
        with_split = with_split.merge(r["stats"][True])
        without = without.merge(r["stats"][False])
    drop_empty = bool(source.has_split_column and with_split.rows and without.rows)
    if drop_empty:  # as read_all: each such row is a bad record, the first one named
        BadRecords(d.on_bad_record, counts)(source.where(without.first_order), "missing_split",
                                            "empty split while other rows set one")
        counts["missing_split"] += without.rows
    kept = with_split if drop_empty else with_split.merge(without)
    bad = BadRecords(d.on_bad_record, counts)
    source.users(bad)
    if not kept.rows:
        raise DataError(source.empty_message)
    raw_items = np.asarray(sorted(kept.items), dtype=object)
    item_ids = [str(x) for x in raw_items[hash_rank(raw_items, id_hashes(raw_items, cfg.seed, "item"))]]
    meta = source.items(set(item_ids), bad).drop_duplicates("item").set_index("item")
    titles = [str(meta["title"].get(it, "") or "") for it in item_ids]
    text = [str(meta["description"].get(it, "") or "") for it in item_ids]
    bad.log_summary(source.name)
    check_tasks(cfg, source.name, available_tasks_from(kept.has_rating, {"review": kept.has_review,
                                                                          "summary": kept.has_summary}))
    return _Input(source, len(tasks), n_parts, bad.counts, kept, drop_empty, resolve_split(d, with_split.rows > 0),
                  item_ids, titles, text, resolve_scale(d, np.asarray(sorted(kept.ratings), dtype=np.float64)))


def _time_cuts(ex, cfg: Config, staging: Path, inp: _Input) -> Optional[TimeCuts]:
    """The global_time cuts: exact order statistics of the kept rows' timestamps."""
    if inp.protocol != "global_time":
        return None
    shared = ex.share(CountCtx(staging, inp.drop_empty_split))
    # the rows once duplicates are dropped (timestamps are below 2**62: parse_timestamp)
    n = int(sum(c[0] for c in ex.map(count_below, shared, [(p, [1 << 62]) for p in range(inp.n_parts)])))
    f = cfg.data.split_fractions
    inside = [k for k in (int(round(f[0] * n)), int(round((f[0] + f[1]) * n))) if 0 < k < n]
    found = _kth_values(ex, shared, inp.n_parts, inside, inp.kept.ts_min, inp.kept.ts_max) if inside else {}
    return global_time_cuts(n, f, lambda k: found[k])


def _split(ex, cfg: Config, staging: Path, inp: _Input, cuts: Optional[TimeCuts]) -> _Users:
    d = cfg.data
    need = frozenset(k for k, x in enumerate(inp.titles) if not x.strip())
    banned = frozenset(banned_words(inp.item_ids) | inp.kept.banned_users) if need else frozenset()
    item_index = {x: k for k, x in enumerate(inp.item_ids)}
    ctx = SplitCtx(staging, inp.drop_empty_split, inp.protocol, d, cuts, item_index, need, banned)
    parts = ex.map(split_partition, ex.share(ctx), list(range(inp.n_parts)))
    rows = {s: sum(r["rows"][s] for r in parts) for s in SPLITS}
    duplicates = sum(r["duplicates"] for r in parts)
    if duplicates:  # as split_dataset
        log.warning("%s: %d duplicate (user, item) interaction(s): kept the last of each, skipped %d",
                    inp.source.name, duplicates, duplicates)
        inp.counts["duplicate"] += duplicates
    if not rows["train"]:
        raise DataError(f"{inp.source.name}: the {inp.protocol} split left no training interaction")
    titles = inp.titles
    if need:
        words: dict[int, Counter] = {}
        for r in parts:
            for k, c in r["words"].items():
                words.setdefault(k, Counter()).update(c)
        titles = finish_titles(titles, inp.text, words, d.title_words, banned)
    titles = item_names(titles, inp.text, d)
    explicit = ctr_negatives_of(d, inp.kept.has_rating, inp.kept.has_label) == "explicit"
    per_row = len(cfg.tasks) + (0 if explicit else 1)  # sampled ctr adds a negative per row
    item_ratings = (np.sum([r["item_ratings"] for r in parts if r["item_ratings"] is not None], axis=0)
                    if d.item_rating_stats else None)
    return _Users(rows, np.r_[0, np.cumsum([r["users"] for r in parts])].tolist(), titles,
                  sum(r["cold_users"] for r in parts), explicit, {s: _bits_for(rows[s] * per_row) for s in SPLITS},
                  item_ratings)


def _samples(ex, cfg: Config, staging: Path, split_dir: Path, inp: _Input, users: _Users) -> _Samples:
    context = SampleContext(users.titles, RatingScale(*inp.scale), users.explicit_ctr, users.item_ratings)
    ctx = SampleCtx(staging, split_dir, cfg, context, users.offsets, users.bits)
    out = _Samples(RowDigest(0, 0, ()), {s: Counter() for s in SPLITS}, {s: [] for s in SPLITS},
                   {s: np.zeros(1 << users.bits[s], dtype=np.int64) for s in SPLITS})
    skipped: Counter = Counter()
    for r in ex.map(sample_partition, ex.share(ctx), list(range(inp.n_parts))):
        out.digest = out.digest.merge(r["digest"])
        skipped.update(r["skipped"])
        for s in SPLITS:
            out.per_task[s].update(r["tasks"][s])
            out.runs[s].extend(r["runs"][s])
            out.bucket_counts[s] += r["buckets"][s]
    if skipped:
        log.warning("%s samples: skipped %s", inp.source.name, ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    return out


def _shards(ex, cfg: Config, shards_dir: Path, samples: _Samples) -> dict[str, list[dict]]:
    """split -> the records of its shards, written by runs of consecutive shards."""
    jobs: list[ShardJob] = []
    for s in SPLITS:
        total = int(samples.bucket_counts[s].sum())
        jobs += _shard_jobs(s, total, num_shards(total, cfg.data.samples_per_shard, cfg.data.shard_multiple),
                            samples.bucket_counts[s])
        (shards_dir / s).mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for job, recs in zip(jobs, ex.map(write_shard_job, ex.share(WriteCtx(shards_dir, samples.runs)), jobs)):
        shards[job.split].extend(recs)
    return shards


def prepare(cfg: Config, split_dir: Path, shards_dir: Path, staging: Path, config_hash: str,
            stats: Optional[dict] = None) -> dict:
    """Load, split, build samples and write shards with the engine of data.engine; returns the
    summary `ckf data prepare` prints. `stats`, when given, receives timings and peak memory."""
    t0 = time.perf_counter()
    split_dir, shards_dir, staging = Path(split_dir).resolve(), Path(shards_dir).resolve(), Path(staging).resolve()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    SplitData.clear(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        shutil.rmtree(shards_dir / s, ignore_errors=True)
    (shards_dir / "manifest.json").unlink(missing_ok=True)
    cfg = _absolute(cfg)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - t
        return out

    ex = timed("start", make_executor, cfg)
    try:
        inp = timed("read", _read, ex, cfg, staging)
        cuts = timed("time_cuts", _time_cuts, ex, cfg, staging, inp)
        users = timed("split", _split, ex, cfg, staging, inp, cuts)
        samples = timed("samples", _samples, ex, cfg, staging, split_dir, inp, users)
        shards = timed("shards", _shards, ex, cfg, shards_dir, samples)
        name, skipped = inp.source.name, {k: int(v) for k, v in sorted(inp.counts.items()) if v}
        manifest = write_manifest(shards_dir, dataset_fingerprint=samples.digest.hexdigest(), config_hash=config_hash,
                                  seed=cfg.seed, splits={s: split_manifest(s, shards[s], samples.per_task[s]) for s in SPLITS},
                                  extra={"skipped": skipped, "dataset": name})
        _write_meta(split_dir, staging, inp.n_parts, {
            "name": name, "item_ids": inp.item_ids, "item_titles": users.titles, "item_text": inp.text,
            "cold_threshold": cfg.data.cold_threshold, "skipped": skipped, "protocol": inp.protocol,
            "rating_scale": inp.scale})
        log.info("%s samples: %s", name, ", ".join(f"{s}={manifest['splits'][s]['samples']}" for s in SPLITS))
        if stats is not None:
            stats.update(timings=timings, seconds=time.perf_counter() - t0, driver_peak_mb=peak_rss_mb(),
                         worker_peak_mb=ex.worker_peak_mb, workers=ex.workers, read_tasks=inp.n_tasks,
                         partitions=inp.n_parts, interactions=inp.kept.rows)
    finally:
        ex.close()
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "dataset": name,
        "users": int(users.offsets[-1]),
        "items": len(inp.item_ids),
        "interactions": users.rows,
        "cold_users": int(users.cold_users),
        "samples": {s: m["tasks"] for s, m in manifest["splits"].items()},
        "shards": {s: len(m["shards"]) for s, m in manifest["splits"].items()},
        "skipped": skipped,
    }


def _apply(fn, arg):
    """fn(arg) as an executor task (the executor passes the shared value first)."""
    return fn(arg)


def _absolute(cfg: Config) -> Config:
    """A copy whose input paths do not depend on the working directory (workers run elsewhere)."""
    out = replace(cfg, data=replace(cfg.data))
    for key in ("path", "meta_path"):
        value = getattr(cfg.data, key)
        if value and "://" not in value:
            setattr(out.data, key, str(Path(value).expanduser().resolve()))
    return out

