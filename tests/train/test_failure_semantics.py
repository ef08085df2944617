"""What a finished or interrupted run does with bad state, end to end on a small synthetic run:
a second writer, stale stages, edited final weights, a CF table of another split, broken and
poisoned checkpoints, and a NaN stop (README "Failure semantics")."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ckf_dist.cli import main
from ckf_dist.config import load_config
from dist_testutils import clone_run
from test_recipe import QUICK

pytestmark = pytest.mark.integration


def _args(run_dir, *extra):
    return ["--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("failures")
    assert main(["train", *_args(d)]) == 0
    return d


def _copy(run, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(run, d, ignore=shutil.ignore_patterns(".lock"))
    return d


def _error(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def _recipe(run_dir, *extra):
    from ckf_dist.train.recipe import CKFRecipe

    return CKFRecipe(load_config("configs/quickstart.yaml", [f"run.dir={run_dir}", *QUICK, *extra]))


def test_second_writer_stops_and_leaves_the_run_as_it_was(run, tmp_path, capsys):
    d = _copy(run, tmp_path, "busy")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    code = "import sys, time; from ckf_dist.run import Run; Run.at(sys.argv[1]).lock_for_writing(); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *_args(d, "train.lr=5e-3")]) == 2
        assert f"in use by pid {holder.pid}" in _error(capsys)
        assert main(["eval", "--run", str(d)]) == 2  # eval writes metrics: a writer too
        assert "cannot write it now" in _error(capsys)
        assert main(["recommend", "--run", str(d), "--user", "u1"]) == 2  # a reader waits for no writer
        assert "cannot read it now" in _error(capsys)
    finally:
        holder.kill()
        holder.wait()
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # not a byte changed: config.yaml, checkpoints, metrics


def test_stale_stage_stops_eval_naming_what_changed(run, tmp_path, capsys):
    d = _copy(run, tmp_path, "stale")
    metrics = (d / "metrics.json").read_text()
    assert main(["data", "prepare", *_args(d, "seed=1")]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(d)]) == 2
    assert "cf/ was built for another configuration (seed: 0 -> 1)" in _error(capsys)
    assert main(["recommend", "--run", str(d), "--user", "u1"]) == 2
    assert "seed: 0 -> 1" in _error(capsys)
    assert (d / "metrics.json").read_text() == metrics
    # `ckf train` with the run's config rebuilds what is stale: the data again (the same bytes),
    # so the CF tables, the LLM and the training built from them stay valid
    assert main(["train", *_args(d)]) == 0
    records = {s: json.loads((d / s / "stage.json").read_text()) for s in ("data", "cf", "train")}
    assert records["cf"]["inputs"]["data"] == records["data"]["output"]
    assert records["train"]["inputs"]["cf"] == records["cf"]["output"]
    assert main(["eval", "--run", str(d)]) == 0


def test_edited_final_weights_are_an_error_not_other_metrics(run, tmp_path, capsys):
    d = _copy(run, tmp_path, "edited")
    p = d / "train" / "final" / "trainable.safetensors"
    raw = bytearray(p.read_bytes())
    raw[-64] ^= 0x01  # one bit of one weight
    p.write_bytes(bytes(raw))
    metrics = (d / "metrics.json").read_text()
    assert main(["eval", "--run", str(d)]) == 2
    assert _error(capsys) == (f"error: {d / 'train' / 'final'}: trainable.safetensors does not match its sha256 in the "
                              "manifest (changed or truncated); retrain (`ckf train --force`) or restore the folder")
    assert (d / "metrics.json").read_text() == metrics


def test_cf_table_of_another_split_is_refused_where_vectors_are_looked_up(run, tmp_path, capsys):
    from ckf_dist.cf.tables import load_cf_tables

    d = _copy(run, tmp_path, "ids")
    t = load_cf_tables(d / "cf" / "mf.safetensors")
    order = list(range(t.num_items))[::-1]  # the same items in another row order
    t.item_emb, t.item_ids = t.item_emb[order], [t.item_ids[k] for k in order]
    if t.item_bias is not None:
        t.item_bias = t.item_bias[order]
    t.save(d / "cf" / "mf.safetensors")
    assert main(["eval", "--run", str(d)]) == 2
    assert f"{d / 'cf' / 'mf.safetensors'}: item row 0 is {t.item_ids[0]!r}" in _error(capsys)
    with pytest.raises(Exception, match=r"cf: .*mf.safetensors: item row 0 is"):
        _recipe(d).setup()


def _trained_checkpoints(run, tmp_path, name):
    d = tmp_path / name
    clone_run(run, d)
    r = _recipe(d, "train.save_every=2")
    r.setup()
    r.train()
    r.cleanup()
    ckpts = sorted((d / "train" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000002", "step-000004"]
    return d, ckpts


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(run, tmp_path, caplog):
    d, (two, four) = _trained_checkpoints(run, tmp_path, "truncated")
    with open(four / "trainable.safetensors", "r+b") as f:
        f.truncate(1000)
    r = _recipe(d, "train.save_every=2")
    with caplog.at_level("WARNING"):
        assert r.latest_checkpoint() == two
    assert f"checkpoint {four} is not intact (trainable.safetensors does not match its sha256" in caplog.text
    r.setup(resume_from=two)
    assert r.step == 2
    r.train()
    r.cleanup()
    with pytest.raises(Exception, match=r"step-000004 is not intact"):
        _recipe(d).setup(resume_from=tmp_path / "missing" / "step-000004")


class Planted:
    """A pickle whose loading creates a file: what a poisoned checkpoint would run instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_poisoned_checkpoint_never_runs_its_code(run, tmp_path, caplog):
    from ckf_dist.fsutil import write_manifest
    from ckf_dist.train.recipe import TrainingError

    d, (two, four) = _trained_checkpoints(run, tmp_path, "poisoned")
    sentinel = tmp_path / "code-ran"
    torch.save({"optimizer": Planted(sentinel)}, four / "optimizer.pt")
    # the manifest this run wrote does not match: the checkpoint is skipped, nothing unpickled
    with caplog.at_level("WARNING"):
        assert _recipe(d).latest_checkpoint() == two
    assert f"checkpoint {four} is not intact (optimizer.pt does not match" in caplog.text
    # a manifest rewritten to match (whoever can write the checkpoint can write it): loaded weights-only
    write_manifest(four)
    r = _recipe(d)
    assert r.latest_checkpoint() == four
    with pytest.raises(TrainingError, match=r"step-000004: cannot be loaded \(UnpicklingError"):
        r.setup(resume_from=four)
    assert not sentinel.exists()


