"""The benchmarks' CUDA branch on a CPU machine, with the device queries mocked at the torch API.

``monkeypatch.setattr`` raises on an attribute torch does not have, and every query the code makes
that is not mocked reaches the real ``torch.cuda`` (which fails without a GPU): a misspelt call
(``torch.cuda.getdevice_name``) fails here instead of on the first GPU run.
"""

import ast
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
H100 = "NVIDIA H100 80GB HBM3"
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=300)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's queries answered as one H100 would; the calls are recorded."""
    calls = []

    def rec(name, value=None):
        def f(*args, **kwargs):
            calls.append(name)
            return value
        return f

    monkeypatch.setattr(torch.cuda, "is_available", rec("is_available", True), raising=True)
    monkeypatch.setattr(torch.cuda, "get_device_name", rec("get_device_name", H100), raising=True)
    monkeypatch.setattr(torch.cuda, "synchronize", rec("synchronize"), raising=True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", rec("reset_peak_memory_stats"), raising=True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", rec("max_memory_allocated", 3 * 2**30), raising=True)
    monkeypatch.setattr(torch.cuda, "empty_cache", rec("empty_cache"), raising=True)
    return calls


def test_device_probe_cuda_branch(fake_cuda):
    from ckf_dist.bench.common import DeviceProbe, device_name

    p = DeviceProbe("cuda")
    p.require("bench x")
    assert p.name() == device_name("cuda") == H100
    p.reset_peak_memory()
    p.sync()
    assert p.peak_memory_gib() == 3.0
    assert fake_cuda == ["is_available", "get_device_name", "get_device_name", "reset_peak_memory_stats",
                         "synchronize", "max_memory_allocated"]
    cpu = DeviceProbe("cpu")
    cpu.sync(), cpu.reset_peak_memory(), cpu.release_cached_memory()
    assert cpu.peak_memory_gib() is None and len(fake_cuda) == 6  # no CUDA query for the CPU
    with pytest.raises(ValueError, match="cpu or cuda"):
        DeviceProbe("mps")


