"""How the tests run Triton (tests/conftest.py): interpreter pinned for CPU tests, compiled for gpu tests.

A CUDA machine has TRITON_INTERPRET unset or 0; the CPU-tensor kernel tests must still run the
interpreter there, and the gpu tests must run in a compiled-mode child whose outcome each test reports.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckf_dist.kernels import backend
from ckf_dist.kernels.meta_proj import kernel as meta_kernel
from ckf_dist.kernels.multi_lora import kernel as lora_kernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root_conftest(request):
    """The root tests/conftest.py module as pytest loaded it (several modules are named conftest)."""
    want = ROOT / "tests" / "conftest.py"
    for mod in request.config.pluginmanager.get_plugins():
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == want:
            return mod
    raise AssertionError(f"{want} is not loaded")


def test_cpu_tests_run_the_interpreter():
    assert os.environ["TRITON_INTERPRET"] == "1"
    assert backend.TRITON_INTERPRETED
    for k in (lora_kernel._shrink_kernel, lora_kernel._expand_kernel, meta_kernel._meta_act_kernel):
        assert type(k).__name__ == "InterpretedFunction", k


@pytest.mark.slow
def test_kernel_tests_pass_with_triton_interpret_0_in_the_environment():
    """What a CUDA machine sees: TRITON_INTERPRET=0; the interpreter tests still interpret."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    env.pop("CKF_TEST_TRITON", None)
    nodes = [
        "tests/kernels/test_triton_modes.py::test_cpu_tests_run_the_interpreter",
        "tests/kernels/test_multi_lora_kernels.py::test_triton_path_really_runs",
    ]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodes], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout


def test_gpu_child_runs_compiled_mode_on_the_gpu_tests(root_conftest, tmp_path):
    argv, env = root_conftest.gpu_child_command(["tests/a.py::test_x[1]"], tmp_path / "r.json")
    assert argv[:3] == [sys.executable, "-m", "pytest"]
    assert argv[argv.index("-m", 3) + 1] == "gpu" and argv[-1] == "tests/a.py::test_x[1]"
    assert env["CKF_TEST_TRITON"] == "compiled" and "TRITON_INTERPRET" not in env
    assert env["CKF_TEST_GPU_REPORT"] == str(tmp_path / "r.json")


def test_child_report_a_crashed_child_fails_every_missing_test(root_conftest, tmp_path):
    report = tmp_path / "r.json"
    report.write_text('{"t::a": {"outcome": "passed", "text": ""}}')
    res = root_conftest.read_child_report(report, ["t::a", "t::b"], rc=3, tail="Segmentation fault")
    assert res["t::a"]["outcome"] == "passed"
    assert res["t::b"]["outcome"] == "failed"
    assert "rc 3" in res["t::b"]["text"] and "Segmentation fault" in res["t::b"]["text"]
    res = root_conftest.read_child_report(tmp_path / "absent.json", ["t::a"], rc=-1, tail="timed out")
    assert res["t::a"]["outcome"] == "failed"


def test_child_records_the_first_failure_of_a_test(root_conftest, monkeypatch):
    from types import SimpleNamespace as NS

    monkeypatch.setenv("CKF_TEST_GPU_REPORT", "x")
    monkeypatch.setattr(root_conftest, "_CHILD_OUTCOMES", {})
    rep = lambda when, outcome, text="", longrepr=None: NS(  # noqa: E731
        nodeid="t::a", when=when, skipped=outcome == "skipped", failed=outcome == "failed",
        longreprtext=text, longrepr=longrepr)
    root_conftest.pytest_runtest_logreport(rep("setup", "passed"))
    assert root_conftest._CHILD_OUTCOMES == {}
    root_conftest.pytest_runtest_logreport(rep("call", "failed", "AssertionError: y"))
    root_conftest.pytest_runtest_logreport(rep("teardown", "failed", "later"))
    assert root_conftest._CHILD_OUTCOMES["t::a"] == {"outcome": "failed", "text": "AssertionError: y"}
    root_conftest._CHILD_OUTCOMES.clear()
    root_conftest.pytest_runtest_logreport(rep("setup", "skipped", longrepr=("f.py", 3, "Skipped: needs CUDA")))
    assert root_conftest._CHILD_OUTCOMES["t::a"] == {"outcome": "skipped", "text": "Skipped: needs CUDA"}


@pytest.mark.gpu
def test_gpu_tests_see_compiled_kernels_on_cuda():
    assert not backend.TRITON_INTERPRETED
    assert type(lora_kernel._shrink_kernel).__name__ == "JITFunction"
    assert torch.cuda.is_available()
