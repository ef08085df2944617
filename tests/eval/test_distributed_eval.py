"""`ckf eval --workers N`: Ray Data batch inference gives exactly the single-process metrics."""

import json
import os

import pytest

from ckf_dist.cli import main
from ckf_dist.eval.distributed import evaluate_run_distributed
from ckf_dist.eval.serve import evaluate_run
from ckf_dist.run import Run

pytestmark = pytest.mark.integration


def same_metrics(a, b) -> bool:
    """Equal structure, counts and Nones; floats equal to 1e-6 relative (a worker process may sum
    in another order than the driver when torch's thread counts differ: expected ratings can differ
    in the 8th digit)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_metrics(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9)
    return a == b and type(a) is type(b)

SMALL = [
    "data.synthetic.num_users=40", "data.synthetic.num_items=40", "data.samples_per_user=1", "data.test_per_user=4",
    "data.topk_candidates=4", "data.history_len=4",
    "cf.epochs=3", "cf.weight_decays=[0.0001]", "cf.baselines=[mf]",
    "tiny.pretrain_steps=4", "tiny.hidden_size=64", "tiny.intermediate_size=128", "tiny.num_layers=1", "tiny.vocab_size=800",
    "model.max_length=320", "model.meta_hidden=16", "cf.dim=8", "lora.shared.r=4", "lora.task.r=4",
    "train.steps=3", "train.micro_batch_size=4", "train.save_every=3", "loader.workers=0",
    # every test row, in batches of 5 (rows of one user across batches: UAUC must group them again)
    "eval.max_samples_per_task=0", "eval.batch_size=5", "eval.max_new_tokens=6",
    "dist.launcher=local", "dist.num_workers=1", "dist.cpus_per_worker=1",
]


def test_workers_give_the_single_process_metrics_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    run_dir = tmp_path / "run"
    assert main(["train", "--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *SMALL]) == 0
    run = Run.open(run_dir)
    single = evaluate_run(run, "test")
    single_rows = [json.loads(line) for line in run.predictions_file("test").read_text().splitlines()]
    assert len(single_rows) == sum(single[t]["n"] for t in single)
    assert set(single) == {"ctr", "topk", "rating", "review_rating", "explanation"}
    assert single["ctr"]["n"] > 10 and single["ctr"]["uauc_users"] > 0
    import ray

    from ckf_dist.train.launch import init_ray

    started = init_ray(run.cfg)
    try:
        for workers in (1, 2):
            got = evaluate_run_distributed(run, "test", workers)
            assert same_metrics(got, single), (workers, got, single)
            # the same rows in the same order, each with the same prediction
            rows = [json.loads(line) for line in run.predictions_file("test").read_text().splitlines()]
            assert [(r["task"], r["key"]) for r in rows] == [(r["task"], r["key"]) for r in single_rows]
            for r, s in zip(rows, single_rows):
                if isinstance(s.get("prediction"), float):
                    assert r["prediction"] == pytest.approx(s["prediction"], rel=1e-5, abs=1e-6), (r, s)
    finally:
        if started:
            ray.shutdown()
    # and from the command line, written where `ckf eval` writes
    assert main(["eval", "--run", str(run_dir), "--workers", "2"]) == 0
    assert same_metrics(json.loads(run.metrics_file("test").read_text()), json.loads(json.dumps(single)))
    assert main(["eval", "--run", str(run_dir), "--workers", "-1"]) == 2
