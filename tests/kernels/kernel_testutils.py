"""Shared helpers of the kernel tests: the one tolerance table, the comparison helper, inputs.

Tolerances are on the max abs error relative to the max abs value of the fp64 reference
(``err <= TOL[dtype] * max|truth|``). fp32: the interpreter's fp32 math is exact per op, so only
summation order differs. fp16/bf16: rounding of inputs and outputs to the dtype, plus (on GPU)
the intermediate h / g cast to the dtype before the expand dot.
"""

import torch

TOL = {
    torch.float32: 5e-6,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.double()
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return (actual - expected).abs().max().item() / max(scale, 1e-12) if actual.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{name}: NaN in result"
    err = max_rel_err(actual, expected)
    assert err <= TOL[dtype], f"{name}: max rel err {err:.3g} > {TOL[dtype]:.1g} ({dtype})"


def nan_padded(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0,
               requires_grad: bool = False) -> torch.Tensor:
    """A random tensor that is a strided view into a NaN-filled, larger buffer.

    An unmasked out-of-bounds load in a kernel reads NaN (instead of plausible garbage) and the
    NaN reaches the result, where the comparison catches it.
    """
    big = torch.full(tuple(s + 3 for s in shape), float("nan"), dtype=dtype)
    view = big[tuple(slice(0, s) for s in shape)]
    view.copy_((torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype))
    if requires_grad:
        view.requires_grad_(True)
    return view
