"""`ray job submit` against a local Ray head on loopback.

One head per module (`ray start --head` on 127.0.0.1, dashboard on 127.0.0.1, explicit free ports
for every singleton service, a private --temp-dir, token authentication with a token made here:
nothing in ~/.ray is read or written). Two jobs:

- a short job, `ckf data prepare ... data.engine=ray`, shipped with `--working-dir` (the config
  path is relative to the uploaded working directory): the job's driver joins the head's cluster,
  runs the preparation as Ray tasks there, and writes the manifest and shards the local engine
  writes for the same config;
- a tiny training job through `cluster/ray_job_submit.sh` (Ray Train, 2 workers, ZeRO-3): the
  job's driver joins the head's cluster (it must not start a nested local one), the run finishes
  and exports its adapters.

While jobs run, every listening socket of the head's process tree (GCS, raylet, dashboard,
agents, job driver, Ray Train workers with torch's rendezvous store) is sampled: all must be
bound to 127.0.0.1. The head is stopped in a finalizer by the pids of its own processes (found by
its private temp dir), never with `ray stop`, which would stop every Ray on the machine.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from dist_testutils import ROOT, tiny_run

from ckf_dist.bench.poller import Poller

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
TRAIN = tiny_run(steps=4)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Head:
    """A Ray head started here; `pids()` are its processes and their descendants."""

    def __init__(self, temp_dir: Path, env: dict, gcs_port: int, dashboard_port: int):
        self.temp_dir, self.env = temp_dir, env
        self.gcs = f"127.0.0.1:{gcs_port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"

    def roots(self) -> list[psutil.Process]:
        """Processes whose command line names our private temp dir (gcs, raylet, dashboard, monitors)."""
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.temp_dir) in a for a in (p.info["cmdline"] or [])):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def processes(self) -> list[psutil.Process]:
        procs = {}
        for r in self.roots():
            procs[r.pid] = r
            try:
                for c in r.children(recursive=True):
                    procs[c.pid] = c
            except psutil.NoSuchProcess:
                pass
        return list(procs.values())

    def listening(self) -> set[tuple[int, str, str, int]]:
        """(pid, process title, ip, port) of every listening TCP / bound UDP socket of the head's tree."""
        found = set()
        for p in self.processes():
            try:
                for c in p.net_connections(kind="inet"):
                    if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM):
                        found.add((p.pid, p.name(), c.laddr.ip, c.laddr.port))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)


class SocketWatch(Poller):
    """Samples the head's listening sockets every `every` seconds in a thread, and once at exit."""

    def __init__(self, head: Head, every: float = 0.5):
        super().__init__(every)
        self.head = head
        self.seen: set[tuple[int, str, str, int]] = set()

    def sample(self) -> bool:
        self.seen |= self.head.listening()
        return True

    def finish(self) -> None:
        self.seen |= self.head.listening()


@pytest.fixture(scope="module")
def head():
    temp_dir = Path(tempfile.mkdtemp(prefix="ckfhead-", dir="/tmp"))  # short: Ray's socket paths
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_manager, obj_manager = _free_ports(9)
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
        # `python` in a job's entrypoint resolves on the head's PATH: this venv's interpreter
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", RAY_TMPDIR=str(temp_dir), TMPDIR=str(temp_dir),
    )
    env.pop("RAY_ADDRESS", None)
    h = Head(temp_dir, env, gcs, dash)
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={obj_manager}", "--disable-usage-stats",
    ]
    try:
        t0 = time.time()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        h.start_s = time.time() - t0
        yield h
    finally:
        h.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not h.roots(), "the head's processes outlived the finalizer"


def _submit(head: Head, args: list[str], timeout: int, cwd: Path = ROOT, script: bool = False) -> subprocess.CompletedProcess:
    env = dict(head.env)
    env["RAY_ADDRESS"] = head.dashboard
    if script:
        cmd = ["bash", str(ROOT / "cluster" / "ray_job_submit.sh"), *args]
    else:
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT), "--", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_loopback(seen: set) -> None:
    assert seen, "no listening socket was observed"
    wide = sorted(s for s in seen if s[2] not in LOOPBACK)
    assert not wide, f"sockets bound beyond loopback: {wide}"


