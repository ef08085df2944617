"""`ckf data prepare` on both engines: the same split table, shards and manifest as the in-memory
reference (load -> split -> samples -> write_shards), whatever the engine, the number of Ray
workers and the number of blocks; bad records counted per block and summed; the first bad record
in file order is the one an error names."""

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ckf_dist.config import load_config
from ckf_dist.data.errors import DataError
from ckf_dist.data.loaders import load_dataset
from ckf_dist.data.prepare import prepare
from ckf_dist.data.samples import build_samples
from ckf_dist.data.shards import fingerprint_frame, write_shards
from ckf_dist.data.splits import split_dataset
from ckf_dist.data.table import SplitData

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["data.synthetic.num_users=2300", "data.synthetic.num_items=150", "data.synthetic.interactions_per_user=12",
         "data.samples_per_user=3", "data.samples_per_shard=300"]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, 127.0.0.1) that every ray-engine preparation of the module joins."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def reference(cfg, out: Path) -> dict:
    """The in-memory path: the whole data set in this process."""
    sd = split_dataset(load_dataset(cfg.data, cfg.seed), cfg.data, cfg.seed)
    sd.save(out / "split")
    return write_shards(build_samples(sd, cfg), out / "shards", samples_per_shard=cfg.data.samples_per_shard,
                        shard_multiple=cfg.data.shard_multiple, seed=cfg.seed, dataset_fingerprint=fingerprint_frame(sd.inter),
                        config_hash="key", extra={"skipped": sd.skipped, "dataset": sd.name})


def staged(config, overrides, out: Path, **data) -> tuple[dict, dict]:
    cfg = load_config(config, [*overrides, *(f"data.{k}={v}" for k, v in data.items())])
    stats: dict = {}
    prepare(cfg, out / "split", out / "shards", out / "staging", "key", stats)
    assert not (out / "staging").exists()
    return json.loads((out / "shards" / "manifest.json").read_text()), stats


def assert_same(a: Path, b: Path, manifest_a: dict, manifest_b: dict) -> None:
    assert manifest_a == manifest_b
    for split in manifest_a["splits"].values():
        for s in split["shards"]:
            assert (a / "shards" / s["path"]).read_bytes() == (b / "shards" / s["path"]).read_bytes(), s["path"]
    sa, sb = SplitData.load(a / "split"), SplitData.load(b / "split")
    pd.testing.assert_frame_equal(sa.inter, sb.inter)
    assert (a / "split" / "meta.json").read_bytes() == (b / "split" / "meta.json").read_bytes()


def test_synthetic_local_and_ray_match_the_reference(tmp_path, ray_cluster):
    cfg = load_config("configs/quickstart.yaml", SMALL)
    ref = reference(cfg, tmp_path / "ref")
    local, st_local = staged("configs/quickstart.yaml", SMALL, tmp_path / "local")
    assert_same(tmp_path / "ref", tmp_path / "local", ref, local)
    ray1, st1 = staged("configs/quickstart.yaml", SMALL, tmp_path / "ray1", engine="ray", workers=1)
    ray2, st2 = staged("configs/quickstart.yaml", SMALL, tmp_path / "ray2", engine="ray", workers=2, block_mb=0.1)
    assert_same(tmp_path / "ref", tmp_path / "ray1", ref, ray1)
    assert_same(tmp_path / "ref", tmp_path / "ray2", ref, ray2)
    assert (st1["workers"], st2["workers"]) == (1, 2)
    assert st2["partitions"] >= 3  # several user blocks
    assert sum(len(s["shards"]) for s in ref["splits"].values()) > 12  # several shard-writing tasks' worth
    other_seed, _ = staged("configs/quickstart.yaml", [*SMALL, "seed=1"], tmp_path / "seed1", engine="ray", workers=2)
    assert other_seed["dataset_fingerprint"] != ref["dataset_fingerprint"]


def test_global_time_split_cuts_match(tmp_path, ray_cluster):
    over = [*SMALL, "data.split=global_time", "data.split_fractions=[0.7,0.2,0.1]"]
    ref = reference(load_config("configs/quickstart.yaml", over), tmp_path / "ref")
    ray2, _ = staged("configs/quickstart.yaml", over, tmp_path / "ray2", engine="ray", workers=2, block_mb=0.1)
    assert_same(tmp_path / "ref", tmp_path / "ray2", ref, ray2)
    sd = SplitData.load(tmp_path / "ray2" / "split")
    assert sd.protocol == "global_time"
    ts = {s: sd.part(s)["timestamp"] for s in ("train", "valid", "test")}
    assert ts["train"].max() < ts["valid"].min() and ts["valid"].max() < ts["test"].min()


