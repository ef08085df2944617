"""Root test configuration: environment, shared data fixtures, and how Triton runs in the tests.

Triton decides at ``@triton.jit`` decoration time (its own standard library included, decorated
when ``triton`` is first imported) whether kernels run compiled or in the interpreter, so one
process has one mode. The mode of this process is chosen here, before anything imports triton,
by ``CKF_TEST_TRITON``:

- ``interpret`` (default): ``TRITON_INTERPRET=1`` is pinned whatever the environment says (a CUDA
  machine has it unset or 0), so every test that is not marked ``gpu`` runs the same on any
  machine: Triton kernels in the interpreter, on CPU tensors. Tests marked ``gpu`` are skipped
  without CUDA; with CUDA they run in one child pytest process in ``compiled`` mode, started once
  after collection, and each reports its child's outcome here.
- ``compiled``: ``TRITON_INTERPRET=0``; only the tests marked ``gpu`` run (CUDA tensors, compiled
  kernels); every other test is skipped with the reason. ``make gpu-check`` uses it directly.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")

TRITON_MODES = ("interpret", "compiled")
TRITON_MODE = os.environ.get("CKF_TEST_TRITON", "interpret")
if TRITON_MODE not in TRITON_MODES:
    raise RuntimeError(f"CKF_TEST_TRITON must be one of {TRITON_MODES}, got {TRITON_MODE!r}")
os.environ["TRITON_INTERPRET"] = "1" if TRITON_MODE == "interpret" else "0"
_CHILD_REPORT_ENV = "CKF_TEST_GPU_REPORT"  # set for the compiled-mode child: where it writes outcomes
CHILD_TIMEOUT_S = 1800

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def shared_data_dir() -> Path:
    """The shared real datasets: $CKF_DATA_DIR, default ../shared/data beside the project."""
    return Path(os.environ.get("CKF_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


BENCHMARKS = PROJECT_ROOT / "benchmarks"


@pytest.fixture
def benchmark_script():
    """Loads `benchmarks/<name>.py` (a script, not a package module) under its own name."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def ml100k_dir(data_dir: Path) -> Path:
    p = data_dir / "ml-100k"
    if not (p / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found under {data_dir} (set CKF_DATA_DIR)")
    return p


@pytest.fixture(scope="session")
def amazon_mi_file(data_dir: Path) -> Path:
    p = data_dir / "amazon-musical-instruments" / "Musical_Instruments_5.json"
    if not p.is_file():
        pytest.skip(f"Amazon Musical Instruments 5-core not found under {data_dir} (set CKF_DATA_DIR)")
    return p


# ------------------------------------------------------------------------------------------------
# gpu tests: skipped without CUDA, compiled Triton in a child process with CUDA


def pytest_collection_modifyitems(config, items):
    if TRITON_MODE == "compiled":
        skip = pytest.mark.skip(reason="CKF_TEST_TRITON=compiled runs the gpu tests only")
        for item in items:
            if "gpu" not in item.keywords:
                item.add_marker(skip)
        return
    if not _cuda_available():
        skip_gpu = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


def gpu_child_command(nodeids: list[str], report: Path) -> tuple[list[str], dict[str, str]]:
    """The child pytest run of the gpu tests in compiled mode: (argv, environment)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *nodeids]
    env = {**os.environ, "CKF_TEST_TRITON": "compiled", _CHILD_REPORT_ENV: str(report)}
    env.pop("TRITON_INTERPRET", None)
    return argv, env


def read_child_report(report: Path, nodeids: list[str], rc: int, tail: str) -> dict[str, dict]:
    """nodeid -> {"outcome", "text"} from the child's report; a crashed child fails every test."""
    results = json.loads(report.read_text()) if report.is_file() else {}
    missing = [n for n in nodeids if n not in results]
    for n in missing:
        results[n] = {"outcome": "failed",
                      "text": f"the compiled-Triton child pytest exited with rc {rc} without a result "
                              f"for this test; its output ends:\n{tail}"}
    return results


def pytest_collection_finish(session):
    if TRITON_MODE != "interpret" or not _cuda_available():
        return
    gpu = [item.nodeid for item in session.items if "gpu" in item.keywords]
    if not gpu:
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "gpu-report.json"
        argv, env = gpu_child_command(gpu, report)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"running {len(gpu)} gpu test(s) with compiled Triton in a child pytest process")
        try:
            proc = subprocess.run(argv, cwd=session.config.rootpath, env=env, capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT_S)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = -1, f"timed out after {CHILD_TIMEOUT_S}s: {str(exc.stdout or '')[-4000:]}"
        session.config.stash[_GPU_RESULTS] = read_child_report(report, gpu, rc, tail)


_GPU_RESULTS = pytest.StashKey[dict]()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """In interpret mode with CUDA, a gpu test reports the outcome of its run in the child."""
    results = pyfuncitem.config.stash.get(_GPU_RESULTS, None)
    if results is None or "gpu" not in pyfuncitem.keywords:
        return None
    res = results[pyfuncitem.nodeid]
    if res["outcome"] == "skipped":
        pytest.skip(f"(compiled-Triton child) {res['text']}")
    if res["outcome"] != "passed":
        pytest.fail(f"in the compiled-Triton child process:\n{res['text']}", pytrace=False)
    return True


_CHILD_OUTCOMES: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    if not os.environ.get(_CHILD_REPORT_ENV):
        return
    prev = _CHILD_OUTCOMES.get(report.nodeid)
    if prev is not None and prev["outcome"] != "passed":
        return  # the first failure (setup, call or teardown) is the one to report
    if report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _CHILD_OUTCOMES[report.nodeid] = {"outcome": "skipped", "text": reason}
    elif report.failed:
        _CHILD_OUTCOMES[report.nodeid] = {"outcome": "failed", "text": report.longreprtext}
    elif report.when == "call":
        _CHILD_OUTCOMES[report.nodeid] = {"outcome": "passed", "text": ""}


def pytest_sessionfinish(session):
    path = os.environ.get(_CHILD_REPORT_ENV)
    if path:
        Path(path).write_text(json.dumps(_CHILD_OUTCOMES))


@pytest.fixture(autouse=True)
def _gpu_tests_run_compiled_triton(request):
    """A gpu test that runs here must see compiled Triton kernels, never the interpreter."""
    if TRITON_MODE == "compiled" and "gpu" in request.keywords:
        from ckf_dist.kernels import backend

        assert not backend.TRITON_INTERPRETED, "gpu tests need compiled Triton, but the kernels are interpreted"
