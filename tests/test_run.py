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


def test_fresh_stage_is_skipped(tmp_path):
    r = Run(load_config(None, [f"run.dir={tmp_path}"]))
    calls = []
    stage = r.cf_stage()
    assert stage.run(lambda folder: calls.append(folder) or {"n": 1}) == {"n": 1}
    assert stage.fresh() and stage.run(lambda folder: calls.append(folder) or {"n": 2}) == {"n": 1}
    assert len(calls) == 1
    assert stage.run(lambda folder: calls.append(folder) or {"n": 3}, force=True) == {"n": 3}
