"""meta_proj: fused Triton bridge (interpreter on CPU) vs materialize-W_u-then-bmm, forward and backward.

Each case compares the Triton path in the test dtype against the reference in fp64 on the same
(dtype-rounded) inputs and against the reference in the test dtype; gradients (e_u, z,
meta_weight, meta_bias, general) against autograd through the reference.
"""

import pytest
import torch

from ckf_dist.kernels import meta_proj as meta_proj_pkg
from ckf_dist.kernels.meta_proj import meta_proj
from ckf_dist.kernels.meta_proj.kernel import act, grad_w, grad_z

from kernel_testutils import assert_close, nan_padded

NAMES = ("e_u", "z", "meta_weight", "meta_bias", "general")


def make_case(b=37, d=12, h=24, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    case = dict(
        e_u=nan_padded((b, d), dtype, g, requires_grad=True),
        z=nan_padded((b, h), dtype, g, requires_grad=True),
        meta_weight=nan_padded((d * d, h), dtype, g, scale=h ** -0.5, requires_grad=True),
        meta_bias=nan_padded((d * d,), dtype, g, scale=0.1, requires_grad=True) if bias else None,
        general=nan_padded((d, d), dtype, g, scale=d ** -0.5, requires_grad=True),
    )
    du = nan_padded((b, d), dtype, g)
    return case, du


def run(case, du, lam, backend, dtype=None):
    args = dict(case)
    if dtype is not None:
        for k in NAMES:
            if args[k] is not None:
                args[k] = args[k].detach().to(dtype).requires_grad_(True)
        du = du.to(dtype)
    u = meta_proj(**args, lam=lam, backend=backend)
    present = [args[k] for k in NAMES if args[k] is not None]
    grads = iter(torch.autograd.grad(u, present, du))
    return u, {k: (next(grads) if args[k] is not None else None) for k in NAMES}


def compare(case, du, lam, dtype):
    u, grads = run(case, du, lam, "triton")
    u64, grads64 = run(case, du, lam, "torch", dtype=torch.float64)
    uref, grads_ref = run(case, du, lam, "torch")
    assert u.dtype == dtype
    assert_close(u, u64, dtype, "u' vs fp64 reference")
    assert_close(u, uref, dtype, f"u' vs {dtype} reference")
    for k in NAMES:
        if case[k] is None:
            continue
        assert grads[k].dtype == dtype
        assert_close(grads[k], grads64[k], dtype, f"d{k} vs fp64 autograd")
        assert_close(grads[k], grads_ref[k], dtype, f"d{k} vs {dtype} autograd")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "shape", [(37, 12, 24), (1, 8, 5), (70, 20, 33), (130, 16, 64)], ids=["37x12x24", "batch1", "70x20x33", "130x16x64"]
)
@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_forward_backward_matches_reference(dtype, shape, lam):
    b, d, h = shape
    case, du = make_case(b, d, h, dtype=dtype, bias=shape != (70, 20, 33), seed=b + d + h)
    compare(case, du, lam, dtype)


def test_lam_zero_is_general_bridge_only():
    case, du = make_case()
    u, grads = run(case, du, 0.0, "triton")
    torch.testing.assert_close(u, case["e_u"].detach() @ case["general"].detach(), rtol=1e-5, atol=1e-5)
    assert not grads["meta_weight"].any() and not grads["z"].any()


def test_two_backward_runs_bit_identical():
    case, du = make_case(b=130, d=16, h=40)
    _, g1 = run(case, du, 0.7, "triton")
    _, g2 = run(case, du, 0.7, "triton")
    for k in NAMES:
        assert torch.equal(g1[k], g2[k]), f"d{k} differs between two backward runs"


def test_triton_path_really_runs():
    case, du = make_case()
    before = meta_proj_pkg.launch_count()
    run(case, du, 0.5, "triton")
    assert meta_proj_pkg.launch_count() - before == 4  # forward act; backward act (de), dz, dw
    before = meta_proj_pkg.launch_count()
    run(case, du, 0.5, "torch")
    assert meta_proj_pkg.launch_count() == before


def test_no_nan_leaks_from_unwritten_output_elements():
    case, du = make_case(b=70, d=20, h=33)
    e, z, m, mb, gen = (case[k].detach() for k in NAMES)
    b, d = e.shape
    h = z.shape[1]
    out = torch.full((b, d), float("nan"))
    act(e, z, (m, d * m.stride(0), m.stride(0), m.stride(1)), (mb, d * mb.stride(0), mb.stride(0)),
        (gen, gen.stride(0), gen.stride(1)), 0.4, out)
    assert not out.isnan().any()
    dz = torch.full((b, h), float("nan"))
    grad_z(e, du, m, 0.4, dz)
    assert not dz.isnan().any()
    dw, p = torch.full((d * d, h), float("nan")), torch.full((d * d,), float("nan"))
    grad_w(e, du, z, 0.4, dw, p)
    assert not dw.isnan().any() and not p.isnan().any()


def test_validation_errors():
    case, _ = make_case()
    with pytest.raises(ValueError, match="ZeRO-3"):
        meta_proj(**dict(case, meta_weight=torch.empty(0)), lam=0.5, backend="triton")
    with pytest.raises(ValueError, match="general"):
        meta_proj(**dict(case, general=torch.zeros(3, 3)), lam=0.5, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        meta_proj(**case, lam=0.5, backend="auto")


@pytest.mark.gpu
def test_gpu_bf16_large():
    """8k users, d_cf=64, h=256 (the issue's target shape) in bf16 on CUDA vs the fp64 reference."""
    case, du = make_case(b=8192, d=64, h=256, dtype=torch.bfloat16)
    cuda = {k: v.detach().cuda().requires_grad_(True) for k, v in case.items()}
    compare(cuda, du.cuda(), 0.5, torch.bfloat16)
