"""Prompt samples as webdataset `.tar` shards, with a manifest; and the streaming reader.

Layout under a shard folder::

    manifest.json                 counts per task and split, shard sizes, fingerprints
    train/train-000000.tar ...    one `<key>.json` member per sample (the sample dict)
    valid/valid-000000.tar ...
    test/test-000000.tar ...

The number of shards of each split is a multiple of `data.shard_multiple`, so that many
(node x DataLoader worker) readers each get whole shards. Samples are dealt round-robin after
a seeded shuffle, so every shard holds the same task mix.

Reading: :func:`sample_stream` composes webdataset stages explicitly: shard list (fixed or
resampled), split by rank, split by DataLoader worker, tar expansion with a bad-shard handler
that counts and logs instead of crashing, optional shuffle buffer, JSON decode, optional
fixed epoch length. Rank and world size are arguments (default: from the environment, as Ray
and torchrun set RANK / WORLD_SIZE), so the same reader serves tests, Ray workers and the
deepspeed launcher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ckf_dist.fsutil import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _write_tar(path: Path, samples: list[dict]) -> int:
    """Write one shard atomically; returns its size in bytes."""
    import webdataset as wds

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            with wds.TarWriter(f, encoder=False, mtime=0) as sink:
                for s in samples:
                    key = s["key"].replace("/", "_").replace(".", "_")
                    sink.write({"__key__": key, "json": json.dumps(s, sort_keys=True).encode()})

    atomic_write(path, write)
    return path.stat().st_size


def num_shards(n_samples: int, samples_per_shard: int, multiple: int) -> int:
    """Smallest multiple of `multiple` with at most `samples_per_shard` samples per shard."""
    n = max(1, math.ceil(n_samples / samples_per_shard))
    return int(math.ceil(n / multiple) * multiple)


def write_shards(
    samples_by_split: dict[str, list[dict]],
    out_dir: str | Path,
    *,
    samples_per_shard: int,
    shard_multiple: int,
    seed: int,
    dataset_fingerprint: str,
    config_hash: str,
    extra: Optional[dict] = None,
) -> dict:
    """Write every split's samples as shards plus `manifest.json`; returns the manifest."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "dataset_fingerprint": dataset_fingerprint,
        "config_hash": config_hash,
        "seed": seed,
        "splits": {},
    }
    for split, samples in samples_by_split.items():
        d = out / split
        d.mkdir(exist_ok=True)
        for old in d.glob("*.tar"):
            old.unlink()
        order = list(range(len(samples)))
        random.Random(f"{seed}/{split}").shuffle(order)
        n = num_shards(len(samples), samples_per_shard, shard_multiple)
        buckets: list[list[dict]] = [[] for _ in range(n)]
        for j, idx in enumerate(order):
            buckets[j % n].append(samples[idx])
        shards = []
        for k, bucket in enumerate(tqdm(buckets, desc=f"shards {split}", leave=False, disable=None)):
            name = f"{split}/{split}-{k:06d}.tar"
            size = _write_tar(out / name, bucket)
            shards.append({"path": name, "samples": len(bucket), "bytes": size})
        per_task: dict[str, int] = {}
        for s in samples:
            per_task[s["task"]] = per_task.get(s["task"], 0) + 1
        manifest["splits"][split] = {"samples": len(samples), "tasks": dict(sorted(per_task.items())), "shards": shards}
    if extra:
        manifest.update(extra)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def load_manifest(shard_dir: str | Path) -> dict:
    p = Path(shard_dir) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{p}: shard manifest not found (run `ckf data prepare` first)")
    return json.loads(p.read_text())


def shard_urls(shard_dir: str | Path, split: str) -> list[str]:
    """Shard locations of a split, from the manifest (local paths)."""
    m = load_manifest(shard_dir)
    if split not in m["splits"]:
        raise KeyError(f"{shard_dir}: no split {split!r} in the manifest")
    return [str(Path(shard_dir) / s["path"]) for s in m["splits"][split]["shards"]]


