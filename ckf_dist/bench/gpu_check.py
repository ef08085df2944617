"""``make gpu-check OUT=folder``: everything a lent GPU machine should run, in one command.

Steps, in order, each a subprocess with its own time limit inside one overall budget:

  environment         torch (a CUDA build), the device, Triton usable on CUDA
  pytest-gpu          ``pytest -m gpu`` with compiled Triton (``CKF_TEST_TRITON=compiled``)
  pytest-interpreter  the kernel tests on CPU tensors in the Triton interpreter, CUDA present
  bench-kernels       ``ckf bench kernels --device cuda``
  bench-e2e           ``ckf bench e2e --device cuda --quick``

Every step writes ``<step>.log`` (its output) and ``<step>.json`` (status, seconds, command, its
numbers) into the folder; the run ends with ``summary.md`` (one table) and ``summary.json``. The
first step that fails (non-zero exit, timeout, a gpu test skipped or none run) stops the run:
later steps are marked "not run", the summary is still written, and the command exits 1 with
one line naming the step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ckf_dist.bench.common import utc_date
from ckf_dist.fsutil import atomic_write_text

DEFAULT_BUDGET_S = 450
"""All steps together; with the install, `make gpu-check` is meant to fit in 8 minutes."""


class StepFailed(RuntimeError):
    """A step of the check failed; the message names it."""


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    numbers: Optional[Callable[[Path], dict[str, Any]]] = None
    """Reads the step's results from the output folder after it exited 0; raises StepFailed when
    they show a failure the exit code does not."""
    cwd: Optional[Path] = None


# ------------------------------------------------------------------------------------------------
# Reading results
# ------------------------------------------------------------------------------------------------


def junit_counts(path: Path) -> dict[str, Any]:
    """tests / passed / failed / skipped of a pytest ``--junitxml`` file, with the skipped test ids."""
    root = ET.parse(path).getroot()
    counts = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "skipped_tests": []}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            counts["skipped_tests"].append(name)
        else:
            counts["passed"] += 1
    return counts


def pytest_numbers(xml_name: str, allow_skips: bool) -> Callable[[Path], dict[str, Any]]:
    def read(out: Path) -> dict[str, Any]:
        c = junit_counts(out / xml_name)
        if c["passed"] == 0:
            raise StepFailed(f"no test passed ({c['tests']} collected, {c['skipped']} skipped)")
        if c["skipped"] and not allow_skips:
            raise StepFailed(f"{c['skipped']} test(s) skipped on a GPU machine: {', '.join(c['skipped_tests'][:5])}")
        return c
    return read


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def kernel_numbers(out: Path) -> dict[str, Any]:
    """Triton's speedups over the grid of ``bench_kernels/kernels_cuda.json``."""
    blob = json.loads((out / "bench_kernels" / "kernels_cuda.json").read_text())
    rows = [r for r in blob["rows"] if r.get("impl") == "triton"]
    lora = [r for r in rows if r["op"] == "multi_lora"]
    meta = [r for r in rows if r["op"] == "meta_proj"]
    if not lora or not meta:
        raise StepFailed("kernels_cuda.json has no triton rows for multi_lora and meta_proj")
    return {
        "device_name": blob["meta"]["device_name"],
        "multi_lora_triton_vs_peft_loop": _stats([r["speedup_vs_baseline"] for r in lora]),
        "multi_lora_triton_vs_best_unfused": _stats([r["speedup_vs_best_unfused"] for r in lora]),
        "multi_lora_overhead_vs_base_pct": _stats([r["overhead_vs_base_pct"] for r in lora]),
        "meta_proj_triton_vs_materialize": _stats([r["speedup_vs_baseline"] for r in meta]),
        "shapes": len(lora) + len(meta),
    }


def e2e_numbers(out: Path) -> dict[str, Any]:
    """The 7B-shape step of ``bench_e2e/e2e_cuda_quick.json``."""
    blob = json.loads((out / "bench_e2e" / "e2e_cuda_quick.json").read_text())
    row, s = blob["rows"][0], blob["summary"]
    return {"tokens_per_s_per_gpu": s["tokens_per_s_per_gpu"], "target_tokens_per_s": s["target_tokens_per_s"],
            "target_met": s["target_met"], "mfu": s["mfu"], "mfu_6n": s["mfu_6n"], "micro_batch": row["micro_batch"],
            "seq_len": row["seq_len"], "peak_mem_gib": row["peak_mem_gib"], "backend": row["backend"]}


