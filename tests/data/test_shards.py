"""Shard writing, manifest, and the streaming reader's split / resample / bad-shard behaviour."""

import json
from collections import Counter

import pytest
import torch.utils.data

from ckf_dist.data.shards import (
    BadShard,
    BadShardCounter,
    load_manifest,
    num_shards,
    read_split,
    sample_stream,
    shard_counts,
    shard_urls,
    verify_shards,
    write_shards,
    write_tar,
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


def test_shards_are_a_function_of_the_samples_not_their_order(tmp_path):
    """Hash assignment: the same samples in another order, or split across calls, give the same bytes."""
    data = _samples("train", 203)
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(samples_per_shard=20, shard_multiple=4, seed=3, dataset_fingerprint="fp", config_hash="ch")
    ma = write_shards({"train": data}, a, **kw)
    mb = write_shards({"train": data[::-1]}, b, **kw)
    assert ma == mb
    for s in ma["splits"]["train"]["shards"]:
        assert (a / s["path"]).read_bytes() == (b / s["path"]).read_bytes()
    sizes = [s["samples"] for s in ma["splits"]["train"]["shards"]]
    assert len(sizes) == 12 and sum(sizes) == 203 and set(sizes) == {16, 17}
    first = [json.loads(x)["key"] for x in _members(a / ma["splits"]["train"]["shards"][0]["path"])]
    other = write_shards({"train": data}, tmp_path / "c", **{**kw, "seed": 4})
    assert [json.loads(x)["key"] for x in _members(tmp_path / "c" / other["splits"]["train"]["shards"][0]["path"])] != first


def _members(path):
    import tarfile

    with tarfile.open(path) as tf:
        return [tf.extractfile(n).read() for n in tf.getnames()]


@pytest.mark.parametrize("key", ["train/ctr/12/0", "valid/topk/3/7", "x" * 150])
def test_tar_bytes_are_webdatasets(tmp_path, key):
    """The shard writer's own tar encoding is byte for byte webdataset's TarWriter's."""
    import io

    import webdataset as wds

    members = [(key, b'{"a": 1}'), (key + "b", b"y" * 1000), (key + "c", b"")]
    write_tar(tmp_path / "s.tar", members)
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0) as sink:
        for k, data in members:
            sink.write({"__key__": k.replace("/", "_").replace(".", "_"), "json": data})
    assert (tmp_path / "s.tar").read_bytes() == buf.getvalue()


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
    first = load_manifest(d)["splits"]["train"]["shards"][0]["samples"]
    with open(urls[0], "r+b") as f:  # truncate the first shard mid-member
        f.truncate(700)
    counter = BadShardCounter("skip")
    good = list(sample_stream(urls, rank=0, world_size=1, bad_shards=counter))
    assert counter.count == 1 and len(good) == 203 - first  # a bad shard gives none of its samples
    with pytest.raises(BadShard, match=r"train-000000\.tar"):
        list(sample_stream(urls, rank=0, world_size=1, bad_shards=BadShardCounter("error")))


def _cut_at_member(path, k: int) -> int:
    """Truncate a tar shard right before the header of its k-th member (a 512-byte boundary, as an
    interrupted copy can leave it): tar readers see a clean end of archive there."""
    import tarfile

    with tarfile.open(path) as tf:
        offset = tf.getmembers()[k].offset
    assert offset % 512 == 0
    with open(path, "r+b") as f:
        f.truncate(offset)
    with tarfile.open(path) as tf:  # still a valid, shorter archive
        assert len(tf.getmembers()) == k
    return offset


