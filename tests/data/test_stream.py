"""The recipe's batch stream: length grouping, exactly-once per epoch, resumable skip, packing."""

import random
from collections import Counter

import pytest
import torch

from ckf_dist.config import Config
from ckf_dist.data.shards import shard_urls, write_shards
from ckf_dist.data.stream import TrainStream, pack_batch, sample_length, train_loader, unpack_batch

TASKS = ["ctr", "topk", "rating"]
PROMPT_LEN = {"ctr": 40, "topk": 200, "rating": 90}


def _samples(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for k in range(n):
        task = TASKS[k % 3]
        prompt = "w " * (PROMPT_LEN[task] + rng.randrange(20))
        out.append({"key": f"train/{task}/{k}/0", "task": task, "split": "train", "user": k % 17,
                    "user_id": str(k % 17), "items": [k % 5], "history": [1, 2], "prompt": prompt,
                    "prompt_text": prompt, "target": "Yes", "label": 1.0, "candidates": [], "answer": -1,
                    "warm": True})
    return out


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards({"train": _samples(240)}, d, samples_per_shard=30, shard_multiple=4, seed=3,
                 dataset_fingerprint="fp", config_hash="ch")
    return shard_urls(d, "train")


def _cfg(group: int) -> Config:
    cfg = Config()
    cfg.tasks = list(TASKS)
    cfg.train.micro_batch_size = 4
    cfg.loader.length_group = group
    cfg.loader.shuffle_buffer = 16
    return cfg


def _collate_keys(batch: list[dict]) -> dict:
    lengths = torch.tensor([sample_length(s) for s in batch])
    return {"keys": [s["key"] for s in batch], "lengths": lengths}


def _batches(urls, group, n, rank=0, world=1, workers=0, skip=0) -> list[dict]:
    stream = TrainStream(urls, _cfg(group), _collate_keys, rank, world, workers, skip=skip)
    it = iter(train_loader(stream))
    return [next(it) for _ in range(n)]


def _pad_fraction(batches) -> float:
    return sum(float(b["lengths"].max() * len(b["lengths"]) - b["lengths"].sum()) for b in batches) / sum(
        float(b["lengths"].max() * len(b["lengths"])) for b in batches)


def test_length_grouping_pads_less_and_keeps_batches_mixed(urls):
    plain = _batches(urls, group=1, n=30)
    grouped = _batches(urls, group=8, n=30)
    # The first 3 pools of 8 batches hold exactly the first 24 stream-order batches' samples.
    keys_plain = sorted(k for b in plain[:24] for k in b["keys"])
    keys_grouped = sorted(k for b in grouped[:24] for k in b["keys"])
    assert keys_plain == keys_grouped
    assert _pad_fraction(grouped) < 0.5 * _pad_fraction(plain)
    # Not ordered by length: consecutive batches jump between short and long prompts.
    maxima = [int(b["lengths"].max()) for b in grouped[:8]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_each_sample_once_per_epoch_across_ranks_and_loader_workers(urls):
    # 240 samples over 2 ranks = 120 per rank per epoch = 30 batches; pools of 5 batches divide it.
    seen = Counter()
    for rank in range(2):
        for b in _batches(urls, group=5, n=30, rank=rank, world=2, workers=2):
            seen.update(b["keys"])
    assert len(seen) == 240 and set(seen.values()) == {1}


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_resumes_the_same_sequence(urls, workers):
    full = _batches(urls, group=8, n=20, workers=workers)
    resumed = _batches(urls, group=8, n=13, workers=workers, skip=7)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[7:]]


def test_pack_round_trip_keeps_dtypes_shapes_values():
    batch = {"input_ids": torch.arange(12).view(3, 4), "mask": torch.tensor([[True, False, True]]),
             "label": torch.tensor([1.0, float("nan"), 0.5]), "items": torch.zeros(0, dtype=torch.long),
             "odd": torch.arange(3, dtype=torch.int16), "keys": ["a", "b", "c"], "truncated": 2}
    packed = pack_batch(batch)
    assert sum(isinstance(v, torch.Tensor) for v in packed.values()) == 0  # one buffer, inside a tuple
    back = unpack_batch(packed)
    assert back.keys() == batch.keys()
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert torch.equal(torch.nan_to_num(back[k].float()), torch.nan_to_num(v.float()))
        else:
            assert back[k] == v