def environment(out: Path) -> dict[str, Any]:
    """The ``environment`` step's own work (run in a subprocess, like every step)."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # reported below through triton_unavailable_reason
        info["triton"] = f"not importable ({type(exc).__name__})"
    if info["cuda_available"]:
        info["device_name"] = torch.cuda.get_device_name()
        info["device_count"] = torch.cuda.device_count()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    atomic_write_text(out / "environment_info.json", json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    if torch.version.cuda is None:
        raise StepFailed(f"torch {torch.__version__} is a CPU build: install a CUDA torch into the venv first")
    if not info["cuda_available"]:
        raise StepFailed("torch.cuda.is_available() is False: no usable CUDA device")
    from ckf_dist.kernels.backend import triton_unavailable_reason

    reason = triton_unavailable_reason("cuda")
    if reason is not None:
        raise StepFailed(f"Triton cannot run on CUDA: {reason}")
    return info


def environment_numbers(out: Path) -> dict[str, Any]:
    return json.loads((out / "environment_info.json").read_text())


# ------------------------------------------------------------------------------------------------
# Running steps
# ------------------------------------------------------------------------------------------------


def _last_line(log: Path) -> str:
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_step(step: Step, out: Path, timeout_s: float) -> dict[str, Any]:
    """Run one step; its record (also written as ``<name>.json``). Never raises for the step's own failure."""
    log = out / f"{step.name}.log"
    rec: dict[str, Any] = {"step": step.name, "command": " ".join(step.argv), "timeout_s": round(timeout_s, 1)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(step.argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **step.env},
                                cwd=step.cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and every process it started
            proc.wait()
            rc = None
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["rc"] = rc
    if rc is None:
        rec["status"], rec["error"] = "timeout", f"no result after {timeout_s:.0f} s"
    elif rc != 0:
        rec["status"], rec["error"] = "failed", f"exit code {rc}: {_last_line(log)}"
    else:
        rec["status"] = "passed"
        if step.numbers is not None:
            try:
                rec["numbers"] = step.numbers(out)
            except StepFailed as exc:
                rec["status"], rec["error"] = "failed", str(exc)
            except (OSError, ValueError, KeyError, IndexError, ET.ParseError) as exc:
                rec["status"], rec["error"] = "failed", f"its results are unreadable: {type(exc).__name__}: {exc}"
    atomic_write_text(out / f"{step.name}.json", json.dumps(rec, indent=1, default=str))
    return rec


def _cell(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return rec["error"].replace("|", "/")
    nums = rec.get("numbers") or {}
    parts = []
    for k, v in nums.items():
        if k in ("skipped_tests",) or isinstance(v, list):
            continue
        if isinstance(v, dict):
            v = "/".join(str(x) for x in v.values())
        parts.append(f"{k}={v}")
    return ", ".join(parts).replace("|", "/")


def write_summary(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``summary.md`` (a header and one table row per step) and ``summary.json``."""
    ok = all(r["status"] == "passed" for r in records)
    lines = [f"# GPU check: {'passed' if ok else 'FAILED'}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| step | status | seconds | result |", "|---|---|---|---|"]
    for r in records:
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['step']} | {r['status']} | {secs} | {_cell(r)} |")
    lines.append("")
    lines.append("Ranges are min/median/max over the benchmark's grid of shapes.")
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_text(out / "summary.json", json.dumps({"passed": ok, "meta": meta, "steps": records}, indent=1, default=str))
    return path


def run_steps(steps: Sequence[Step], out: Path, budget_s: float = DEFAULT_BUDGET_S,
              meta: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Run the steps in order until one fails; write the summary; raise StepFailed naming that step."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": utc_date(), "budget_s": budget_s, **(meta or {})}
    deadline = time.perf_counter() + budget_s
    records: list[dict[str, Any]] = []
    failed: Optional[dict[str, Any]] = None
    for step in steps:
        if failed is not None:
            records.append({"step": step.name, "status": "not run", "seconds": None, "command": " ".join(step.argv)})
            continue
        left = deadline - time.perf_counter()
        if left <= 1:
            rec = {"step": step.name, "status": "timeout", "seconds": 0.0, "command": " ".join(step.argv),
                   "error": f"the check's {budget_s:.0f} s budget was spent before this step"}
        else:
            print(f"gpu-check: {step.name} ...", flush=True)
            rec = run_step(step, out, min(step.timeout_s, left))
            print(f"gpu-check: {step.name} {rec['status']} in {rec['seconds']:.1f} s", flush=True)
        records.append(rec)
        if rec["status"] != "passed":
            failed = rec
    env = next((r.get("numbers") for r in records if r["step"] == "environment" and r.get("numbers")), None)
    if env:
        meta.update({k: env[k] for k in ("device_name", "torch", "torch_cuda", "triton") if k in env})
    write_summary(out, records, meta)
    if failed is not None:
        raise StepFailed(f"gpu-check FAILED at step {failed['step']!r}: {failed['error']} "
                         f"(log: {out / (failed['step'] + '.log')})")
    return records


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_steps(out: Path, python: str = sys.executable, root: Path = PROJECT_ROOT) -> list[Step]:
    """The check's steps; the pytest steps run in the project root (they need tests/)."""
    if not (root / "tests" / "conftest.py").is_file():
        raise StepFailed(f"gpu-check runs from a checkout: {root / 'tests'} is missing")
    ckf = [python, "-m", "ckf_dist.cli"]
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return [
        Step("environment", [python, "-m", "ckf_dist.bench.gpu_check", "--environment", "--out", str(out)], 120,
             numbers=environment_numbers),
        Step("pytest-gpu", [*pytest, "-m", "gpu", f"--junitxml={out / 'pytest-gpu.xml'}"], 240,
             env={"CKF_TEST_TRITON": "compiled"}, numbers=pytest_numbers("pytest-gpu.xml", allow_skips=False), cwd=root),
        Step("pytest-interpreter", [*pytest, "tests/kernels", "-m", "not gpu", f"--junitxml={out / 'pytest-interpreter.xml'}"],
             180, env={"CKF_TEST_TRITON": "interpret"}, numbers=pytest_numbers("pytest-interpreter.xml", allow_skips=False),
             cwd=root),
        Step("bench-kernels", [*ckf, "bench", "kernels", "--device", "cuda", "--out", str(out / "bench_kernels")], 300,
             numbers=kernel_numbers),
        Step("bench-e2e", [*ckf, "bench", "e2e", "--device", "cuda", "--quick", "--out", str(out / "bench_e2e")], 300,
             numbers=e2e_numbers),
    ]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ckf_dist.bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for every result (created)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)))
    ap.add_argument("--environment", action="store_true", help=argparse.SUPPRESS)  # the first step's own work
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.environment:
            environment(out)
            return 0
        records = run_steps(default_steps(out), out, args.budget_s, meta={"out": str(out)})
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"gpu-check passed: {len(records)} steps; summary in {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
