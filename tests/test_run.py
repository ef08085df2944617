"""The run directory object: its layout, its stage keys and what they depend on."""

import pytest

from ckf_dist.config import load_config
from ckf_dist.run import STAGES, Run


def _keys(*overrides):
    r = Run(load_config(None, ["run.dir=/tmp/x", *overrides]))
    return {s: r.stage(s).key for s in STAGES}


def test_layout(tmp_path):
    r = Run(load_config(None, [f"run.dir={tmp_path}", "cf.model=lightgcn"]))
    assert r.cf_table() == tmp_path / "cf" / "lightgcn.safetensors"
    assert r.cf_table("mf") == tmp_path / "cf" / "mf.safetensors"
    assert r.model_dir == r.llm_dir == tmp_path / "llm"
    assert r.checkpoint(12).name == "step-000012" and r.checkpoint(12).parent == r.checkpoints_dir
    assert r.metrics_file() == tmp_path / "metrics.json" and r.metrics_file("valid").name == "metrics_valid.json"
    assert r.metrics_markdown("valid").name == "metrics_valid.md"
    assert r.ray_storage == tmp_path / "ray"
    assert r.latest_checkpoint() is None
    r.checkpoint(3).mkdir(parents=True)
    r.mark_latest(r.checkpoint(3))
    assert r.latest_checkpoint() == r.checkpoint(3) and r.checkpoints() == [r.checkpoint(3)]
    assert Run(load_config(None, ["model.path=/models/x"])).model_dir.as_posix() == "/models/x"


