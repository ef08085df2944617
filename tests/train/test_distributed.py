"""Multi-node training on one machine, on loopback: the `deepspeed` launcher as 2 nodes of one CPU
rank each, and Ray Train with one worker on each node of a 2-node Ray cluster (STRICT_SPREAD).
Both run DeepSpeed ZeRO-3 on gloo with `stage3_param_persistence_threshold: 0` (else the tiny LoRA
tensors are never partitioned). Each run is shared by several assertions.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ckf_dist.cli import main
from dist_testutils import ROOT, clone_run, loopback_env, prepare_run, records, shard_tokens, tiny_run

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


def _listening(procs: list) -> set[tuple[str, int]]:
    """(ip, port) of the TCP listeners of these processes and their descendants."""
    import psutil

    found = set()
    for root in procs:
        try:
            tree = [psutil.Process(root.pid)] + psutil.Process(root.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in tree:
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return found


def test_deepspeed_launcher_as_two_nodes_zero3(prepared, tmp_path):
    """Two `deepspeed --no_ssh --node_rank i` launchers on one machine = a 2-node job, one rank per
    node, master on 127.0.0.1; checked before launch by `ckf cluster check-hostfile`."""
    import time

    run = clone_run(prepared, tmp_path / "ds")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    args = ["--config", "configs/quickstart.yaml", f"run.dir={run}", *BASE, "dist.launcher=deepspeed"]
    assert main(["cluster", "check-hostfile", "--hostfile", str(hostfile), *args]) == 0
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
             "--master_addr", "127.0.0.1", "--master_port", str(port), "--module", "ckf_dist.train", *args],
            cwd=ROOT, env=loopback_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)
    ]
    listening: set = set()
    deadline = time.time() + 400
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        listening |= _listening(procs)
        time.sleep(0.5)
    outs = []
    for p in procs:
        if p.poll() is None:
            p.kill()
        outs.append(p.communicate()[0])
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    _check_zero3_run(run)
    # every rank wrote its ZeRO shard into the checkpoint, and the ranks ran as two nodes
    ckpt = run / "train" / "checkpoints" / "step-000004" / "engine"
    assert len(list(ckpt.glob("*optim_states.pt"))) == 2
    ranks = json.loads((run / "train" / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and len({r["node"] for r in ranks}) == 2, ranks
    # TensorBoard's token counts are the non-pad tokens of exactly the samples the ranks took from
    # the shards, and its tokens/s is that count over the logged window
    recs = [r for r in records(run) if "perf/tokens" in r]
    assert sum(r["perf/tokens"] for r in recs) == shard_tokens(run, [*BASE, "dist.launcher=deepspeed"], 2, 4)
    assert recs[-1]["perf/tokens_total"] == sum(r["perf/tokens"] for r in recs)
    for r in recs:
        assert r["perf/tokens_per_s"] == pytest.approx(r["perf/tokens"] / r["perf/window_s"], rel=1e-9)
    # the rendezvous store (on the master port) and gloo listen on 127.0.0.1 only
    assert ("127.0.0.1", port) in listening, sorted(listening)
    wide = sorted(s for s in listening if s[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1"))
    assert not wide, wide


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A Ray cluster of two nodes (1 CPU each) on 127.0.0.1, in processes of its own (shared by the
    runs of this module, one after the other)."""
    from ray.cluster_utils import Cluster

    temp_dir = tmp_path_factory.mktemp("ray2", numbered=True)
    short = Path("/tmp") / f"ckfray2-{os.getpid()}-{temp_dir.name[-6:]}"  # Ray's socket paths must be short
    short.mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, connect=False, shutdown_at_exit=True,
                      head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": str(short),
                                      "include_dashboard": False, "dashboard_host": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=str(short))
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)


MODES = {"ckf": [], "binllm": ["model.mapping=binllm"], "cora": ["model.mapping=cora"], "allmrec": ["model.mapping=allmrec"],
         "sasrec": ["cf.model=sasrec", "cf.baselines=[mf,sasrec]"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_ray_train_two_nodes_strict_spread_zero3(prepared, tmp_path, two_node_cluster, mode):
    """`ckf train` joins a 2-node cluster; STRICT_SPREAD puts one worker on each node; both train,
    checkpoint and the run is evaluated. Every baseline mode and a sequential backbone run the same
    way (their first stage in the driver, then ZeRO-3 on the workers)."""
    backbone = mode == "sasrec"
    run = clone_run(prepared, tmp_path / "ray", share=("data", "llm") if backbone else ("data", "cf", "llm"))
    # a run.dir relative to the working directory, as users write it: Ray workers run elsewhere
    rel = os.path.relpath(run, ROOT)
    cmd = [sys.executable, "-m", "ckf_dist.cli", "train", "--config", "configs/quickstart.yaml", f"run.dir={rel}",
           *BASE, *MODES[mode], "dist.launcher=ray", f"dist.ray_address={two_node_cluster.address}",
           "dist.placement_strategy=STRICT_SPREAD"]
    proc = subprocess.run(cmd, cwd=ROOT, env=loopback_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in proc.stdout + proc.stderr
    _check_zero3_run(run)
    ranks = json.loads((run / "train" / "ranks.json").read_text())
    nodes = {n.node_id for n in [two_node_cluster.head_node, *two_node_cluster.worker_nodes]}
    assert [r["rank"] for r in ranks] == [0, 1] and {r["node"] for r in ranks} == nodes, (ranks, nodes)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"ctr", "rating", "explanation", "protocol", "training"}
    assert (run / "mode" / f"{mode}.safetensors").is_file() == (mode in ("binllm", "allmrec"))
    # Ray registered the checkpoints (merged rank shards) in its storage
    stored = [p for p in (run / "ray").rglob("*optim_states.pt")]
    assert len(stored) >= 2
    shutil.rmtree(run / "ray", ignore_errors=True)
