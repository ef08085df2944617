"""Task segments (build_segments) and the kernels.backend switch (resolve_backend)."""

import logging

import pytest
import torch

from ckf_dist.kernels import backend as backend_mod
from ckf_dist.kernels.meta_proj import meta_proj
from ckf_dist.kernels.multi_lora import build_segments, multi_lora_linear, resolve_backend


@pytest.mark.parametrize("block_m", [16, 64])
def test_segments_group_rows_stably_and_tiles_are_single_task(block_m):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(-1, 5, (203,), generator=g)
    ids[ids == 2] = 4  # task 2 has no rows
    seg = build_segments(ids, 5, block_m=block_m)
    assert seg.num_tasks == 5 and seg.lengths[2] == 0
    assert sorted(seg.order.tolist()) == list(range(203))
    for t in range(5):
        rows = seg.order[seg.starts[t] : seg.starts[t] + seg.lengths[t]]
        assert torch.equal(rows, (ids == t).nonzero().squeeze(1)), "stable grouping"
    tail = seg.order[int(seg.lengths.sum()) :]
    assert torch.equal(tail, (ids == -1).nonzero().squeeze(1)), "rows without a task come last"
    covered = torch.zeros(203, dtype=torch.long)
    for s, a, b in zip(seg.tile_seg.tolist(), seg.tile_start.tolist(), seg.tile_end.tolist()):
        assert 0 <= b - a <= block_m
        if b > a:
            rows = seg.order[a:b]
            covered[rows] += 1
            expect = -1 if s == 5 else s
            assert (ids[rows] == expect).all(), "a tile holds rows of one segment only"
    assert (covered == 1).all(), "every row in exactly one tile"


def test_segments_edge_cases_and_errors():
    seg = build_segments(torch.tensor([0]), 1)
    assert seg.lengths.tolist() == [1] and seg.order.tolist() == [0]
    seg = build_segments(torch.full((4,), -1), 3)
    assert seg.lengths.tolist() == [0, 0, 0] and int(seg.seg_lengths[-1]) == 4
    with pytest.raises(ValueError, match="out of range"):
        build_segments(torch.tensor([0, 3]), 3)
    with pytest.raises(TypeError):
        build_segments(torch.tensor([0.0]), 1)


def test_resolve_backend_choices(monkeypatch, caplog):
    assert resolve_backend("torch", "cpu") == "torch"
    with caplog.at_level(logging.INFO, logger="ckf_dist.kernels.backend"):
        assert resolve_backend("auto", "cpu") == "torch"
    # interpreter mode (set by tests/conftest.py): triton is allowed on CPU when asked for
    assert backend_mod.TRITON_INTERPRETED
    assert resolve_backend("triton", "cpu") == "triton"
    with pytest.raises(ValueError, match="auto"):
        resolve_backend("cuda", "cpu")


def test_resolve_auto_picks_triton_on_cuda_and_logs(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend_mod, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="ckf_dist.kernels.backend"):
        assert resolve_backend("auto", "cuda") == "triton"
    assert "auto on cuda -> triton" in caplog.text


def test_triton_unavailable_is_a_clear_error_never_a_fallback(monkeypatch):
    monkeypatch.setattr(backend_mod, "TRITON_INTERPRETED", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="before any kernel import"):
        resolve_backend("triton", "cpu")
    assert resolve_backend("auto", "cpu") == "torch"
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="triton cannot run"):
        multi_lora_linear(x, torch.randn(5, 4), None, None, None, 1.0, None, None, 1.0, None, backend="triton")
    with pytest.raises(RuntimeError, match="triton cannot run"):
        meta_proj(torch.randn(2, 3), torch.randn(2, 4), torch.randn(9, 4), None, torch.randn(3, 3), 0.5,
                  backend="triton")
    monkeypatch.setattr(backend_mod, "_TRITON_IMPORT_ERROR", "ImportError: no module named triton")
    with pytest.raises(RuntimeError, match="not usable"):
        resolve_backend("triton", "cuda")


def test_kernels_import_only_torch_and_triton():
    """kernels/ must stay importable on the GPU machine (no ray/deepspeed/webdataset there)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ckf_dist.kernels.multi_lora.function, ckf_dist.kernels.meta_proj.function\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'deepspeed', 'webdataset', "
        "'transformers', 'peft'})\n"
        "bad += sorted(m for m in sys.modules if m.startswith('ckf_dist.') and not m.startswith('ckf_dist.kernels'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
