"""The training batch stream of one worker: shards -> task mix -> length groups -> micro-batches
-> collation -> one packed tensor per batch.

Every rank reads its own shards (dealt by rank, then by DataLoader worker), epoch after epoch,
so within an epoch no sample is seen twice; the stream is endless and the recipe takes exactly
`train.steps * train.grad_accum` micro-batches on every rank, so all ranks run the same number
of steps (unequal step counts hang collectives). Collation (tokenisation) runs in the DataLoader
workers. The position is resumable: `skip` micro-batches are dropped *before* collation, each
DataLoader worker dropping its own share of the round-robin order the DataLoader uses. The
DataLoader always asks worker 0 first, so after skipping `skip` batches worker w plays the part
of reader (w + skip) % workers: the resumed sequence is the uninterrupted one, batch for batch.

Length grouping (`loader.length_group` = G): G micro-batches' worth of samples are pooled, sorted
by prompt + target length and cut into G batches, which are yielded in a seeded random order.
Prompt lengths differ by task (topk prompts are ~2.5x explanation's), so stream-order mixed
batches are a third padding; grouped batches stay mixed-task (each row keeps its own task
adapter) but pad little. Every sample of the pool is still yielded exactly once.

Packing: a collated batch is ~15 tensors, and a DataLoader worker hands each to the trainer
through its own shared-memory segment and file-descriptor pass; :func:`pack_batch` copies them
into one byte tensor so a batch crosses the process boundary as one segment, and
:class:`BatchLoader` unpacks it into zero-copy views in the trainer.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, Optional

import torch.utils.data

from ckf_dist.config import Config
from ckf_dist.data.shards import BadShardCounter, sample_stream


class TrainStream(torch.utils.data.IterableDataset):
    """Endless collated micro-batches for one rank (`num_workers` DataLoader processes; 0 = inline)."""

    def __init__(
        self,
        urls: list[str],
        cfg: Config,
        collate: Callable[[list[dict]], dict],
        rank: int,
        world_size: int,
        num_workers: int,
        skip: int = 0,
        bad_shards: Optional[BadShardCounter] = None,
        expected: Optional[dict[str, int]] = None,
    ):
        """`expected`: url -> the sample count the manifest lists (a shard that differs is bad)."""
        self.urls, self.cfg, self.collate = urls, cfg, collate
        self.expected = expected
        self.rank, self.world_size, self.num_workers = rank, world_size, max(0, num_workers)
        self.skip = skip
        self.bad_shards = bad_shards if bad_shards is not None else BadShardCounter(cfg.dist.on_bad_shard)
        mix = {t: cfg.task_mix.get(t, 1.0) for t in cfg.tasks}
        top = max(mix.values()) if mix else 1.0
        self.keep_prob = {t: (w / top if top > 0 else 0.0) for t, w in mix.items()}

    def _samples(self, worker: int, workers: int) -> Iterator[dict]:
        """Samples of this rank and reader, epoch after epoch, filtered by task and `task_mix`."""
        rng = random.Random(f"{self.cfg.seed}/mix/{self.rank}/{worker}")
        epoch = 0
        while True:
            n = 0
            for s in sample_stream(
                self.urls,
                rank=self.rank,
                world_size=self.world_size,
                shuffle_buffer=self.cfg.loader.shuffle_buffer,
                seed=self.cfg.seed,
                epoch=epoch,
                bad_shards=self.bad_shards,
                reader=(worker, workers),
                expected=self.expected,
            ):
                n += 1
                p = self.keep_prob.get(s["task"], 0.0)
                if p >= 1.0 or (p > 0 and rng.random() < p):
                    yield s
            if n == 0:
                return  # this reader owns no readable shard
            epoch += 1

    def _batches(self, worker: int, workers: int) -> Iterator[list[dict]]:
        """Micro-batches of samples, length-grouped per pool of `loader.length_group` batches."""
        mb = self.cfg.train.micro_batch_size
        group = max(1, self.cfg.loader.length_group)
        rng = random.Random(f"{self.cfg.seed}/group/{self.rank}/{worker}")
        pool: list[dict] = []
        for s in self._samples(worker, workers):
            pool.append(s)
            if len(pool) == mb * group:
                if group > 1:
                    pool.sort(key=sample_length)
                batches = [pool[i : i + mb] for i in range(0, len(pool), mb)]
                if group > 1:
                    rng.shuffle(batches)
                yield from batches
                pool = []

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info is not None else 1
        # The DataLoader takes its k-th batch from worker k % workers; batch `skip + k` of the
        # uninterrupted run came from reader (skip + k) % workers: this worker reads as that one.
        reader = ((info.id if info is not None else 0) + self.skip) % workers
        my_skip = len(range(reader, self.skip, workers))
        for batch in self._batches(reader, workers):
            if my_skip > 0:
                my_skip -= 1
                continue
            out = self.collate(batch)
            out["bad_shards"] = self.bad_shards.count
            # packing pays only where the batch crosses a process boundary
            yield pack_batch(out) if self.num_workers > 0 else out


def sample_length(sample: dict) -> int:
    """Sort key of length grouping: characters of the prompt and its answer (no tokenizer needed)."""
    return len(sample["prompt"]) + len(sample["target"])


PACKED = "_packed"
_ALIGN = 16


def pack_batch(batch: dict) -> dict:
    """Copy every tensor of `batch` into one uint8 tensor (16-byte aligned slots); other values
    pass through. ``unpack_batch(pack_batch(b))`` has the same keys, dtypes, shapes and values."""
    tensors = {k: v.contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    layout, offset = [], 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        layout.append((k, t.dtype, tuple(t.shape), offset, n))
        offset += -(-n // _ALIGN) * _ALIGN
    buf = torch.empty(offset, dtype=torch.uint8)
    for (k, _, _, off, n), t in zip(layout, tensors.values()):
        if n:
            buf[off : off + n] = t.reshape(-1).view(torch.uint8)
    out = {k: v for k, v in batch.items() if k not in tensors}
    out[PACKED] = (buf, layout)
    return out


def unpack_batch(batch: dict) -> dict:
    """Inverse of :func:`pack_batch`: the tensors come back as views of the one buffer."""
    if PACKED not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k != PACKED}
    buf, layout = batch[PACKED]
    for k, dtype, shape, off, n in layout:
        out[k] = buf[off : off + n].view(dtype).view(shape)
    return out


class BatchLoader:
    """The DataLoader over a :class:`TrainStream`, yielding unpacked batches."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield unpack_batch(batch)


def train_loader(stream: TrainStream) -> BatchLoader:
    # Its own generator: creating the iterator then never draws from the global RNG, so the
    # dropout masks after a resume match an uninterrupted run.
    gen = torch.Generator().manual_seed(stream.cfg.seed * 1000 + stream.rank)
    return BatchLoader(torch.utils.data.DataLoader(
        stream,
        generator=gen,
        batch_size=None,
        num_workers=stream.num_workers,
        prefetch_factor=4 if stream.num_workers > 0 else None,
        persistent_workers=False,
    ))
