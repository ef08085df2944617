"""Smoke tests of `ckf bench e2e`: the quick local comparison on a tiny config (Ray skipped), and
the GPU path's code on a tiny LLaMA shape on the CPU, importable without ray/deepspeed/webdataset.

These check that the benchmark runs and reports its fields; they time nothing against a target
(the targets are benchmarks, recorded in BENCHMARKS.md).
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "data.synthetic.num_users=40", "data.synthetic.num_items=30", "data.samples_per_user=1",
    "data.topk_candidates=3", "data.history_len=3",
    "cf.epochs=3", "cf.dim=8",
    "tiny.pretrain_steps=2", "tiny.hidden_size=32", "tiny.intermediate_size=64", "tiny.num_layers=1",
    "tiny.num_heads=2", "tiny.vocab_size=600",
    "model.max_length=256", "model.meta_hidden=8", "lora.shared.r=2", "lora.task.r=2",
    "train.micro_batch_size=4",
]


@pytest.mark.slow
def test_quick_local_comparison_reports_positive_rates_and_ratios(tmp_path):
    from ckf_dist.bench.e2e import run_e2e_bench

    out = tmp_path / "bench"
    res = run_e2e_bench("configs/quickstart.yaml", "cpu", quick=True, out_dir=out, overrides=TINY,
                        workers=[], data_batches=8)
    rows = {r["row"]: r for r in res["rows"]}
    assert {"ckf_local", "ckf_local_no_twin", "hf_peft_per_task", "data_pipeline_loader1", "data_pipeline_loader0"} <= set(rows)
    assert not any(name.startswith("ckf_ray") for name in rows)  # workers=[] skips Ray
    for name in ("ckf_local", "ckf_local_no_twin", "hf_peft_per_task"):
        r = rows[name]
        for k in ("tokens_per_s", "samples_per_s", "ratio_tokens_vs_baseline", "ratio_samples_vs_baseline", "step_s"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (name, k, r[k])
        assert r["includes"]
    assert rows["hf_peft_per_task"]["ratio_tokens_vs_baseline"] == 1.0
    assert 0 <= rows["ckf_local"]["data_wait_frac"] < 1
    for name in ("data_pipeline_loader1", "data_pipeline_loader0"):
        assert rows[name]["tokens_per_s"] > 0 and rows[name]["samples_per_s"] > 0
    s = res["summary"]
    for k in ("ratio_tokens_ckf_vs_peft", "ratio_samples_ckf_vs_peft", "data_supply_vs_consumption",
              "pad_efficiency_ckf_batches", "pad_efficiency_peft_batches"):
        assert s[k] > 0, k
    assert s["ratio_tokens_ckf_vs_peft"] == rows["ckf_local"]["ratio_tokens_vs_baseline"]
    assert set(s["peft_steps_per_task"]) == {"ctr", "topk", "rating", "review_rating", "explanation"}
    assert sum(s["peft_steps_per_task"].values()) == 12  # the quick mode's train.steps
    # CSV + JSON written, same rows
    with open(out / "e2e_cpu_quick.csv") as f:
        assert [r["row"] for r in csv.DictReader(f)] == [r["row"] for r in res["rows"]]
    blob = json.loads((out / "e2e_cpu_quick.json").read_text())
    assert blob["meta"]["device"] == "cpu" and blob["meta"]["date"] and blob["summary"]["ratio_tokens_ckf_vs_peft"] > 0


def test_steps_per_task_follows_the_stream_mix():
    from ckf_dist.bench.e2e_peft import steps_per_task

    plan = steps_per_task({"ctr": 400, "topk": 100, "rating": 0}, {"ctr": 1.0, "topk": 1.0, "rating": 1.0}, 10)
    assert plan == {"ctr": 8, "topk": 2}
    assert sum(steps_per_task({"a": 3, "b": 3, "c": 1}, {"a": 1.0, "b": 0.5, "c": 1.0}, 7).values()) == 7
    assert steps_per_task({"a": 1000, "b": 1}, {"a": 1.0, "b": 1.0}, 5) == {"a": 4, "b": 1}


def test_bench_options_are_split_from_config_overrides():
    from ckf_dist.bench.e2e_options import E2EOptions, split_bench_overrides
    from ckf_dist.config import ConfigError

    cfg, opts = split_bench_overrides(["train.steps=3", "bench.workers=[]", "bench.repeats=2"])
    assert cfg == ["train.steps=3"] and opts == E2EOptions(workers=[], repeats=2)
    assert opts.get("repeats", 5) == 2 and opts.get("data_batches", 40) == 40
    assert split_bench_overrides(["bench.workers=2"])[1].workers == [2]
    assert split_bench_overrides(["bench.diagnose=false"])[1].diagnose is False
    with pytest.raises(ConfigError):
        split_bench_overrides(["bench.nope=1"])
    with pytest.raises(ConfigError):
        split_bench_overrides(["bench.workers=[0]"])
    with pytest.raises(ConfigError, match="bench.steps"):
        split_bench_overrides(["bench.steps=0"])
    with pytest.raises(ConfigError, match="bench.diagnose"):
        split_bench_overrides(["bench.diagnose=3"])


def test_gpu_path_runs_on_a_tiny_shape_without_ray_deepspeed_webdataset():
    """The --device cuda code path (7B shape on a GPU) exercised on a tiny LLaMA shape on the CPU,
    in a subprocess where importing ray, deepspeed or webdataset fails."""
    code = """
import sys
for name in ("ray", "deepspeed", "webdataset"):
    sys.modules[name] = None  # any import of them raises ImportError
import torch
from ckf_dist.bench.e2e_gpu import measure_llm_shape
shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
             intermediate_size=64, vocab_size=300)
r = measure_llm_shape("cpu", shape, seq_len=48, micro_batch=2, steps=2, warmup=1, dtype=torch.float32,
                      target_len=8, overrides=["lora.shared.r=2", "lora.task.r=2", "kernels.backend=torch"])
assert r["tokens_per_s"] > 0 and r["flops_per_token_lora"] < r["flops_per_token_6n"], r
assert r["mfu"] is None and r["backend"] == "torch" and r["trainable_params"] > 0, r
assert not any(m.split(".")[0] in ("ray", "deepspeed", "webdataset") for m, v in sys.modules.items() if v is not None)
print("ok", round(r["tokens_per_s"]))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout
