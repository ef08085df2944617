"""Prompt samples as webdataset `.tar` shards, with a manifest; and the streaming reader.

Layout under a shard folder::

    manifest.json                 counts per task and split, shard sizes, fingerprints
    train/train-000000.tar ...    one `<key>.json` member per sample (the sample dict)
    valid/valid-000000.tar ...
    test/test-000000.tar ...

The number of shards of each split is a multiple of `data.shard_multiple`, so that many
(node x DataLoader worker) readers each get whole shards. A split's samples are ordered by a
seeded hash of their keys (:func:`sample_hashes`, ties by key) and cut into equal runs: shard k
holds ranks ``[k N / n, (k + 1) N / n)`` of that order (sizes differ by at most one, so every
reader's epoch has the same length). The hash order is a seeded shuffle, so every shard holds the
same task mix in expectation; it depends on the samples alone, so any engine that writes the same
samples, in any order and from any number of workers, writes the same bytes.

Reading: :func:`sample_stream` composes webdataset stages explicitly: shard list (fixed or
resampled), split by rank, split by DataLoader worker, shard reading (tar expansion and JSON
decode of one whole shard, its sample count checked against the manifest), optional shuffle
buffer, optional fixed epoch length. A bad shard (unreadable, a corrupt member, or fewer or more
samples than the manifest lists: a truncated copy ends cleanly at a tar header boundary) gives
none of its samples; `dist.on_bad_shard` decides whether it is counted and skipped or stops the
reader with one line naming it. Rank and world size are arguments (default: from the environment, as Ray
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
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ckf_dist.data.errors import DataError
from ckf_dist.fsutil import atomic_write, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def encode_sample(sample: dict) -> bytes:
    """A sample as its shard member's bytes (the one JSON encoding every writer uses)."""
    return json.dumps(sample, sort_keys=True).encode()


_BLOCK, _RECORD = 512, 10240