def fingerprint_frame(df) -> str:
    """Content hash of a pandas DataFrame (the dataset fingerprint in the manifest)."""
    import pandas as pd

    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    h.update(",".join(map(str, df.columns)).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class BadShardCounter:
    """webdataset exception handler: counts and logs a corrupted shard, or re-raises.

    `policy="skip"` keeps training going (the count reaches TensorBoard and the log);
    `policy="error"` fails on the first bad shard.
    """

    policy: str = "skip"
    count: int = 0
    messages: list[str] = field(default_factory=list)

    def __call__(self, exn: BaseException) -> bool:
        if self.policy == "error":
            raise exn
        self.count += 1
        msg = f"skipped a corrupted shard member or shard: {type(exn).__name__}: {exn}"
        self.messages.append(msg)
        log.warning(msg)
        return True


def rank_world_from_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _split_by_rank(src: Iterable, rank: int, world_size: int) -> Iterator:
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


def _split_by_dataloader_worker(src: Iterable, reader: Optional[tuple[int, int]] = None) -> Iterator:
    """Keep the items of this DataLoader worker; `reader` = (id, count) overrides the worker info."""
    import torch.utils.data

    if reader is None:
        info = torch.utils.data.get_worker_info()
        reader = (info.id, info.num_workers) if info is not None else (0, 1)
    wid, n = reader
    if n <= 1:
        yield from src
        return
    for i, item in enumerate(src):
        if i % n == wid:
            yield item


def _decode(src: Iterable[dict]) -> Iterator[dict]:
    for sample in src:
        yield json.loads(sample["json"])


class _ResampledShards:
    """Endless seeded sampling of shard urls (with replacement), per rank and worker."""

    def __init__(self, urls: list[str], seed: int, rank: int):
        self.urls, self.seed, self.rank = urls, seed, rank

    def __call__(self):
        return iter(self)

    def __iter__(self):
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = random.Random(f"{self.seed}/{self.rank}/{wid}")
        while True:
            yield {"url": rng.choice(self.urls)}


def sample_stream(
    urls: list[str],
    *,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    resampled: bool = False,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: int = 0,
    epoch_len: Optional[int] = None,
    bad_shards: Optional[BadShardCounter] = None,
    reader: Optional[tuple[int, int]] = None,
):
    """A webdataset pipeline yielding sample dicts.

    - fixed (default): the shards are dealt to ranks (`i % world_size == rank`), then to
      DataLoader workers; every shard is read exactly once per pass over all readers;
      `epoch` reseeds the shard order and the shuffle buffer.
    - resampled: each reader draws its shards with replacement from all urls (seeded by
      seed, rank and worker), endlessly; pair it with `epoch_len` so every rank runs the same
      number of samples (equal step counts avoid collective hangs).

    `reader` = (id, count) names the DataLoader worker whose share of a rank's shards to read
    (default: the calling worker's own).
    """
    import webdataset as wds

    if rank is None or world_size is None:
        r, w = rank_world_from_env()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    handler = bad_shards if bad_shards is not None else BadShardCounter("error")
    if resampled:
        stages: list = [_ResampledShards(list(urls), seed + epoch, rank)]
    else:
        order = list(urls)
        if shuffle_buffer:
            random.Random(f"{seed}/{epoch}").shuffle(order)
        stages = [
            wds.SimpleShardList(order),
            wds.filters.pipelinefilter(_split_by_rank)(rank, world_size),
            wds.filters.pipelinefilter(_split_by_dataloader_worker)(reader),
        ]
    stages.append(wds.tarfile_to_samples(handler=handler))
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=random.Random(f"{seed}/{epoch}/{rank}")))
    stages.append(wds.filters.pipelinefilter(_decode)())
    pipe = wds.DataPipeline(*stages)
    if epoch_len is not None:
        pipe = pipe.with_epoch(epoch_len)
    return pipe


def read_split(shard_dir: str | Path, split: str) -> list[dict]:
    """All samples of a split, in shard order (evaluation and tests)."""
    return list(sample_stream(shard_urls(shard_dir, split), rank=0, world_size=1))
