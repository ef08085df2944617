"""Root test configuration.

TRITON_INTERPRET must be set before anything imports a kernel module (Triton reads it when
`@triton.jit` decorates), so it is set here, at collection start, whenever CUDA is absent.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The shared real datasets: $CKF_DATA_DIR, default ../shared/data beside the project."""
    return Path(os.environ.get("CKF_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


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


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