def test_no_cuda_is_a_one_line_config_error(monkeypatch, tmp_path):
    from ckf_dist.bench.common import DeviceProbe
    from ckf_dist.bench.e2e import run_e2e_bench
    from ckf_dist.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False, raising=True)
    with pytest.raises(ConfigError, match="no CUDA device"):
        DeviceProbe("cuda").require("bench e2e")
    with pytest.raises(ConfigError, match="bench e2e --device cuda: no CUDA device"):
        run_e2e_bench(None, "cuda", quick=True, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_e2e_cuda_branch_metadata_mfu_and_files(fake_cuda, tmp_path):
    """run_gpu_bench end to end on a tiny shape whose tensors stay on the CPU: the CUDA queries
    feed the metadata (device name), MFU (the H100's peak) and peak memory."""
    from ckf_dist.bench.e2e_gpu import TARGET_GPU_TOKENS, run_gpu_bench
    from ckf_dist.bench.gpu_check import e2e_numbers
    from ckf_dist.bench.e2e_options import E2EOptions
    from ckf_dist.telemetry.logger import peak_flops

    opts = E2EOptions(seq_len=48, micro_batch=2, steps=2, warmup=1, target_len=8)
    res = run_gpu_bench(tmp_path / "bench_e2e", True, ["lora.shared.r=2", "lora.task.r=2", "kernels.backend=torch"], opts,
                        shape=TINY_SHAPE, place="cpu", dtype=torch.float32)
    meta, row, raw = res["meta"], res["rows"][0], res["raw"]
    assert meta["device"] == "cuda" and meta["device_name"] == H100
    assert raw["peak_flops"] == peak_flops(H100) > 0
    assert raw["mfu"] == pytest.approx(raw["tokens_per_s"] * raw["flops_per_token_lora"] / peak_flops(H100))
    assert row["peak_mem_gib"] == 3.0 and row["micro_batch"] == 2 and row["seq_len"] == 48
    assert res["summary"]["target_tokens_per_s"] == TARGET_GPU_TOKENS
    assert {"synchronize", "reset_peak_memory_stats", "max_memory_allocated"} <= set(fake_cuda)
    blob = json.loads((tmp_path / "bench_e2e" / "e2e_cuda_quick.json").read_text())
    assert blob["rows"][0]["tokens_per_s"] == row["tokens_per_s"] > 0
    assert (tmp_path / "bench_e2e" / "e2e_cuda_quick.csv").read_text().startswith("row,")
    # what `make gpu-check` reads from this file
    nums = e2e_numbers(tmp_path)
    assert nums["tokens_per_s_per_gpu"] == row["tokens_per_s"] and nums["mfu"] == row["mfu"] and raw["mfu"] > 0
    # the verdict follows the measured rate (a timing, so either value is possible here)
    assert nums["peak_mem_gib"] == 3.0 and nums["target_met"] is (row["tokens_per_s"] >= TARGET_GPU_TOKENS)


def test_kernel_bench_cuda_metadata(fake_cuda, monkeypatch, tmp_path):
    """bench kernels' CUDA branch up to the grid (the grid itself needs CUDA tensors)."""
    from ckf_dist.bench import kernels
    from ckf_dist.bench.gpu_check import kernel_numbers

    seen = []

    def fake_bench(op):
        def bench(cfg, device, dtype, quick):
            seen.append((op, device, dtype))
            k = len(seen)
            return [dict(op=op, impl="triton", device=device, ms=1.0, speedup_vs_baseline=float(k),
                         speedup_vs_best_unfused=k / 2 if op == "multi_lora" else "",
                         overhead_vs_base_pct=10.0 * k if op == "multi_lora" else ""),
                    dict(op=op, impl="base_gemm", device=device, ms=0.5, speedup_vs_baseline=9.0)]
        return bench

    monkeypatch.setattr(kernels, "_bench_multi_lora", fake_bench("multi_lora"), raising=True)
    monkeypatch.setattr(kernels, "_bench_meta_proj", fake_bench("meta_proj"), raising=True)
    rows = kernels.run_kernel_bench("cuda", False, tmp_path / "bench_kernels")
    blob = json.loads((tmp_path / "bench_kernels" / "kernels_cuda.json").read_text())
    assert blob["meta"]["device_name"] == H100 and blob["meta"]["dtype"] == "bfloat16"
    assert blob["rows"] == rows and {op for op, _, _ in seen} == {"multi_lora", "meta_proj"}
    assert all(dev == "cuda" and dtype == torch.bfloat16 for _, dev, dtype in seen)
    assert len(seen) == len(kernels._multi_lora_grid("cuda", False)) + len(kernels._meta_proj_grid("cuda", False))
    kernels._sync("cuda")
    assert fake_cuda.count("synchronize") == 1
    # what `make gpu-check` reads from this file: triton rows only
    nums = kernel_numbers(tmp_path)
    n_lora = len(kernels._multi_lora_grid("cuda", False))
    assert nums["device_name"] == H100 and nums["shapes"] == len(seen)
    assert nums["multi_lora_triton_vs_peft_loop"] == {"min": 1.0, "median": (1 + n_lora) / 2, "max": float(n_lora)}
    assert nums["meta_proj_triton_vs_materialize"]["min"] == n_lora + 1.0


def _cuda_attributes(path: Path) -> set[tuple[str, int, str]]:
    """(file, line, name) of every ``torch.cuda.<name>`` in a source file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "cuda"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "torch"):
            out.add((str(path.relative_to(ROOT)), node.lineno, node.attr))
    return out


def test_every_torch_cuda_attribute_the_package_uses_exists():
    used = set()
    for top in ("ckf_dist", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            used |= _cuda_attributes(path)
    assert any(name == "get_device_name" for _, _, name in used)
    missing = sorted(f"{f}:{line}: torch.cuda.{name}" for f, line, name in used if not hasattr(torch.cuda, name))
    assert not missing, "torch.cuda has no attribute: " + "; ".join(missing)