def test_nan_stop_names_a_finite_last_good_checkpoint(run, tmp_path):
    from ckf_dist.train.recipe import TrainingError

    d = tmp_path / "nan"
    clone_run(run, d)
    r = _recipe(d, "train.lr=1e6", "train.save_every=1", "train.steps=20")
    r.setup()
    with pytest.raises(TrainingError) as e:
        r.train()
    r.cleanup()
    msg = str(e.value)
    assert "non-finite" in msg and "\n" not in msg
    named = msg.rsplit("last good checkpoint: ", 1)[1]
    assert named != "None" and os.path.isdir(named)
    ckpts = sorted((d / "train" / "checkpoints").glob("step-*"))
    assert str(ckpts[-1]) == named  # nothing saved after the last good one
    weights = load_file(os.path.join(named, "trainable.safetensors"))
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values())
    state = json.loads(open(os.path.join(named, "state.json")).read())
    assert state["step"] < 20 and not (d / "train" / "final").exists()
    assert all(math.isfinite(json.loads(x).get("train/loss", 0.0)) for x in (d / "train" / "tb" / "metrics.jsonl").read_text().splitlines())


def test_ray_temporary_checkpoint_folders_of_dead_workers_are_removed(tmp_path, monkeypatch):
    """A Ray worker killed between saving into its temporary folder and the upload leaves the
    folder behind: the next save on that node removes the folders of processes that are gone."""
    import tempfile

    from ckf_dist.run import Run
    from ckf_dist.train.checkpoints import ReportedCheckpoints

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"ckf-step-000004-pid{dead.pid}-abcd").mkdir()
    mine = tmp_path / f"ckf-step-000002-pid{os.getpid()}-efgh"
    mine.mkdir()
    new = ReportedCheckpoints(lambda metrics, folder: None).folder(Run.at(tmp_path / "run"), 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, new.name])
    assert new.name.startswith(f"ckf-step-000006-pid{os.getpid()}-")
