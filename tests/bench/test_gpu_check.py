"""`make gpu-check`'s CPU-side parts: the step runner, its failure behaviour, the summary, the readers."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckf_dist.bench import gpu_check
from ckf_dist.bench.gpu_check import Step, StepFailed, run_steps

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_first_failing_step_stops_the_run_and_is_named(tmp_path):
    steps = [
        Step("first", _py("print('hello from first')"), 60),
        Step("second", _py("import sys; print('partial output'); print('boom: the real reason', file=sys.stderr); sys.exit(3)"), 60),
        Step("third", _py("open('should-not-exist', 'w')"), 60),
    ]
    with pytest.raises(StepFailed) as exc:
        run_steps(steps, tmp_path, budget_s=120)
    msg = str(exc.value)
    assert "'second'" in msg and "exit code 3" in msg and "boom: the real reason" in msg and "\n" not in msg
    recs = json.loads((tmp_path / "summary.json").read_text())
    assert recs["passed"] is False
    assert [(r["step"], r["status"]) for r in recs["steps"]] == [("first", "passed"), ("second", "failed"),
                                                                 ("third", "not run")]
    assert (tmp_path / "first.log").read_text() == "hello from first\n"
    assert json.loads((tmp_path / "second.json").read_text())["rc"] == 3
    assert not (tmp_path / "third.json").exists() and not (Path.cwd() / "should-not-exist").exists()
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert md[0] == "# GPU check: FAILED"
    table = [line for line in md if line.startswith("| ")]
    assert table[0] == "| step | status | seconds | result |"
    assert table[1].startswith("| first | passed | ") and table[2].startswith("| second | failed | ")
    assert "boom: the real reason" in table[2] and table[3] == "| third | not run |  |  |"


def test_all_steps_pass_with_their_numbers_in_the_summary(tmp_path):
    def numbers(out):
        return {"tokens_per_s": 123.4, "speedup": {"min": 1.0, "median": 2.0, "max": 3.0}}

    recs = run_steps([Step("a", _py("pass"), 60, numbers=numbers), Step("b", _py("pass"), 60)], tmp_path, 120,
                     meta={"machine": "test"})
    assert [r["status"] for r in recs] == ["passed", "passed"]
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU check: passed") and "- machine: test" in md
    assert "| a | passed |" in md and "tokens_per_s=123.4, speedup=1.0/2.0/3.0 |" in md
    assert json.loads((tmp_path / "a.json").read_text())["numbers"]["tokens_per_s"] == 123.4


def test_results_that_show_a_failure_fail_the_step_even_with_exit_0(tmp_path):
    def numbers(out):
        raise StepFailed("no test passed (3 collected, 3 skipped)")

    def unreadable(out):
        return json.loads((out / "missing.json").read_text())

    with pytest.raises(StepFailed, match="'a'.*no test passed"):
        run_steps([Step("a", _py("pass"), 60, numbers=numbers)], tmp_path / "1", 60)
    with pytest.raises(StepFailed, match="'a'.*unreadable: FileNotFoundError"):
        run_steps([Step("a", _py("pass"), 60, numbers=unreadable)], tmp_path / "2", 60)


def test_a_step_past_its_time_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(StepFailed, match="'slow'.*no result after 2 s"):
        run_steps([Step("slow", _py(code), 2), Step("after", _py("pass"), 60)], tmp_path, 120)
    assert time.perf_counter() - t0 < 20
    child = int(pid_file.read_text())
    for _ in range(50 if Path("/proc").is_dir() else 0):  # the killed grandchild is gone (or a zombie about to be reaped)
        stat = Path(f"/proc/{child}/stat")
        if not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        if Path("/proc").is_dir():
            raise AssertionError(f"process {child} of the timed-out step still runs")
    recs = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert [r["status"] for r in recs] == ["timeout", "not run"]


def test_the_overall_budget_bounds_every_step(tmp_path):
    with pytest.raises(StepFailed, match="'a'.*budget was spent"):
        run_steps([Step("a", _py("pass"), 60)], tmp_path, budget_s=0)
    rec = run_steps([Step("b", _py("pass"), 600)], tmp_path, budget_s=30)[0]
    assert rec["timeout_s"] <= 30


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.kernels.test_a" name="test_ok" time="0.1" />
<testcase classname="tests.kernels.test_a" name="test_skip" time="0.0"><skipped message="needs CUDA" /></testcase>
{extra}</testsuite></testsuites>"""