def test_shard_truncated_at_a_header_boundary_is_a_bad_shard(shard_dir):
    d, data = shard_dir
    counts = shard_counts(d, "train")
    url = list(counts)[2]
    _cut_at_member(url, 4)
    # without the manifest's counts the short shard reads as a whole one: 4 samples instead of 17
    unchecked = list(sample_stream(list(counts), rank=0, world_size=1))
    assert len(unchecked) == 203 - counts[url] + 4
    with pytest.raises(BadShard) as e:  # read_split checks the counts; error is the default
        read_split(d, "train")
    assert str(e.value) == f"{url}: 4 samples, the manifest lists {counts[url]} (truncated or replaced shard)"
    counter = BadShardCounter("skip")
    kept = read_split(d, "train", bad_shards=counter)
    assert counter.count == 1 and len(kept) == 203 - counts[url]
    assert verify_shards(d) == f"shard {url} has {__import__('os').path.getsize(url)} bytes, the manifest says " \
        f"{next(s['bytes'] for s in load_manifest(d)['splits']['train']['shards'] if url.endswith(s['path']))}"


def test_corrupt_json_member_is_a_bad_shard_not_a_crash(tmp_path):
    import io
    import tarfile

    write_shards({"train": _samples("train", 40)}, tmp_path, samples_per_shard=10, shard_multiple=4, seed=0,
                 dataset_fingerprint="fp", config_hash="ch")
    urls = shard_urls(tmp_path, "train")
    members = []
    with tarfile.open(urls[1]) as tf:
        for m in tf.getmembers():
            members.append((m, tf.extractfile(m).read()))
    with tarfile.open(urls[1], "w") as tf:  # same members, the second one's JSON cut short
        for k, (m, raw) in enumerate(members):
            raw = raw[: len(raw) // 2] if k == 1 else raw
            m.size = len(raw)
            tf.addfile(m, io.BytesIO(raw))
    counter = BadShardCounter("skip")
    kept = list(sample_stream(urls, rank=0, world_size=1, bad_shards=counter, expected=shard_counts(tmp_path, "train")))
    assert counter.count == 1 and len(kept) == 30 and "is not valid JSON" in counter.messages[0]
    with pytest.raises(BadShard, match=r"train-000001\.tar: member .* is not valid JSON"):
        read_split(tmp_path, "train")


def test_verify_shards_names_a_missing_or_changed_shard(shard_dir):
    import os

    d, _ = shard_dir
    assert verify_shards(d) is None
    urls = shard_urls(d, "valid")
    with open(urls[1], "r+b") as f:  # same size, other bytes
        f.seek(600)
        f.write(b"X")
    assert verify_shards(d) == f"shard {urls[1]} does not match its sha256 in the manifest"
    os.unlink(urls[0])
    assert verify_shards(d) == f"shard {urls[0]} is missing"
    os.unlink(d / "manifest.json")
    assert "manifest.json is missing or unreadable" in verify_shards(d)


def test_shard_members_are_json_samples(shard_dir):
    import tarfile

    d, _ = shard_dir
    with tarfile.open(shard_urls(d, "valid")[0]) as tf:
        names = tf.getnames()
        member = json.loads(tf.extractfile(names[0]).read())
    assert all(n.endswith(".json") for n in names)
    assert set(member) >= {"key", "task", "prompt", "prompt_text", "target", "items", "warm"}


@pytest.mark.integration
def test_data_prepare_rebuilds_a_deleted_shard(tmp_path, caplog):
    import os

    from ckf_dist.cli import main

    args = ["data", "prepare", f"run.dir={tmp_path}", "data.synthetic.num_users=20", "data.synthetic.num_items=20"]
    assert main(args) == 0
    shards = tmp_path / "data" / "shards"
    gone = shard_urls(shards, "test")[1]
    os.unlink(gone)
    with caplog.at_level("INFO", logger="ckf_dist.run"):
        assert main(args) == 0
    assert f"stage data: shard {gone} is missing; rebuilding" in caplog.text
    assert os.path.isfile(gone) and verify_shards(shards) is None
    caplog.clear()
    with caplog.at_level("INFO", logger="ckf_dist.run"):
        assert main(args) == 0
    assert "stage data: up to date" in caplog.text