def test_short_job_prepares_shards(head, tmp_path):
    from ckf_dist.config import load_config
    from ckf_dist.pipeline import prepare_data
    from ckf_dist.run import Run

    run = tmp_path / "run"
    data = ["data.synthetic.num_users=1200", "data.synthetic.num_items=40", "data.samples_per_user=1", "data.block_mb=0.05"]
    t0 = time.time()
    with SocketWatch(head) as watch:
        proc = _submit(head, [
            "python", "-m", "ckf_dist.cli", "data", "prepare", "--config", "configs/quickstart.yaml", f"run.dir={run}",
            *data, "data.engine=ray",
        ], timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out, out[-3000:]
    # the job's driver joined this cluster and ran the tasks there (it must not start a nested Ray)
    assert f"Connecting to existing Ray cluster at address: {head.gcs}" in out, out[-5000:]
    assert "Started a local Ray instance" not in out
    manifest = json.loads((run / "data" / "shards" / "manifest.json").read_text())
    local = tmp_path / "local"
    prepare_data(Run(load_config("configs/quickstart.yaml", [f"run.dir={local}", *data, "data.engine=local"])))
    assert json.loads((local / "data" / "shards" / "manifest.json").read_text()) == manifest
    for s in manifest["splits"]["train"]["shards"]:
        assert (run / "data" / "shards" / s["path"]).read_bytes() == (local / "data" / "shards" / s["path"]).read_bytes()
    for split in ("train", "valid", "test"):
        shards = manifest["splits"][split]["shards"]
        assert shards and len(shards) % 4 == 0  # data.shard_multiple
        assert all((run / "data" / "shards" / s["path"]).is_file() for s in shards)
        assert sum(s["samples"] for s in shards) == manifest["splits"][split]["samples"] > 0
    assert set(manifest["splits"]["train"]["tasks"]) == {"ctr", "topk", "rating", "review_rating", "explanation"}
    _assert_loopback(watch.seen)
    names = {n for _, n, _, _ in watch.seen}
    assert {"gcs_server", "raylet"} <= names, names
    print(f"\nray start: {head.start_s:.0f}s; short job: {time.time() - t0:.0f}s; listening: {sorted(watch.seen)}")


@pytest.fixture(scope="module")
def training_job(head, tmp_path_factory):
    """A tiny training job submitted through cluster/ray_job_submit.sh, run once for several tests."""
    run = tmp_path_factory.mktemp("jobtrain") / "run"
    t0 = time.time()
    with SocketWatch(head) as watch:
        proc = _submit(head, ["configs/quickstart.yaml", f"run.dir={run}", *TRAIN], timeout=420, script=True)
    yield {"proc": proc, "out": proc.stdout + proc.stderr, "seen": watch.seen, "run": run, "seconds": time.time() - t0}
    shutil.rmtree(run / "ray", ignore_errors=True)


def _train_worker_pids(seen: set) -> set[int]:
    """Processes seen titled as a Ray Train worker at some sample (the title follows the running
    method, e.g. `ray::RayTrainWorker.run_train_fn`, `ray::execute._propagate_data_context`)."""
    return {pid for pid, name, _, _ in seen if "RayTrainWor" in name}


def test_training_job_via_script_joins_the_head(head, training_job):
    out, run = training_job["out"], training_job["run"]
    assert training_job["proc"].returncode == 0, out[-5000:]
    assert "succeeded" in out, out[-3000:]
    # the job's driver joined this cluster instead of starting a nested local one
    assert f"Connecting to existing Ray cluster at address: {head.gcs}" in out, out[-5000:]
    assert "Started a local Ray instance" not in out
    assert "RayTrainWorker" in out
    final = run / "train" / "final"
    assert (final / "trainable.safetensors").is_file()
    for task in ("ctr", "rating", "explanation"):
        assert (final / "peft" / task / "adapter_model.safetensors").is_file()
    assert json.loads((run / "metrics.json").read_text()).keys() == {"ctr", "rating", "explanation", "protocol", "training"}
    seen = training_job["seen"]
    workers = _train_worker_pids(seen)
    assert len(workers) >= 2, sorted(seen)  # the workers were sampled
    # Ray's own services, the job driver, the Train workers' rendezvous store and gloo sockets:
    # loopback only
    _assert_loopback(seen)
    print(f"\ntraining job: {training_job['seconds']:.0f}s; listening: {sorted(seen)}")


def test_training_job_workers_listen_on_loopback_only(training_job):
    assert training_job["proc"].returncode == 0
    workers = _train_worker_pids(training_job["seen"])
    _assert_loopback({s for s in training_job["seen"] if s[0] in workers})
