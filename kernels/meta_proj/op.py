"""``meta_proj``: the personalized bridge u' = e_u (lam W_u + (1 - lam) W_g) for a batch of users.

Owns: argument validation and dispatch to the torch reference (materializes W_u) or the Triton
autograd Function (never materializes W_u). Parameters are passed in on every call and never
cached (ZeRO-3 safe).

The projection that follows (P_u: d -> LLM hidden) is not fused: it is an ordinary dense
[B, d] x [d, hidden] GEMM that cuBLAS runs at full speed, and fusing it would only save one
[B, d] round trip (d = 64: a few hundred KB for 8k users).
"""

from __future__ import annotations

import torch

from .reference import meta_proj_reference


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.numel() == 0 and any(s > 0 for s in shape):
        raise ValueError(
            f"{name} is empty (shape {tuple(t.shape)}): a ZeRO-3 partitioned parameter read outside "
            "its gather window? Read parameters inside the module's forward."
        )
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def validate_args(e_u, z, meta_weight, meta_bias, general) -> None:
    if e_u.dim() != 2 or z.dim() != 2:
        raise ValueError(f"e_u must be [B, d] and z [B, h], got {tuple(e_u.shape)} and {tuple(z.shape)}")
    b, d = e_u.shape
    h = z.shape[1]
    _check("z", z, (b, h))
    _check("meta_weight", meta_weight, (d * d, h))
    if meta_bias is not None:
        _check("meta_bias", meta_bias, (d * d,))
    _check("general", general, (d, d))
    for name, p in (("z", z), ("meta_weight", meta_weight), ("meta_bias", meta_bias), ("general", general)):
        if p is not None and p.device != e_u.device:
            raise ValueError(f"{name} is on {p.device} but e_u is on {e_u.device}")


def meta_proj(
    e_u: torch.Tensor,  # [B, d] user CF vectors
    z: torch.Tensor,  # [B, h] MetaNet hidden activations (input of its last linear)
    meta_weight: torch.Tensor,  # [d*d, h] weight of MetaNet's last nn.Linear(h, d*d)
    meta_bias: torch.Tensor | None,  # [d*d] its bias
    general: torch.Tensor,  # [d, d] general bridge W_g
    lam: float,
    backend: str = "torch",  # resolved backend: "torch" | "triton" (see resolve_backend)
) -> torch.Tensor:  # [B, d]
    """u' = lam * e_u W_u + (1 - lam) * e_u W_g with W_u = (z meta_weightᵀ + meta_bias).view(B, d, d)."""
    validate_args(e_u, z, meta_weight, meta_bias, general)
    if backend == "torch":
        return meta_proj_reference(e_u, z, meta_weight, meta_bias, general, lam)
    if backend == "triton":
        from .function import meta_proj_triton

        return meta_proj_triton(e_u, z, meta_weight, meta_bias, general, float(lam))
    raise ValueError(f"backend must be 'torch' or 'triton' (resolve 'auto' with resolve_backend), got {backend!r}")