def test_pytest_results_from_junit(tmp_path):
    (tmp_path / "r.xml").write_text(JUNIT.format(extra='<testcase classname="t" name="test_bad"><failure message="x"/></testcase>'))
    c = gpu_check.junit_counts(tmp_path / "r.xml")
    assert (c["tests"], c["passed"], c["failed"], c["skipped"]) == (3, 1, 1, 1)
    assert c["skipped_tests"] == ["tests.kernels.test_a::test_skip"]
    (tmp_path / "s.xml").write_text(JUNIT.format(extra=""))
    with pytest.raises(StepFailed, match="1 test\\(s\\) skipped on a GPU machine: tests.kernels.test_a::test_skip"):
        gpu_check.pytest_numbers("s.xml", allow_skips=False)(tmp_path)
    assert gpu_check.pytest_numbers("s.xml", allow_skips=True)(tmp_path)["passed"] == 1
    (tmp_path / "n.xml").write_text('<testsuites><testsuite name="pytest" tests="0"></testsuite></testsuites>')
    with pytest.raises(StepFailed, match="no test passed"):
        gpu_check.pytest_numbers("n.xml", allow_skips=True)(tmp_path)


def test_environment_step_fails_on_a_cpu_torch_or_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", None, raising=True)
    with pytest.raises(StepFailed, match="CPU build"):
        gpu_check.environment(tmp_path)
    assert json.loads((tmp_path / "environment_info.json").read_text())["torch"] == torch.__version__
    monkeypatch.setattr(torch.version, "cuda", "12.8", raising=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False, raising=True)
    with pytest.raises(StepFailed, match="no usable CUDA device"):
        gpu_check.environment(tmp_path)


def test_default_steps_run_the_real_cli_and_pytest_commands(tmp_path):
    from ckf_dist.cli import build_parser

    steps = {s.name: s for s in gpu_check.default_steps(tmp_path)}
    assert list(steps) == ["environment", "pytest-gpu", "pytest-interpreter", "bench-kernels", "bench-e2e"]
    gpu = steps["pytest-gpu"]
    assert gpu.env["CKF_TEST_TRITON"] == "compiled" and gpu.argv[gpu.argv.index("-m", 3) + 1] == "gpu"
    assert steps["pytest-interpreter"].env["CKF_TEST_TRITON"] == "interpret" and gpu.cwd == ROOT
    parser = build_parser()
    for name, out in (("bench-kernels", "bench_kernels"), ("bench-e2e", "bench_e2e")):
        argv = steps[name].argv
        assert argv[1:3] == ["-m", "ckf_dist.cli"]
        args = parser.parse_args(argv[3:])  # flags the real CLI accepts
        assert args.device == "cuda" and Path(args.out) == tmp_path / out
    assert parser.parse_args(steps["bench-e2e"].argv[3:]).quick
    assert not parser.parse_args(steps["bench-kernels"].argv[3:]).quick
    assert sum(s.timeout_s for s in steps.values()) >= gpu_check.DEFAULT_BUDGET_S  # the budget binds, not the sum


def test_main_exits_1_naming_the_step(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "default_steps",
                        lambda out: [Step("environment", _py("import sys; sys.exit('no GPU here')"), 60)])
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: gpu-check FAILED at step 'environment': exit code 1: no GPU here")
    assert (tmp_path / "summary.md").is_file()


def test_make_gpu_check_without_out_is_a_one_line_error():
    proc = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "make gpu-check needs the results folder: make gpu-check OUT=folder" in proc.stderr