def test_open_and_at(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.open(tmp_path)
    r = Run(load_config(None, [f"run.dir={tmp_path}", "seed=3"]))
    r.write_config()
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    opened = Run.open(moved)
    assert opened.dir == moved and opened.cfg.seed == 3
    bare = Run.at(moved)
    assert bare.baselines_json == moved / "cf" / "baselines.json"
    with pytest.raises(ValueError, match="no config"):
        bare.cf_table()


def test_stage_keys_chain_and_ignore_what_does_not_change_results():
    base = _keys()
    assert _keys("train.debug_checks=true") == base
    assert _keys("train.activation_checkpointing=true") == base
    lr = _keys("train.lr=0.5")
    assert lr["cf"] == base["cf"] and lr["train"] != base["train"] and lr["eval"] != base["eval"]
    loader = _keys("loader.length_group=3")  # the order batches come in: training changes
    assert loader["train"] != base["train"] and loader["data"] == base["data"]
    cf = _keys("cf.dim=4")
    assert cf["data"] == base["data"] and cf["llm"] == base["llm"] and cf["cf"] != base["cf"] and cf["eval"] != base["eval"]
    data = _keys("data.history_len=3")
    assert all(data[s] != base[s] for s in STAGES)


def test_keys_added_for_the_modes_keep_earlier_runs_fresh():
    """A run made before the baseline modes existed hashed cf.* and model.* without their new keys:
    at their defaults those keys are left out, so its stages stay fresh; set, they count."""
    from ckf_dist.config import to_dict
    from ckf_dist.run import ADDED_KEYS, _section_key, stage_hash

    r = Run(load_config(None, ["run.dir=/tmp/x"]))
    cfg = r.cfg
    old_cf = {k: v for k, v in to_dict(cfg.cf).items() if k not in ADDED_KEYS["cf"]}
    old_model = {k: v for k, v in to_dict(cfg.model).items() if k not in ADDED_KEYS["model"]}
    assert _section_key(cfg, "cf") == old_cf and _section_key(cfg, "model") == old_model
    assert r.cf_stage().key == stage_hash([r.data_stage().key, old_cf, cfg.eval.ks, cfg.eval.max_samples_per_task, cfg.eval.task_caps])
    base = _keys()
    assert _keys("cf.sasrec_blocks=3")["cf"] != base["cf"]
    bits = _keys("model.binllm_bits=16")
    assert bits["train"] != base["train"] and bits["cf"] == base["cf"]
    old_data = {k: v for k, v in to_dict(cfg.data).items() if k not in ADDED_KEYS["data"]}
    assert _section_key(cfg, "data") == old_data  # data.title_description at its default: earlier runs stay fresh
    assert _keys("data.title_description=true")["data"] != base["data"]


def test_mode_stage_key_follows_what_the_mode_stage_reads():
    binllm = _keys("model.mapping=binllm")
    assert _keys("model.mapping=binllm", "model.binllm_bits=16")["mode"] != binllm["mode"]
    assert _keys("model.mapping=binllm", "model.binllm_compress=true")["mode"] == binllm["mode"]  # formatting only
    assert _keys("model.mapping=binllm", "tiny.hidden_size=64")["mode"] == binllm["mode"]  # codes never see the LLM
    allmrec = _keys("model.mapping=allmrec")
    assert _keys("model.mapping=allmrec", "tiny.hidden_size=64")["mode"] != allmrec["mode"]  # text embeddings do
    assert _keys("model.mapping=allmrec", "cf.dim=8")["mode"] != allmrec["mode"]
    assert Run(load_config(None, ["run.dir=/tmp/x", "model.mapping=binllm"])).mode_file.name == "binllm.safetensors"


def test_fresh_stage_is_skipped(tmp_path):
    r = Run(load_config(None, [f"run.dir={tmp_path}"]))
    calls = []
    stage = r.cf_stage()
    assert stage.run(lambda folder: calls.append(folder) or {"n": 1}) == {"n": 1}
    assert stage.fresh() and stage.run(lambda folder: calls.append(folder) or {"n": 2}) == {"n": 1}
    assert len(calls) == 1
    assert stage.run(lambda folder: calls.append(folder) or {"n": 3}, force=True) == {"n": 3}


# ------------------------------------------------------------------------------------------------
# Lineage: a stage is fresh only while its upstream stages hold what it was built from


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_downstream_stage_goes_stale_when_an_upstream_output_changes(tmp_path):
    r = Run(load_config(None, [f"run.dir={tmp_path}"]))
    data, cf = r.data_stage(), r.cf_stage()
    data.run(lambda f: _write(r.split_dir / "meta.json", "split A") or {})
    built = []
    cf.run(lambda f: _write(r.cf_table(), "table") or built.append(1) or {})
    assert cf.problem() is None and data.output() is not None
    a = data.output()
    # the same data config rebuilt into other bytes (e.g. a source edited in place)
    data.run(lambda f: _write(r.split_dir / "meta.json", "split B") or {}, force=True)
    b = data.output()
    assert a != b and cf.problem() == f"cf/ was built from data/ {a}, which now holds {b} (rebuilt since)"
    with pytest.raises(Exception, match=r"cf/ was built from data/ .* rerun `ckf train`"):
        r.check_current(("data", "cf"))
    cf.run(lambda f: _write(r.cf_table(), "table") or built.append(2) or {})  # not fresh: rebuilt
    assert built == [1, 2] and cf.problem() is None
    # a rebuild into the same bytes changes nothing downstream
    data.run(lambda f: _write(r.split_dir / "meta.json", "split B") or {}, force=True)
    assert data.output() == b and cf.fresh()


def test_stale_stage_says_which_config_keys_changed(tmp_path):
    r0 = Run(load_config(None, [f"run.dir={tmp_path}"]))
    r0.data_stage().run(lambda f: {})
    r0.cf_stage().run(lambda f: {})
    r1 = Run(load_config(None, [f"run.dir={tmp_path}", "seed=1", "cf.dim=4"]))
    assert r1.cf_stage().problem() == "cf/ was built for another configuration (cf.dim: 32 -> 4, seed: 0 -> 1)"
    assert Run(load_config(None, [f"run.dir={tmp_path}"])).cf_stage().problem() is None
    assert r1.train_stage().problem() == "train/ has no stage record (never built, or its build did not finish)"


def test_data_stage_follows_the_source_bytes_not_their_mtimes(tmp_path):
    """A dataset copied or extracted again (same bytes, new mtimes) keeps the prepared data fresh;
    an edit that keeps the size goes stale; the digests are cached under size and mtime."""
    import json
    import os

    src = tmp_path / "src"
    _write(src / "ratings.csv", "user,item,rating\nu1,i1,5\n")
    r = Run(load_config(None, [f"run.dir={tmp_path / 'run'}", f"data.path={src}", "data.format=csv"]))
    r.dir.mkdir()
    r.data_stage().run(lambda f: {})
    assert r.data_stage().fresh()
    cached = json.loads(r.source_digests_file.read_text())
    assert list(cached) == [str(src / "ratings.csv")] and len(cached[str(src / "ratings.csv")][2]) == 64
    os.utime(src / "ratings.csv", (1_000_000, 1_000_000))  # a fresh copy: same bytes, another mtime
    assert r.data_stage().fresh()
    (src / "ratings.csv").write_text("user,item,rating\nu1,i1,4\n")  # same size, other bytes
    os.utime(src / "ratings.csv", (2_000_000, 2_000_000))
    assert r.data_stage().problem().startswith("data/ was built for another configuration (source_files:")


# ------------------------------------------------------------------------------------------------
# The run-directory lock

HOLD = """
import sys, time
from ckf_dist.run import Run
Run.at(sys.argv[1]).lock_for_writing()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(tmp_path, seconds: float):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_stops_a_second_writer_naming_the_holder(tmp_path):
    import socket

    from ckf_dist.run import RunBusy, release_locks

    holder = _holder(tmp_path, 60)
    try:
        with pytest.raises(RunBusy) as e:
            Run.at(tmp_path).lock_for_writing()
        msg = str(e.value)
        assert "\n" not in msg and f"in use by pid {holder.pid} on host {socket.gethostname()}" in msg
        assert "pass --wait" in msg
        with pytest.raises(RunBusy, match="cannot read it now"):
            Run.at(tmp_path).lock_for_reading()
    finally:
        holder.kill()
        holder.wait()
    Run.at(tmp_path).lock_for_writing()  # the holder died (kill -9): the OS released its lock
    release_locks()


def test_wait_takes_the_lock_when_the_holder_ends(tmp_path):
    from ckf_dist.run import release_locks

    holder = _holder(tmp_path, 1.0)
    Run.at(tmp_path).lock_for_writing(wait=True)
    assert holder.wait() == 0
    release_locks()


def test_taking_the_lock_removes_temporaries_of_dead_writers(tmp_path):
    from ckf_dist.run import release_locks

    r = Run.at(tmp_path)
    (r.checkpoints_dir / ".step-000004.tmp-99999").mkdir(parents=True)
    (r.checkpoints_dir / ".step-000002.old-99999").mkdir()
    r.checkpoint(2).mkdir()
    (r.final_dir).mkdir()
    (r.final_dir / "trainable.safetensors.tmp").write_text("partial")
    r.lock_for_writing()
    release_locks()
    assert sorted(p.name for p in r.checkpoints_dir.iterdir()) == ["step-000002"]
    assert list(r.final_dir.iterdir()) == []


def test_latest_intact_checkpoint_skips_a_broken_newer_one(tmp_path, caplog):
    from ckf_dist.fsutil import write_manifest

    r = Run.at(tmp_path)
    for step in (2, 4, 6):
        _write(r.checkpoint(step) / "weights.bin", f"weights {step}")
        write_manifest(r.checkpoint(step))
    r.mark_latest(r.checkpoint(6))
    (r.checkpoint(6) / "weights.bin").write_text("weights")  # truncated
    (r.checkpoint(4) / "manifest.json").unlink()  # its writer died before the manifest
    with caplog.at_level("WARNING"):
        assert r.latest_intact_checkpoint() == r.checkpoint(2)
    assert f"checkpoint {r.checkpoint(6)} is not intact (weights.bin does not match its sha256" in caplog.text
    assert f"checkpoint {r.checkpoint(4)} is not intact (no manifest.json" in caplog.text
    _write(r.checkpoint(2) / "extra.pt", "planted")
    assert r.latest_intact_checkpoint() is None
