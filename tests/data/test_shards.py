"""Shard writing, manifest, and the streaming reader's split / resample / bad-shard behaviour."""

import json
from collections import Counter

import pytest
import torch.utils.data

from ckf_dist.data.shards import (
    BadShardCounter,
    load_manifest,
    num_shards,
    read_split,
    sample_stream,
    shard_urls,
    write_shards,
)

TASKS = ["ctr", "topk", "rating"]


def _samples(split: str, n: int) -> list[dict]:
    return [
        {"key": f"{split}/{TASKS[k % 3]}/{k}/0", "task": TASKS[k % 3], "split": split, "user": k % 17,
         "user_id": str(k % 17), "items": [k % 5], "history": [1, 2], "prompt": f"p{k}",
         "prompt_text": f"t{k}", "target": "Yes", "label": 1.0, "candidates": [], "answer": -1, "warm": True}
        for k in range(n)
    ]


@pytest.fixture()
def shard_dir(tmp_path):
    data = {"train": _samples("train", 203), "valid": _samples("valid", 10)}
    write_shards(data, tmp_path, samples_per_shard=20, shard_multiple=4, seed=3,
                 dataset_fingerprint="fp", config_hash="ch")
    return tmp_path, data


def test_num_shards_is_multiple():
    assert num_shards(203, 20, 4) == 12
    assert num_shards(1, 20, 4) == 4
    assert num_shards(80, 20, 4) == 4


def test_round_trip_and_manifest(shard_dir):
    d, data = shard_dir
    m = load_manifest(d)
    assert m["splits"]["train"]["samples"] == 203
    assert m["splits"]["train"]["tasks"] == {"ctr": 68, "rating": 67, "topk": 68}
    assert len(m["splits"]["train"]["shards"]) == 12
    assert sum(s["samples"] for s in m["splits"]["train"]["shards"]) == 203
    assert all(s["bytes"] > 0 for s in m["splits"]["train"]["shards"])
    assert m["dataset_fingerprint"] == "fp" and m["config_hash"] == "ch"
    back = read_split(d, "train")
    assert sorted(back, key=lambda s: s["key"]) == sorted(data["train"], key=lambda s: s["key"])


def _read_rank(urls, rank, world, workers, epoch=0):
    ds = sample_stream(urls, rank=rank, world_size=world, epoch=epoch, shuffle_buffer=8, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [s["key"] for s in loader]


def test_every_shard_read_once_per_epoch_2_nodes_x_2_workers(shard_dir):
    d, data = shard_dir
    urls = shard_urls(d, "train")
    for epoch in (0, 1):
        keys = _read_rank(urls, 0, 2, 2, epoch) + _read_rank(urls, 1, 2, 2, epoch)
        counts = Counter(keys)
        assert len(keys) == 203 and set(counts.values()) == {1}
    # the two ranks read disjoint samples
    assert not set(_read_rank(urls, 0, 2, 2)) & set(_read_rank(urls, 1, 2, 2))


def test_resampled_fixed_length_epochs_equal_per_rank(shard_dir):
    d, _ = shard_dir
    urls = shard_urls(d, "train")
    lens = [len(list(sample_stream(urls, rank=r, world_size=3, resampled=True, epoch_len=57, seed=2))) for r in range(3)]
    assert lens == [57, 57, 57]


def test_corrupted_shard_skipped_and_counted(shard_dir):
    d, _ = shard_dir
    urls = shard_urls(d, "train")
    with open(urls[0], "r+b") as f:  # truncate the first shard mid-member
        f.truncate(700)
    counter = BadShardCounter("skip")
    good = list(sample_stream(urls, rank=0, world_size=1, bad_shards=counter))
    assert counter.count >= 1 and len(good) < 203 and len(good) >= 203 - 17
    with pytest.raises(Exception):
        list(sample_stream(urls, rank=0, world_size=1, bad_shards=BadShardCounter("error")))


def test_shard_members_are_json_samples(shard_dir):
    import tarfile

    d, _ = shard_dir
    with tarfile.open(shard_urls(d, "valid")[0]) as tf:
        names = tf.getnames()
        member = json.loads(tf.extractfile(names[0]).read())
    assert all(n.endswith(".json") for n in names)
    assert set(member) >= {"key", "task", "prompt", "prompt_text", "target", "items", "warm"}
