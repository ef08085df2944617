"""Distributed training on loopback: the `deepspeed` launcher with 2 CPU ranks and Ray Train with
2 workers, both DeepSpeed ZeRO-3 on gloo with `stage3_param_persistence_threshold: 0` (else the
tiny LoRA tensors are never partitioned). Each run is shared by several assertions.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dist_testutils import ROOT, clone_run, loopback_env, prepare_run, records, tiny_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = tiny_run(steps=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_run(tmp_path_factory.mktemp("dist"), BASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_zero3_run(run: Path) -> None:
    recs = records(run)
    setup = next(r for r in recs if "model/trainable_params" in r)
    assert setup["dist/world_size"] == 2
    # ZeRO-3 with threshold 0: outside the gather window every trainable tensor is empty on the
    # rank (numel 0), which keeps only its partition of them
    assert setup["model/trainable_params_resident_rank0"] == 0
    assert 0 < setup["model/trainable_params_partition_rank0"] < setup["model/trainable_params"]
    losses = {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v and v < 20 for v in losses.values())
    assert all(r["perf/tokens_per_s"] > 0 for r in recs if "perf/tokens_per_s" in r)
    # the exported weights were gathered from the partitions: full shapes, not (0,)
    from safetensors.torch import load_file

    final = load_file(str(run / "train" / "final" / "trainable.safetensors"))
    assert final and all(t.numel() > 0 for t in final.values())
    assert sum(t.numel() for t in final.values()) == setup["model/trainable_params"]


def test_deepspeed_launcher_two_ranks_zero3(prepared, tmp_path):
    run = clone_run(prepared, tmp_path / "ds")
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", "2", "--num_gpus", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "--module", "ckf_dist.train", "--config", "configs/quickstart.yaml", f"run.dir={run}", *BASE, "dist.launcher=deepspeed",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=loopback_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_zero3_run(run)
    # every rank wrote its ZeRO shard into the checkpoint
    ckpt = run / "train" / "checkpoints" / "step-000004" / "engine"
    assert len(list(ckpt.glob("*optim_states.pt"))) == 2


def test_ray_train_two_workers_zero3(prepared, tmp_path):
    run = clone_run(prepared, tmp_path / "ray")
    # a run.dir relative to the working directory, as users write it: Ray workers run elsewhere
    rel = os.path.relpath(run, ROOT)
    cmd = [sys.executable, "-m", "ckf_dist.cli", "train", "--config", "configs/quickstart.yaml", f"run.dir={rel}",
           *BASE, "dist.launcher=ray"]
    proc = subprocess.run(cmd, cwd=ROOT, env=loopback_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_zero3_run(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"ctr", "rating", "explanation"}
    # Ray registered the checkpoints (merged rank shards) in its storage
    stored = [p for p in (run / "ray").rglob("*optim_states.pt")]
    assert len(stored) >= 2
    shutil.rmtree(run / "ray", ignore_errors=True)