def test_ml100k_local_and_ray_match(tmp_path, ml100k_dir, ray_cluster):
    over = [f"data.path={ml100k_dir}", "data.samples_per_user=2", "data.samples_per_shard=500",
            "data.title_description=true", "data.item_rating_stats=true"]
    config = "configs/ml100k.yaml"
    ref = reference(load_config(config, over), tmp_path / "ref")
    local, _ = staged(config, over, tmp_path / "local", block_mb=0.25)
    ray2, st = staged(config, over, tmp_path / "ray2", engine="ray", workers=2, block_mb=0.3)
    assert st["read_tasks"] >= 6  # the 2 MB ratings file in byte ranges
    assert_same(tmp_path / "ref", tmp_path / "local", ref, local)
    assert_same(tmp_path / "ref", tmp_path / "ray2", ref, ray2)
    assert ref["dataset"] == "movielens-100k" and ref["splits"]["test"]["samples"] > 0
    # data.title_description: every engine names items "title, genres"
    names = set(SplitData.load(tmp_path / "ray2" / "split").item_titles)
    assert "Toy Story (1995), Animation, Children's, Comedy" in names and "Toy Story (1995)" not in names


def test_amazon_pseudo_titles_from_partitions(tmp_path, amazon_mi_file, ray_cluster):
    over = [f"data.path={amazon_mi_file}", "data.samples_per_user=1", "data.samples_per_shard=1000"]
    config = "configs/amazon-mi.yaml"
    ref = reference(load_config(config, over), tmp_path / "ref")
    ray2, st = staged(config, over, tmp_path / "ray2", engine="ray", workers=2, block_mb=1.0)
    assert st["partitions"] >= 4
    assert_same(tmp_path / "ref", tmp_path / "ray2", ref, ray2)
    titles = SplitData.read_meta(tmp_path / "ray2" / "split")["item_titles"]
    assert all(t.strip() for t in titles) and len(set(titles)) == len(titles)


def _csv_folder(folder: Path, bad_lines: bool) -> Path:
    """interactions.csv with quoted reviews (commas, quotes, newlines) and, optionally, bad records
    spread over the file."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    rows = []
    for k in range(2400):
        review = rng.choice(["plain words", '"a, b"', '"two\nlines"', '"say ""hi"""', ""])
        rating = rng.randint(1, 5)
        if bad_lines and k % 600 == 299:
            rating = "x"
        rows.append(f"u{k % 131},i{rng.randrange(60)},{k},{rating},,{review},s{k % 7},")
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating,label,review,summary,split\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Title {k}\n" for k in range(60)))
    return folder


def test_csv_bad_records_counted_per_block_and_summed(tmp_path, ray_cluster):
    data = _csv_folder(tmp_path / "in" / "shop", bad_lines=True)
    over = ["tasks=[ctr,topk,rating,review_rating]", "data.format=csv", f"data.path={data}", "data.on_bad_record=skip",
            "data.samples_per_shard=200"]
    ref = reference(load_config("configs/quickstart.yaml", over), tmp_path / "ref")
    # random items repeat (user, item) pairs, often in different blocks: duplicates, kept last
    assert ref["skipped"]["bad_rating"] == 4 and ref["skipped"]["duplicate"] > 100
    ray2, st = staged("configs/quickstart.yaml", over, tmp_path / "ray2", engine="ray", workers=2, block_mb=0.005)
    assert st["read_tasks"] >= 8  # the four bad records fall in different blocks
    assert_same(tmp_path / "ref", tmp_path / "ray2", ref, ray2)
    # error mode: the first bad record in file order, with its line (records span lines: line != row + 2)
    with pytest.raises(DataError) as local_err:
        load_dataset(load_config("configs/quickstart.yaml", [*over, "data.on_bad_record=error"]).data, 0)
    with pytest.raises(DataError) as ray_err:
        staged("configs/quickstart.yaml", [*over, "data.on_bad_record=error"], tmp_path / "err", engine="ray",
               workers=2, block_mb=0.005)
    assert str(ray_err.value) == str(local_err.value)
    assert "interactions.csv:" in str(ray_err.value) and "rating 'x' is not a number" in str(ray_err.value)


