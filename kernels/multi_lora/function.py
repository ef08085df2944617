"""The ``torch.autograd.Function`` of the multi-LoRA linear: Triton forward and backward.

Forward (2 launches):  h = [s_t x_d A_tᵀ | s_sh x_d A_shᵀ]          (shrink, saved: [N, R_PAD] fp32)
                       y = x Wᵀ + b + h [B_t | B_sh]ᵀ                  (expand in the base GEMM)
Backward (up to 4):    g = [s_t dy B_t | s_sh dy B_sh]                 (shrink)
                       dx = dy W (+ g [A_t ; A_sh])                     (expand; split with dropout)
                       dB_t, dB_sh = Σ_seg dyᵀ h                        (segmented grouped GEMM)
                       dA_t, dA_sh = Σ_seg gᵀ x_d                       (segmented grouped GEMM)

The base weight is expected frozen; if it (or the bias) requires grad anyway, its gradient is
computed with a plain torch GEMM (dW = dyᵀ x, db = Σ dy) rather than failing.

Dropout: the wrapper passes x and x_d = dropout(x) as two inputs; the Function returns the base
part of dx for x and the adapter part for x_d, and autograd applies the dropout mask. Without
dropout x_d is x and the two parts are summed inside the expand kernel.
"""

from __future__ import annotations

import torch

from ..backend import triton_unavailable_reason
from ..segments import TaskSegments, build_segments
from .kernel import expand, seg_wgrad, shrink


def _a_as_cat(task_a, shared_a):
    """Shrink operands from A: Cat element (k = d_in index, c = rank index)."""
    t = (task_a, task_a.stride(0), task_a.stride(2), task_a.stride(1)) if task_a is not None else None
    s = (shared_a, shared_a.stride(1), shared_a.stride(0)) if shared_a is not None else None
    return t, s


def _b_as_cat(task_b, shared_b):
    """Shrink operands from B (backward g = dy B): Cat element (k = d_out index, c = rank index)."""
    t = (task_b, task_b.stride(0), task_b.stride(1), task_b.stride(2)) if task_b is not None else None
    s = (shared_b, shared_b.stride(0), shared_b.stride(1)) if shared_b is not None else None
    return t, s


class MultiLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_d, weight, bias, shared_a, shared_b, task_a, task_b, seg: TaskSegments,
                shared_scale: float, task_scale: float):
        n = x.shape[0]
        d_out = weight.shape[0]
        r_sh = shared_a.shape[0] if shared_a is not None else 0
        r_t = task_a.shape[1] if task_a is not None else 0
        h = None
        if r_sh + r_t > 0:
            ta, sa = _a_as_cat(task_a, shared_a)
            h = shrink(x_d, seg, ta, r_t, sa, r_sh, task_scale, shared_scale)
        y = torch.empty((n, d_out), dtype=x.dtype, device=x.device)
        tb = (task_b, task_b.stride(0), task_b.stride(2), task_b.stride(1)) if task_b is not None else None
        sb = (shared_b, shared_b.stride(1), shared_b.stride(0)) if shared_b is not None else None
        expand(x, (weight, weight.stride(1), weight.stride(0)), h, seg, tb, r_t, sb, r_sh, bias, y)
        ctx.split = x_d is not x
        ctx.seg = seg
        ctx.scales = (shared_scale, task_scale)
        ctx.ranks = (r_sh, r_t)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, x_d if ctx.split else None, weight, shared_a, shared_b, task_a, task_b, h)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, x_d, weight, shared_a, shared_b, task_a, task_b, h = ctx.saved_tensors
        if x_d is None:
            x_d = x
        seg: TaskSegments = ctx.seg
        shared_scale, task_scale = ctx.scales
        r_sh, r_t = ctx.ranks
        need = ctx.needs_input_grad
        need_x = need[0]
        need_xd = ctx.split and need[1]
        need_sa, need_sb = r_sh > 0 and need[4], r_sh > 0 and need[5]
        need_ta, need_tb = r_t > 0 and need[6], r_t > 0 and need[7]
        n, d_in = x.shape
        d_out = weight.shape[0]
        has_lora = r_sh + r_t > 0

        g = None
        if has_lora and (need_sa or need_ta or need_xd or (need_x and not ctx.split)):
            tb, sb = _b_as_cat(task_b, shared_b)
            g = shrink(dy, seg, tb, r_t, sb, r_sh, task_scale, shared_scale)

        dx = dxd = None
        w_kn = (weight, weight.stride(0), weight.stride(1))  # W1 element (k = d_out, n = d_in)
        ta = (task_a, task_a.stride(0), task_a.stride(1), task_a.stride(2)) if task_a is not None else None
        sa = (shared_a, shared_a.stride(0), shared_a.stride(1)) if shared_a is not None else None
        if ctx.split and has_lora and need_xd:
            dxd = torch.empty((n, d_in), dtype=x.dtype, device=x.device)
            if need_x:
                dx = torch.empty((n, d_in), dtype=x.dtype, device=x.device)
                expand(dy, w_kn, g, seg, ta, r_t, sa, r_sh, None, dx, out2=dxd)
            else:
                expand(None, None, g, seg, ta, r_t, sa, r_sh, None, dxd)
        elif need_x:
            dx = torch.empty((n, d_in), dtype=x.dtype, device=x.device)
            g_x = g if (has_lora and not ctx.split) else None
            expand(dy, w_kn, g_x, seg, ta, r_t, sa, r_sh, None, dx)

        d_sa = d_sb = d_ta = d_tb = None
        if need_sb or need_tb:
            d_tb = torch.empty_like(task_b) if need_tb else None
            out_t = (d_tb, d_tb.stride(0), d_tb.stride(1), d_tb.stride(2)) if need_tb else None
            part = seg_wgrad(dy, h, seg, out_t, r_t, r_sh)
            if need_sb:
                d_sb = part.sum(0).to(shared_b.dtype)  # [d_out, r_sh], fixed-order sum
        if need_sa or need_ta:
            d_ta = torch.empty_like(task_a) if need_ta else None
            out_t = (d_ta, d_ta.stride(0), d_ta.stride(2), d_ta.stride(1)) if need_ta else None
            part = seg_wgrad(x_d, g, seg, out_t, r_t, r_sh)
            if need_sa:
                d_sa = part.sum(0).t().to(shared_a.dtype)  # [r_sh, d_in]

        d_w = (dy.t() @ x).to(weight.dtype) if need[2] else None
        d_bias = dy.sum(0) if (ctx.has_bias and need[3]) else None
        return dx, dxd, d_w, d_bias, d_sa, d_sb, d_ta, d_tb, None, None, None


def multi_lora_triton(
    x: torch.Tensor,  # [N, d_in]
    x_d: torch.Tensor,  # [N, d_in], dropout(x) or x itself
    weight: torch.Tensor,  # [d_out, d_in]
    bias: torch.Tensor | None,  # [d_out]
    shared_a: torch.Tensor | None,  # [r_sh, d_in]
    shared_b: torch.Tensor | None,  # [d_out, r_sh]
    shared_scale: float,
    task_a: torch.Tensor | None,  # [T, r_t, d_in]
    task_b: torch.Tensor | None,  # [T, d_out, r_t]
    task_scale: float,
    segments: TaskSegments | None,
) -> torch.Tensor:  # [N, d_out]
    reason = triton_unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"multi_lora backend=triton cannot run: {reason}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"multi_lora triton backend supports fp32/fp16/bf16 activations, got {x.dtype}")
    dt = x.dtype
    # Parameters in another dtype (e.g. fp32 adapters next to a bf16 base) are cast per call;
    # autograd casts their gradients back. No-op when dtypes already match.
    weight = weight.to(dt)
    bias = bias.to(dt) if bias is not None else None
    if shared_a is not None:
        shared_a, shared_b = shared_a.to(dt), shared_b.to(dt)
    if segments is None:
        # No row has a task adapter: the task adapters take no part (and get no gradient, as in
        # the reference); the tile map is one segment of "no task" rows.
        task_a = task_b = None
        segments = build_segments(torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device), 0)
    elif task_a is not None:
        task_a, task_b = task_a.to(dt), task_b.to(dt)
    return MultiLoRAFunction.apply(
        x, x_d, weight, bias, shared_a, shared_b, task_a, task_b, segments,
        float(shared_scale), float(task_scale),
    )
