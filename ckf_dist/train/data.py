"""The training batch stream of one worker: shards -> task mix -> micro-batches -> collation.

Every rank reads its own shards (dealt by rank, then by DataLoader worker), epoch after epoch,
so within an epoch no sample is seen twice; the stream is endless and the recipe takes exactly
`train.steps * train.grad_accum` micro-batches on every rank, so all ranks run the same number
of steps (unequal step counts hang collectives). Collation (tokenisation) runs in the DataLoader
workers. The position is resumable: `skip` micro-batches are dropped *before* collation, each
DataLoader worker dropping its own share of the round-robin order the DataLoader uses.
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
    ):
        self.urls, self.cfg, self.collate = urls, cfg, collate
        self.rank, self.world_size, self.num_workers = rank, world_size, max(0, num_workers)
        self.skip = skip
        self.bad_shards = bad_shards if bad_shards is not None else BadShardCounter(cfg.dist.on_bad_shard)
        mix = {t: cfg.task_mix.get(t, 1.0) for t in cfg.tasks}
        top = max(mix.values()) if mix else 1.0
        self.keep_prob = {t: (w / top if top > 0 else 0.0) for t, w in mix.items()}

    def _samples(self, worker: int) -> Iterator[dict]:
        """Samples of this rank and worker, epoch after epoch, filtered by task and `task_mix`."""
        rng = random.Random(f"{self.cfg.seed}/mix/{self.rank}/{worker}")
        epoch = 0
        while True:
            n = 0
            for s in sample_stream(
                self.urls,
                rank=self.rank,
                world_size=self.world_size,
                shuffle_buffer=self.cfg.train.shuffle_buffer,
                seed=self.cfg.seed,
                epoch=epoch,
                bad_shards=self.bad_shards,
            ):
                n += 1
                p = self.keep_prob.get(s["task"], 0.0)
                if p >= 1.0 or (p > 0 and rng.random() < p):
                    yield s
            if n == 0:
                return  # this reader owns no readable shard
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        # The DataLoader takes batch k from worker k % workers: this worker's share of `skip`.
        my_skip = len(range(worker, self.skip, workers))
        mb = self.cfg.train.micro_batch_size
        batch: list[dict] = []
        for s in self._samples(worker):
            batch.append(s)
            if len(batch) == mb:
                if my_skip > 0:
                    my_skip -= 1
                else:
                    out = self.collate(batch)
                    out["bad_shards"] = self.bad_shards.count
                    yield out
                batch = []


def train_loader(stream: TrainStream) -> torch.utils.data.DataLoader:
    # Its own generator: creating the iterator then never draws from the global RNG, so the
    # dropout masks after a resume match an uninterrupted run.
    gen = torch.Generator().manual_seed(stream.cfg.seed * 1000 + stream.rank)
    return torch.utils.data.DataLoader(
        stream,
        generator=gen,
        batch_size=None,
        num_workers=stream.num_workers,
        prefetch_factor=4 if stream.num_workers > 0 else None,
        persistent_workers=False,
    )