def test_parquet_export_prepares_like_its_csv(tmp_path, ray_cluster):
    """data.format=parquet with the csv columns gives the csv's split table and samples."""
    src = _csv_folder(tmp_path / "csv" / "shop", bad_lines=False)
    frame = pd.read_csv(src / "interactions.csv", keep_default_na=False, dtype=str)
    frame["timestamp"] = frame["timestamp"].astype("int64")
    frame["rating"] = frame["rating"].astype(float)
    pq = tmp_path / "pq" / "shop"
    (pq / "interactions.parquet").mkdir(parents=True)
    for k, part in enumerate((frame.iloc[:1000], frame.iloc[1000:])):  # two files, several row groups
        part.to_parquet(pq / "interactions.parquet" / f"part-{k}.parquet", index=False, row_group_size=300)
    pd.read_csv(src / "items.csv", dtype=str).to_parquet(pq / "items.parquet", index=False)
    base = ["tasks=[ctr,topk,rating,review_rating]", "data.samples_per_shard=200"]
    csv_m, _ = staged("configs/quickstart.yaml", [*base, "data.format=csv", f"data.path={src}"], tmp_path / "out-csv")
    pq_m, st = staged("configs/quickstart.yaml", [*base, "data.format=parquet", f"data.path={pq}"], tmp_path / "out-pq",
                      engine="ray", workers=2)
    assert st["read_tasks"] == 4 + 5  # row groups of 300 rows
    assert_same(tmp_path / "out-csv", tmp_path / "out-pq", csv_m, pq_m)


def test_run_dir_data_stage_switches_engines_without_rebuilding(tmp_path, ray_cluster):
    """The data stage key leaves out how preparation runs: a ray run reuses a local run's data."""
    from ckf_dist.pipeline import prepare_data
    from ckf_dist.run import Run

    over = [*SMALL, f"run.dir={tmp_path / 'run'}"]
    local = Run(load_config("configs/quickstart.yaml", over))
    summary = prepare_data(local)
    manifest = (tmp_path / "run" / "data" / "shards" / "manifest.json").read_bytes()
    ray_run = Run(load_config("configs/quickstart.yaml", [*over, "data.engine=ray", "data.workers=2"]))
    assert ray_run.data_stage().key == local.data_stage().key
    assert prepare_data(ray_run, force=True) == summary
    assert (tmp_path / "run" / "data" / "shards" / "manifest.json").read_bytes() == manifest
    shutil.rmtree(tmp_path / "run")


def test_one_gzip_stream_still_spreads_over_partitions(tmp_path, amazon_mi_file, monkeypatch, ray_cluster):
    """A .gz file is one read task, but its rows still go to several user partitions, written in
    bounded chunks: same output as the plain file read in ranges."""
    import gzip

    import ckf_dist.data.prepare_tasks as tasks
    import ckf_dist.data.source as source

    gz = tmp_path / "in" / (amazon_mi_file.name + ".gz")
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(amazon_mi_file.read_bytes()))
    over = ["data.samples_per_user=1", "data.samples_per_shard=1000", "data.block_mb=1"]
    plain, _ = staged("configs/amazon-mi.yaml", [*over, f"data.path={amazon_mi_file}"], tmp_path / "plain",
                      engine="ray", workers=2)
    # in this process (the local engine): batches of 500 rows, written every 1000 rows
    monkeypatch.setattr(source, "BATCH_ROWS", 500)
    monkeypatch.setattr(tasks, "HOLD_ROWS", 1000)
    written = []
    monkeypatch.setattr(tasks, "_write_ipc", lambda path, *a, _w=tasks._write_ipc, **k: (written.append(path), _w(path, *a, **k)))
    packed, st = staged("configs/amazon-mi.yaml", [*over, f"data.path={gz}"], tmp_path / "gz")
    assert len({p.name for p in written if p.parent.name.startswith("p0")}) >= 10  # chunks of the one read task
    assert st["read_tasks"] == 1 and st["partitions"] >= 4
    assert_same(tmp_path / "plain", tmp_path / "gz", plain, packed)


def test_partial_split_column_counts_every_row_without_one(tmp_path):
    """A csv whose split column is filled on some rows: the others are bad records, each counted."""
    folder = tmp_path / "in" / "shop"
    folder.mkdir(parents=True)
    rows = [f"u{k % 9},i{k // 9},{k},{1 + k % 5},,,,{'' if k % 10 == 3 else ('test' if k % 10 == 9 else 'train')}"
            for k in range(300)]  # no (user, item) pair twice
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating,label,review,summary,split\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},T{k}\n" for k in range(34)))
    over = ["tasks=[ctr,topk,rating]", "data.format=csv", f"data.path={folder}", "data.on_bad_record=skip"]
    ref = reference(load_config("configs/quickstart.yaml", over), tmp_path / "ref")
    assert ref["skipped"] == {"missing_split": 30}
    local, _ = staged("configs/quickstart.yaml", over, tmp_path / "local", block_mb=0.002)
    assert_same(tmp_path / "ref", tmp_path / "local", ref, local)
    with pytest.raises(DataError, match=r"interactions\.csv:5: empty split while other rows set one"):
        staged("configs/quickstart.yaml", [*over, "data.on_bad_record=error"], tmp_path / "err", block_mb=0.002)
