"""Fault tolerance under Ray Train: a 2-worker ZeRO-3 run (gloo, loopback) loses one worker
process to SIGKILL mid-run; Ray restarts the worker group (`dist.max_failures=1`), the recipe
resumes from the latest *registered* checkpoint, and the run finishes with its adapters exported.

Ray registers checkpoints asynchronously: every rank's report is queued in the worker and the
controller collects the queues on its health-check poll, registering a checkpoint once all ranks
reported it. A worker killed before the poll takes its queued reports with it, so the newest
checkpoints written before a kill may be lost. The test reads what Ray registered from its
checkpoint-manager snapshot (storage_path/train/checkpoint_manager_snapshot.json), freezes a worker
once a checkpoint at step >= 2 is registered and a later step is logged, kills it only if a logged
step still lies past the registered checkpoint after the freeze, and asserts the run resumed at
exactly the last registered step and ran the steps after it again with the same losses. Only processes of this test's own run are touched (descendants of the driver it
started, found by pid); Ray runs in a private temp dir (RAY_TMPDIR) so it never meets another
cluster on the machine.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from dist_testutils import ROOT, clone_run, loopback_env, prepare_run, records, tiny_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 12 steps (margin for the kill), a checkpoint every 2, one restart allowed.
BASE = tiny_run(steps=12, max_failures=1)
RUN_TIMEOUT_S = 420


def _env(tmp: Path) -> dict:
    # the controller polls workers (and registers their checkpoints) this often (default 2 s)
    return loopback_env(RAY_TMPDIR=str(tmp), TMPDIR=str(tmp), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_run(tmp_path_factory.mktemp("ft"), BASE)


def _registered_step(run: Path):
    """Step of the latest checkpoint Ray has registered (from its snapshot), or None."""
    p = run / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        snap = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):  # absent, or being replaced
        return None
    latest = snap.get("latest_checkpoint_result")
    return None if latest is None else int(latest["metrics"]["step"])


def _last_loss_step(run: Path) -> int:
    """Latest step whose training loss rank 0 has logged (after both ranks finished it), or 0."""
    return max([r["step"] for r in records(run) if "train/loss" in r], default=0)


def _train_workers(driver: psutil.Process) -> list[psutil.Process]:
    """Ray Train worker processes of *this* run: descendants of our driver whose title names them."""
    found = []
    for p in driver.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _kill_tree(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """SIGKILL, by pid, the driver we started and every process of its Ray instance still alive:
    the driver's descendants, and processes naming our private Ray temp dir (gcs, raylet,
    dashboard: re-parented if the driver died first) with their descendants."""
    family: dict[int, psutil.Process] = {}
    roots = []
    if proc.poll() is None:  # not reaped yet: the pid is still ours
        try:
            roots.append(psutil.Process(proc.pid))
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(ray_tmp) in a for a in (p.info["cmdline"] or [])):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for r in roots:
        try:
            family[r.pid] = r
            family.update({c.pid: c for c in r.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in family.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family.values()), timeout=10)


def test_killed_worker_resumes_from_registered_checkpoint(prepared, tmp_path):
    run = clone_run(prepared, tmp_path / "run")
    short_tmp = Path(tempfile.mkdtemp(prefix="ckfft-", dir="/tmp"))  # short: Ray's socket paths
    log_path = tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "ckf_dist.cli", "train", "--config", "configs/quickstart.yaml", f"run.dir={run}",
           *BASE, "dist.launcher=ray"]
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(short_tmp), stdout=log, stderr=subprocess.STDOUT)
    killed_pid, killed_at_step, registered_at_kill = None, None, None
    try:
        driver = psutil.Process(proc.pid)
        # Wait until Ray has registered a checkpoint at step >= 2 and training has logged a step past
        # it (so some steps run twice: before the kill and after the resume), then kill one worker.
        # The victim is frozen (SIGSTOP) before the decision: a frozen worker answers no poll, so
        # Ray registers no checkpoint it had not already collected; a registration already under
        # way lands within the pause. Only if a logged step still lies beyond the registered
        # checkpoint is it killed; otherwise (the registration caught up) it resumes and we wait on.
        while time.time() - t0 < RUN_TIMEOUT_S and proc.poll() is None:
            reg = _registered_step(run)
            done = _last_loss_step(run)
            if reg is not None and reg >= 2 and done > reg and done % 2 == 1:  # odd: no checkpoint at `done`
                workers = _train_workers(driver)
                assert len(workers) == 2, [w.cmdline() for w in workers]
                victim = sorted(workers, key=lambda p: p.pid)[-1]
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(1.0)
                reg, done = _registered_step(run), _last_loss_step(run)
                if reg is not None and done > reg:
                    killed_pid, killed_at_step, registered_at_kill = victim.pid, done, reg
                    os.kill(killed_pid, signal.SIGKILL)
                    break
                os.kill(victim.pid, signal.SIGCONT)
            time.sleep(0.05)
        assert killed_pid is not None, f"no checkpoint registered at step >= 2 before the run ended:\n{log_path.read_text()[-3000:]}"
        try:
            rc = proc.wait(timeout=max(10, RUN_TIMEOUT_S - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"run did not finish in {RUN_TIMEOUT_S}s after the kill:\n{log_path.read_text()[-3000:]}")
    finally:
        _kill_tree(proc, short_tmp)
        leftover_tmp = sorted(p.name for p in short_tmp.glob("ckf-step-*"))
        shutil.rmtree(short_tmp, ignore_errors=True)
    elapsed = time.time() - t0
    out = log_path.read_text()
    assert rc == 0, out[-4000:]

    recs = records(run)
    resumed = [i for i, r in enumerate(recs) if "train/resumed_from_step" in r]
    assert resumed, f"no resume was logged (killed pid {killed_pid} at step {killed_at_step}):\n{out[-3000:]}"
    first_resume = resumed[0]
    step0 = int(recs[first_resume]["train/resumed_from_step"])
    assert all(recs[i]["train/resumed_from_step"] == step0 for i in resumed)
    before = recs[:first_resume]
    after = recs[first_resume:]
    saved = sorted({r["step"] for r in before if "ckpt/save_s" in r})
    # resumed at exactly the last checkpoint Ray had registered when the worker died
    assert step0 == registered_at_kill, (step0, registered_at_kill, saved)
    assert step0 in saved and step0 >= 2, (step0, saved)
    assert step0 < 12, "the kill came after the last step"

    # training went on from the resumed step to the end, once per step
    loss_before = {r["step"]: r["train/loss"] for r in before if "train/loss" in r}
    loss_after = {r["step"]: r["train/loss"] for r in after if "train/loss" in r}
    assert sorted(loss_after) == list(range(step0 + 1, 13)), sorted(loss_after)
    assert sorted(loss_before)[:step0] == list(range(1, step0 + 1))
    # continuous loss: finite, and on the scale of the steps before the kill (no restart from
    # scratch: a re-initialised model would not resume here; the lr schedule picks up too)
    assert all(math.isfinite(v) for v in loss_after.values())
    ref = sum(loss_before[s] for s in range(1, step0 + 1)) / step0
    assert all(0.5 * ref < v < 1.5 * ref for v in loss_after.values()), (loss_before, loss_after)
    # steps run twice (after the registered checkpoint, before the kill) see the same data and
    # weights and dropout RNG again (restored per rank): exactly the same loss
    twice = sorted(set(loss_before) & set(loss_after))
    assert twice, (loss_before, loss_after)
    for s in twice:
        assert loss_after[s] == pytest.approx(loss_before[s], rel=1e-6), (s, loss_before[s], loss_after[s])
    assert not leftover_tmp, leftover_tmp  # reported checkpoints are removed locally after upload
    lr_before = {r["step"]: r["train/lr"] for r in before if "train/lr" in r}
    lr_after = {r["step"]: r["train/lr"] for r in after if "train/lr" in r}
    # the schedule resumed (scheduler state restored): steps logged twice have the same lr
    for s in set(lr_before) & set(lr_after):
        assert lr_after[s] == pytest.approx(lr_before[s], rel=1e-6), (s, lr_before[s], lr_after[s])

    # the run finished: final trainable weights and one PEFT adapter directory per task
    final = run / "train" / "final"
    assert (final / "trainable.safetensors").is_file()
    for task in ("ctr", "rating", "explanation"):
        assert (final / "peft" / task / "adapter_model.safetensors").is_file()
        assert (final / "peft" / task / "adapter_config.json").is_file()
    assert json.loads((run / "metrics.json").read_text()).keys() == {"ctr", "rating", "explanation", "protocol", "training"}
    print(f"\nfault tolerance: killed pid {killed_pid} after step {killed_at_step}, checkpoints before the kill "
          f"{saved}, resumed from step {step0}; losses before {loss_before} after {loss_after}; "
          f"temporary checkpoint folders left: {len(leftover_tmp)}; steps run twice {twice}: exact loss "
          f"{[loss_before[s] == loss_after[s] for s in twice]}; {elapsed:.0f}s")
    shutil.rmtree(run / "ray", ignore_errors=True)