def tar_member(name: str, data: bytes) -> bytes:
    """One regular-file tar member (header + data padded to 512 bytes): the bytes webdataset's
    TarWriter writes for it (ustar, mode 0444, uid/gid 0, owner "bigdata", mtime 0; a name over
    100 bytes takes tarfile's pax header), built without tarfile's per-member cost."""
    raw = name.encode()
    pad = b"\0" * (-len(data) % _BLOCK)
    if len(raw) > 100:
        import tarfile

        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 0, "bigdata", "bigdata"
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + pad
    h = bytearray(_BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = b"0000444\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % len(data)
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[265:272] = b"bigdata"
    h[297:304] = b"bigdata"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + data + pad


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Write one shard atomically from (sample key, encoded sample) in shard order; returns its
    size in bytes and its sha256 (hashed as it is written)."""
    h = hashlib.sha256()

    def write(tmp: Path) -> None:
        size = 0
        with open(tmp, "wb") as f:
            for key, data in members:
                m = tar_member(key.replace("/", "_").replace(".", "_") + ".json", data)
                f.write(m)
                h.update(m)
                size += len(m)
            end = 2 * _BLOCK
            tail = b"\0" * (end + (-(size + end) % _RECORD))
            f.write(tail)
            h.update(tail)

    atomic_write(path, write)
    return path.stat().st_size, h.hexdigest()


def num_shards(n_samples: int, samples_per_shard: int, multiple: int) -> int:
    """Smallest multiple of `multiple` with at most `samples_per_shard` samples per shard."""
    n = max(1, math.ceil(n_samples / samples_per_shard))
    return int(math.ceil(n / multiple) * multiple)


def sample_hashes(keys: Sequence[str], seed: int) -> np.ndarray:
    """Seeded 64-bit hash of each sample key (uint64 [n]): a sample's shard is hash % n_shards and
    the shard lists its samples by (hash, key)."""
    import pandas as pd

    if not len(keys):
        return np.zeros(0, dtype=np.uint64)
    salt = hashlib.sha256(f"ckf-shards/{seed}".encode()).hexdigest()[:16]
    return pd.util.hash_array(np.asarray(keys, dtype=object), hash_key=salt, categorize=False)


def hash_order(keys: Sequence[str], hashes: np.ndarray) -> np.ndarray:
    """The positions of the samples sorted by (hash, key): the split's shard order."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64)
    return np.lexsort((np.asarray(keys, dtype=object).astype(str), hashes))


def shard_bounds(n_samples: int, n_shards: int) -> np.ndarray:
    """Rank boundaries [n_shards + 1]: shard k holds ranks bounds[k]..bounds[k+1]-1 of the hash order."""
    return (np.arange(n_shards + 1, dtype=np.int64) * n_samples) // n_shards


def shard_path(split: str, k: int) -> str:
    """A shard's path relative to the shard folder."""
    return f"{split}/{split}-{k:06d}.tar"


def split_manifest(split: str, shards: list[dict], tasks: dict[str, int]) -> dict:
    """The manifest entry of one split: samples, samples per task, shards in order."""
    return {"samples": int(sum(s["samples"] for s in shards)), "tasks": {t: int(n) for t, n in sorted(tasks.items())},
            "shards": sorted(shards, key=lambda s: s["path"])}


def write_manifest(out_dir: str | Path, *, dataset_fingerprint: str, config_hash: str, seed: int,
                   splits: dict[str, dict], extra: Optional[dict] = None) -> dict:
    """Write `manifest.json` atomically (after every shard is written); returns it."""
    manifest: dict = {"dataset_fingerprint": dataset_fingerprint, "config_hash": config_hash, "seed": seed,
                      "splits": splits}
    if extra:
        manifest.update(extra)
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


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
    splits: dict[str, dict] = {}
    for split, samples in samples_by_split.items():
        d = out / split
        d.mkdir(exist_ok=True)
        for old in d.glob("*.tar"):
            old.unlink()
        n = num_shards(len(samples), samples_per_shard, shard_multiple)
        keys = [s["key"] for s in samples]
        order = hash_order(keys, sample_hashes(keys, seed))
        bounds = shard_bounds(len(samples), n)
        shards = []
        for k in tqdm(range(n), desc=f"shards {split}", leave=False, disable=None):
            part = order[bounds[k]: bounds[k + 1]]
            size, digest = write_tar(out / shard_path(split, k), ((keys[j], encode_sample(samples[j])) for j in part))
            shards.append({"path": shard_path(split, k), "samples": int(len(part)), "bytes": size, "sha256": digest})
        per_task: dict[str, int] = {}
        for s in samples:
            per_task[s["task"]] = per_task.get(s["task"], 0) + 1
        splits[split] = split_manifest(split, shards, per_task)
    return write_manifest(out, dataset_fingerprint=dataset_fingerprint, config_hash=config_hash, seed=seed,
                          splits=splits, extra=extra)


def load_manifest(shard_dir: str | Path) -> dict:
    p = Path(shard_dir) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{p}: shard manifest not found (run `ckf data prepare` first)")
    return json.loads(p.read_text())


def shard_urls(shard_dir: str | Path, split: str) -> list[str]:
    """Shard locations of a split, from the manifest (local paths)."""
    return list(shard_counts(shard_dir, split))


def shard_counts(shard_dir: str | Path, split: str) -> dict[str, int]:
    """Shard location -> the number of samples the manifest lists for it (readers check it)."""
    m = load_manifest(shard_dir)
    if split not in m["splits"]:
        raise KeyError(f"{shard_dir}: no split {split!r} in the manifest")
    return {str(Path(shard_dir) / s["path"]): int(s["samples"]) for s in m["splits"][split]["shards"]}


def verify_shards(shard_dir: str | Path) -> Optional[str]:
    """None when the manifest is there and every shard it lists exists with its size (and sha256,
    when recorded); else the first problem, in words (`ckf data prepare`'s up-to-date check)."""
    shard_dir = Path(shard_dir)
    try:
        m = json.loads((shard_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{shard_dir / MANIFEST} is missing or unreadable"
    for split in m.get("splits", {}).values():
        for s in split["shards"]:
            p = shard_dir / s["path"]
            if not p.is_file():
                return f"shard {p} is missing"
            if p.stat().st_size != s["bytes"]:
                return f"shard {p} has {p.stat().st_size} bytes, the manifest says {s['bytes']}"
            if "sha256" in s and sha256_file(p) != s["sha256"]:
                return f"shard {p} does not match its sha256 in the manifest"
    return None


def fingerprint_frame(df) -> str:
    """Content hash of a pandas DataFrame (the dataset fingerprint in the manifest): independent of
    the row order, so engines that hold the table in pieces compute it piece by piece
    (:mod:`ckf_dist.data.fingerprint`)."""
    from ckf_dist.data.fingerprint import RowDigest

    return RowDigest.of(df).hexdigest()


# --------------------------------------------------------------------------------------------
# Reading


class BadShard(DataError):
    """A shard that cannot be read whole: one line naming it and the problem."""


@dataclass
class BadShardCounter:
    """What a bad shard does (`dist.on_bad_shard`): counted and logged, or fatal.

    `policy="skip"` keeps training going (the count reaches TensorBoard and the log);
    `policy="error"` fails on the first bad shard with :class:`BadShard` (one line).
    """

    policy: str = "skip"
    count: int = 0
    messages: list[str] = field(default_factory=list)

    def __call__(self, exn: BaseException) -> bool:
        if self.policy == "error":
            if isinstance(exn, BadShard):
                raise exn
            raise BadShard(f"bad shard: {type(exn).__name__}: {str(exn).splitlines()[0] if str(exn) else ''} "
                           "(dist.on_bad_shard=error)") from exn
        self.count += 1
        msg = f"skipped a bad shard: {type(exn).__name__}: {exn}"
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


def _read_shards(src: Iterable[dict], expected: Optional[dict[str, int]], handler: "BadShardCounter") -> Iterator[dict]:
    """Each shard read whole (tar members, JSON decoded) and checked against the manifest's sample
    count before any of its samples is yielded: a bad shard yields nothing and goes to `handler`."""
    from webdataset.tariterators import tarfile_samples

    for item in src:
        url = item["url"]
        try:
            samples = []
            for member in tarfile_samples([item]):
                if "json" not in member:
                    raise BadShard(f"{url}: member {member.get('__key__')!r} has no .json part")
                try:
                    samples.append(json.loads(member["json"]))
                except (ValueError, RecursionError) as e:
                    raise BadShard(f"{url}: member {member.get('__key__')!r} is not valid JSON ({e})") from None
            want = expected.get(url) if expected else None
            if want is not None and len(samples) != want:
                raise BadShard(f"{url}: {len(samples)} samples, the manifest lists {want} (truncated or replaced shard)")
        except Exception as e:  # unreadable tar, short shard, bad member
            if not isinstance(e, BadShard):
                e = BadShard(f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
            handler(e)
            continue
        yield from samples


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
    expected: Optional[dict[str, int]] = None,
):
    """A webdataset pipeline yielding sample dicts.

    - fixed (default): the shards are dealt to ranks (`i % world_size == rank`), then to
      DataLoader workers; every shard is read exactly once per pass over all readers;
      `epoch` reseeds the shard order and the shuffle buffer.
    - resampled: each reader draws its shards with replacement from all urls (seeded by
      seed, rank and worker), endlessly; pair it with `epoch_len` so every rank runs the same
      number of samples (equal step counts avoid collective hangs).

    `reader` = (id, count) names the DataLoader worker whose share of a rank's shards to read
    (default: the calling worker's own). `expected` (url -> samples, :func:`shard_counts`) makes a
    shard with another sample count a bad shard.
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
    stages.append(wds.filters.pipelinefilter(_read_shards)(expected, handler))
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=random.Random(f"{seed}/{epoch}/{rank}")))
    pipe = wds.DataPipeline(*stages)
    if epoch_len is not None:
        pipe = pipe.with_epoch(epoch_len)
    return pipe


def read_split(shard_dir: str | Path, split: str, bad_shards: Optional[BadShardCounter] = None) -> list[dict]:
    """All samples of a split, in shard order (evaluation and tests); a bad shard (one whose sample
    count differs from the manifest's included) is fatal unless `bad_shards` skips it."""
    counts = shard_counts(shard_dir, split)
    return list(sample_stream(list(counts), rank=0, world_size=1, expected=counts, bad_shards=bad_shards))
