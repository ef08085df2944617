"""The ``torch.autograd.Function`` of the fused per-user bridge: Triton forward and backward.

Forward (1 launch):  u' = lam vec(e ⊗ z) M' + e (lam m + (1-lam) G)        (``act``)
Backward (up to 3):  de = lam vec(du ⊗ z) M'' + du (lam m + (1-lam) G)ᵀ     (``act``, transposed reads)
                     dz = lam vec(e ⊗ du) M                                  (``grad_z``)
                     dM = lam Σ_b vec(e ⊗ du)ᵀ z,  P = Σ_b vec(e ⊗ du)       (``grad_w``)
                     dm = lam P,  dG = (1-lam) P.view(d, d)
Nothing but the inputs is saved: W_u is never materialized, in forward or backward.
"""

from __future__ import annotations

import torch

from ..backend import triton_unavailable_reason
from .kernel import act, grad_w, grad_z


class MetaProjFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_u, z, meta_weight, meta_bias, general, lam: float):
        b, d = e_u.shape
        ms0, ms1 = meta_weight.stride()
        out = torch.empty((b, d), dtype=e_u.dtype, device=e_u.device)
        mb = (meta_bias, d * meta_bias.stride(0), meta_bias.stride(0)) if meta_bias is not None else None
        act(e_u, z, (meta_weight, d * ms0, ms0, ms1), mb, (general, general.stride(0), general.stride(1)), lam, out)
        ctx.lam = lam
        ctx.has_bias = meta_bias is not None
        ctx.save_for_backward(e_u, z, meta_weight, meta_bias, general)
        return out

    @staticmethod
    def backward(ctx, du):
        e_u, z, meta_weight, meta_bias, general = ctx.saved_tensors
        lam = ctx.lam
        b, d = e_u.shape
        h = z.shape[1]
        need = ctx.needs_input_grad
        ms0, ms1 = meta_weight.stride()
        de = dz = dw = dmb = dg = None
        if need[0]:
            de = torch.empty_like(e_u)
            mb = (meta_bias, meta_bias.stride(0), d * meta_bias.stride(0)) if meta_bias is not None else None
            act(du, z, (meta_weight, ms0, d * ms0, ms1), mb,
                (general, general.stride(1), general.stride(0)), lam, de)
        if need[1]:
            dz = torch.empty_like(z)
            grad_z(e_u, du, meta_weight, lam, dz)
        if need[2] or (ctx.has_bias and need[3]) or need[4]:
            dw_buf = torch.empty((d * d, h), dtype=meta_weight.dtype, device=e_u.device)
            p = torch.empty((d * d,), dtype=torch.float32, device=e_u.device)
            if b == 0:
                dw_buf.zero_()
                p.zero_()
            else:
                grad_w(e_u, du, z, lam, dw_buf, p)
            dw = dw_buf if need[2] else None
            if ctx.has_bias and need[3]:
                dmb = (lam * p).to(meta_bias.dtype)
            if need[4]:
                dg = ((1.0 - lam) * p).view(d, d).to(general.dtype)
        return de, dz, dw, dmb, dg, None


def meta_proj_triton(
    e_u: torch.Tensor,  # [B, d]
    z: torch.Tensor,  # [B, h]
    meta_weight: torch.Tensor,  # [d*d, h]
    meta_bias: torch.Tensor | None,  # [d*d]
    general: torch.Tensor,  # [d, d]
    lam: float,
) -> torch.Tensor:  # [B, d]
    reason = triton_unavailable_reason(e_u.device)
    if reason is not None:
        raise RuntimeError(f"meta_proj backend=triton cannot run: {reason}")
    if e_u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"meta_proj triton backend supports fp32/fp16/bf16, got {e_u.dtype}")
    dt = e_u.dtype
    # Parameters in another dtype are cast per call (autograd casts their gradients back).
    z, meta_weight, general = z.to(dt), meta_weight.to(dt), general.to(dt)
    meta_bias = meta_bias.to(dt) if meta_bias is not None else None
    return MetaProjFunction.apply(e_u, z, meta_weight, meta_bias, general, float(lam))
