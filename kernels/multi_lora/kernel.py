"""Triton kernels of the multi-LoRA linear and their launchers.

Three kernels cover forward and backward (shrink / expand vocabulary of Punica and vLLM):

* ``_shrink_kernel``  h = s ⊙ (M[rows] · Cat(seg)): d -> R. Forward: M = x_d, Cat = [A_tᵀ | A_shᵀ];
  backward: M = dy, Cat = [B_t | B_sh] (gives g = s ⊙ dy·B). Output [N, R_PAD] fp32, by row.
* ``_expand_kernel``  out[rows] = M1[rows]·W1 (+ bias) + H[rows]·Cat2(seg): the base GEMM with the
  LoRA expand in its epilogue. Forward: M1 = x, W1 = Wᵀ, H = h, Cat2 = [B_t | B_sh]ᵀ.
  Backward: M1 = dy, W1 = W, H = g, Cat2 = [A_t ; A_sh] (dx = dy·W + g·A). With dropout the two
  parts go to two outputs (dx from the base, dx_d from the adapters) and autograd applies the mask.
* ``_seg_wgrad_kernel`` the segmented grouped GEMM for the adapter weights:
  out[seg] = Σ_{rows of seg} L[rows]ᵀ · H[rows]. dB = dyᵀ·h, dA = (xdᵀ·g)ᵀ. One program per
  (segment, output tile) loops over the segment's rows in a fixed order: deterministic, no
  atomics. The task columns are final; the shared columns are per-segment partials summed by the
  launcher in a fixed order (torch ``sum`` over T + 1 partials, deterministic).

The shared and task ranks are concatenated inside the kernels (columns [0, r_t) = task adapter
of the tile's segment, [r_t, r_t + r_sh) = shared adapter), padded to R_PAD = max(16, pow2)
so every ``tl.dot`` has K, N >= 16 as the NVIDIA backend requires. Rows reach the kernels in
task order through ``segments.order`` (gathered loads, scattered stores); every tile belongs to
one segment because segments are padded to BLOCK_M (see ``segments.py``).

Stacked adapters are addressed as ``base + task * stride`` (no pointer tables, nothing cached:
ZeRO-3 may hand a new buffer every step). Loads are cast to DOT_DTYPE right away (fp32 in the
interpreter, where bf16 arithmetic is wrong; the input dtype on GPU) and accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import TRITON_INTERPRETED, count_launch
from ..segments import TaskSegments


@triton.jit
def _shrink_kernel(
    m_ptr, stride_mm, stride_mk,  # M [N, K], rows gathered through order
    order_ptr, tile_seg_ptr, tile_start_ptr, tile_end_ptr,  # segments tile map
    ta_ptr, stride_ta_t, stride_ta_k, stride_ta_c,  # task part of Cat: element (t, k, c), c < R_T
    sa_ptr, stride_sa_k, stride_sa_c,  # shared part of Cat: element (k, c - R_T)
    out_ptr, stride_om,  # out [N, R_PAD] fp32, unit column stride
    K, NUM_TASKS, R_T, R_SH, scale_t, scale_sh,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, R_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    seg = tl.load(tile_seg_ptr + tile)
    p0 = tl.load(tile_start_ptr + tile)
    p1 = tl.load(tile_end_ptr + tile)
    if p1 <= p0:
        return
    offs_p = p0 + tl.arange(0, BLOCK_M)
    row_mask = offs_p < p1
    rows = tl.load(order_ptr + offs_p, mask=row_mask, other=0).to(tl.int64)
    cols = tl.arange(0, R_PAD)
    is_t = (cols < R_T) & ((cols * 0 + seg) < NUM_TASKS)  # explicit broadcast: Triton 3.9 interpreter
    is_sh = (cols >= R_T) & (cols < R_T + R_SH)
    c_t = tl.where(is_t, cols, 0)
    c_sh = tl.where(is_sh, cols - R_T, 0)
    seg_off = tl.where(seg < NUM_TASKS, seg, 0).to(tl.int64) * stride_ta_t

    acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        m = tl.load(m_ptr + rows[:, None] * stride_mm + ks[None, :] * stride_mk,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
        wt = tl.load(ta_ptr + seg_off + ks[:, None] * stride_ta_k + c_t[None, :] * stride_ta_c,
                     mask=k_mask[:, None] & is_t[None, :], other=0.0).to(DOT_DTYPE)
        ws = tl.load(sa_ptr + ks[:, None] * stride_sa_k + c_sh[None, :] * stride_sa_c,
                     mask=k_mask[:, None] & is_sh[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(m, wt + ws, acc, input_precision=PREC)
    scale = tl.where(cols < R_T, scale_t, scale_sh)
    acc = acc * scale[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc, mask=row_mask[:, None])


@triton.jit
def _expand_kernel(
    m_ptr, stride_mm, stride_mk,  # M1 [N, K] (base GEMM input), rows gathered through order
    w_ptr, stride_wk, stride_wn,  # W1 element (k, n)
    h_ptr, stride_hm,  # H [N, R_PAD] fp32
    tb_ptr, stride_tb_t, stride_tb_c, stride_tb_n,  # task part of Cat2: element (t, c, n)
    sb_ptr, stride_sb_c, stride_sb_n,  # shared part of Cat2: element (c - R_T, n)
    bias_ptr,  # [N_OUT]
    out_ptr, stride_om, stride_on,  # out [N, N_OUT]
    out2_ptr, stride_o2m, stride_o2n,  # second output (SPLIT): adapter part alone
    order_ptr, tile_seg_ptr, tile_start_ptr, tile_end_ptr,
    K, N_OUT, NUM_TASKS, R_T, R_SH,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, R_PAD: tl.constexpr,
    HAS_BASE: tl.constexpr, HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    seg = tl.load(tile_seg_ptr + tile)
    p0 = tl.load(tile_start_ptr + tile)
    p1 = tl.load(tile_end_ptr + tile)
    if p1 <= p0:
        return
    offs_p = p0 + tl.arange(0, BLOCK_M)
    row_mask = offs_p < p1
    rows = tl.load(order_ptr + offs_p, mask=row_mask, other=0).to(tl.int64)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_BASE:
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < K
            m = tl.load(m_ptr + rows[:, None] * stride_mm + ks[None, :] * stride_mk,
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
            w = tl.load(w_ptr + ks[:, None] * stride_wk + ns[None, :] * stride_wn,
                        mask=k_mask[:, None] & n_mask[None, :], other=0.0).to(DOT_DTYPE)
            acc = tl.dot(m, w, acc, input_precision=PREC)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ns, mask=n_mask, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    out_mask = row_mask[:, None] & n_mask[None, :]
    if HAS_LORA:
        cols = tl.arange(0, R_PAD)
        is_t = (cols < R_T) & ((cols * 0 + seg) < NUM_TASKS)  # explicit broadcast: Triton 3.9 interpreter
        is_sh = (cols >= R_T) & (cols < R_T + R_SH)
        c_t = tl.where(is_t, cols, 0)
        c_sh = tl.where(is_sh, cols - R_T, 0)
        seg_off = tl.where(seg < NUM_TASKS, seg, 0).to(tl.int64) * stride_tb_t
        hs = tl.load(h_ptr + rows[:, None] * stride_hm + cols[None, :], mask=row_mask[:, None], other=0.0)
        bt = tl.load(tb_ptr + seg_off + c_t[:, None] * stride_tb_c + ns[None, :] * stride_tb_n,
                     mask=is_t[:, None] & n_mask[None, :], other=0.0).to(DOT_DTYPE)
        bs = tl.load(sb_ptr + c_sh[:, None] * stride_sb_c + ns[None, :] * stride_sb_n,
                     mask=is_sh[:, None] & n_mask[None, :], other=0.0).to(DOT_DTYPE)
        if SPLIT:
            lora = tl.dot(hs.to(DOT_DTYPE), bt + bs, input_precision=PREC)
            tl.store(out2_ptr + rows[:, None] * stride_o2m + ns[None, :] * stride_o2n,
                     lora.to(out2_ptr.dtype.element_ty), mask=out_mask)
        else:
            acc = tl.dot(hs.to(DOT_DTYPE), bt + bs, acc, input_precision=PREC)
    if HAS_BASE or not SPLIT:
        tl.store(out_ptr + rows[:, None] * stride_om + ns[None, :] * stride_on,
                 acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _seg_wgrad_kernel(
    l_ptr, stride_lm, stride_ln,  # L [N, D], rows gathered through order
    h_ptr, stride_hm,  # H [N, R_PAD] fp32
    order_ptr, seg_start_ptr, seg_len_ptr,  # [T + 1] segments, the last = rows with no task
    ot_ptr, stride_ot_t, stride_ot_n, stride_ot_c,  # task grads: element (t, n, c), c < R_T
    p_ptr, stride_p_s, stride_p_n, stride_p_c,  # shared partials fp32 [T + 1, D, R_SH]
    D, NUM_TASKS, R_T, R_SH,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, R_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(seg_start_ptr + seg)
    end = start + tl.load(seg_len_ptr + seg)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < D
    cols = tl.arange(0, R_PAD)

    acc = tl.zeros((BLOCK_N, R_PAD), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_M):
        offs_p = p0 + tl.arange(0, BLOCK_M)
        pm = offs_p < end
        rows = tl.load(order_ptr + offs_p, mask=pm, other=0).to(tl.int64)
        lt = tl.load(l_ptr + rows[None, :] * stride_lm + ns[:, None] * stride_ln,
                     mask=n_mask[:, None] & pm[None, :], other=0.0).to(DOT_DTYPE)  # [BLOCK_N, BLOCK_M]
        hh = tl.load(h_ptr + rows[:, None] * stride_hm + cols[None, :], mask=pm[:, None], other=0.0)
        acc = tl.dot(lt, hh.to(DOT_DTYPE), acc, input_precision=PREC)

    is_t = (cols < R_T) & ((cols * 0 + seg) < NUM_TASKS)  # explicit broadcast: Triton 3.9 interpreter
    c_t = tl.where(is_t, cols, 0)
    seg_t = tl.where(seg < NUM_TASKS, seg, 0).to(tl.int64)
    tl.store(ot_ptr + seg_t * stride_ot_t + ns[:, None] * stride_ot_n + c_t[None, :] * stride_ot_c,
             acc.to(ot_ptr.dtype.element_ty), mask=n_mask[:, None] & is_t[None, :])
    is_sh = (cols >= R_T) & (cols < R_T + R_SH)
    c_sh = tl.where(is_sh, cols - R_T, 0)
    tl.store(p_ptr + seg.to(tl.int64) * stride_p_s + ns[:, None] * stride_p_n + c_sh[None, :] * stride_p_c,
             acc, mask=n_mask[:, None] & is_sh[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers: validate, pick block sizes, launch. They take explicit output buffers so tests can
# pass NaN-filled ones and catch unwritten elements.
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dot_dtype(dtype: torch.dtype):
    """fp32 in the interpreter (its bf16 arithmetic is wrong) and for fp32 inputs; else the input dtype."""
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"multi_lora kernels support fp32/fp16/bf16, got {dtype}")
    if TRITON_INTERPRETED or dtype == torch.float32:
        return tl.float32, "ieee"
    return (tl.float16 if dtype == torch.float16 else tl.bfloat16), "tf32"


def r_pad(r_t: int, r_sh: int) -> int:
    """Concatenated rank padded to a power of two >= 16 (tl.dot needs K, N >= 16 on NVIDIA)."""
    return max(16, triton.next_power_of_2(max(1, r_t + r_sh)))


def _blocks(k: int, n: int) -> tuple[int, int]:
    # NOTE: interpreter cost is per program and per loop iteration, so big tiles are fastest
    # there; on GPU BLOCK_N=128 / BLOCK_K=64 with BLOCK_M=64 is a standard fp16/bf16 GEMM tile.
    # NOTE: block sizes are not yet tuned on a GPU (BENCHMARKS.md, "GPU: owed").
    block_n = 64 if TRITON_INTERPRETED else 128
    block_k = 64
    block_n = min(block_n, max(16, triton.next_power_of_2(n)))
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    return block_n, block_k


def _dummy(ref: torch.Tensor) -> torch.Tensor:
    return ref  # never read: every access to it is masked off


def shrink(
    m: torch.Tensor,  # [N, K]
    seg: TaskSegments,
    task_cat: tuple[torch.Tensor, int, int, int] | None,  # (tensor, stride_t, stride_k, stride_c), r_t cols
    r_t: int,
    shared_cat: tuple[torch.Tensor, int, int] | None,  # (tensor, stride_k, stride_c), r_sh cols
    r_sh: int,
    scale_t: float,
    scale_sh: float,
    out: torch.Tensor | None = None,  # [N, R_PAD] fp32
) -> torch.Tensor:
    n, k = m.shape
    rp = r_pad(r_t, r_sh)
    if out is None:
        out = torch.empty((n, rp), device=m.device, dtype=torch.float32)
    assert out.shape == (n, rp) and out.dtype == torch.float32 and out.stride(1) == 1
    if n == 0:
        return out
    dt, prec = dot_dtype(m.dtype)
    _, block_k = _blocks(k, 16)
    ta, sta_t, sta_k, sta_c = task_cat if task_cat is not None else (_dummy(m), 0, 0, 0)
    sa, ssa_k, ssa_c = shared_cat if shared_cat is not None else (_dummy(m), 0, 0)
    grid = (seg.max_tiles,)
    _shrink_kernel[grid](
        m, m.stride(0), m.stride(1),
        seg.order, seg.tile_seg, seg.tile_start, seg.tile_end,
        ta, sta_t, sta_k, sta_c,
        sa, ssa_k, ssa_c,
        out, out.stride(0),
        k, seg.num_tasks, r_t, r_sh, float(scale_t), float(scale_sh),
        BLOCK_M=seg.block_m, BLOCK_K=block_k, R_PAD=rp, DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("multi_lora")
    return out


def expand(
    m: torch.Tensor | None,  # [N, K] base GEMM input, None = no base part
    w: tuple[torch.Tensor, int, int] | None,  # (W1, stride_k, stride_n)
    h: torch.Tensor | None,  # [N, R_PAD] fp32, None = no adapter part
    seg: TaskSegments,
    task_cat: tuple[torch.Tensor, int, int, int] | None,  # (tensor, stride_t, stride_c, stride_n)
    r_t: int,
    shared_cat: tuple[torch.Tensor, int, int] | None,  # (tensor, stride_c, stride_n)
    r_sh: int,
    bias: torch.Tensor | None,  # [N_OUT]
    out: torch.Tensor,  # [N, N_OUT]; base (+ adapters unless out2 is given)
    out2: torch.Tensor | None = None,  # [N, N_OUT]; adapter part alone (then out gets the base alone)
) -> None:
    n, n_out = out.shape
    if n == 0:
        return
    has_base = m is not None
    has_lora = h is not None
    split = out2 is not None
    if split and not (has_base and has_lora):
        raise ValueError("a split output needs both the base and the adapter part")
    k = m.shape[1] if has_base else 16
    dt, prec = dot_dtype(out.dtype)
    block_n, block_k = _blocks(k, n_out)
    rp = h.shape[1] if has_lora else 16
    if has_lora:
        assert rp == r_pad(r_t, r_sh) and h.dtype == torch.float32 and h.stride(1) == 1
    mm = m if has_base else out
    w1, sw_k, sw_n = w if has_base else (_dummy(out), 0, 0)
    hh = h if has_lora else out
    tb, stb_t, stb_c, stb_n = task_cat if task_cat is not None else (_dummy(out), 0, 0, 0)
    sb, ssb_c, ssb_n = shared_cat if shared_cat is not None else (_dummy(out), 0, 0)
    o2 = out2 if split else out
    grid = (seg.max_tiles, triton.cdiv(n_out, block_n))
    _expand_kernel[grid](
        mm, mm.stride(0), mm.stride(1),
        w1, sw_k, sw_n,
        hh, hh.stride(0),
        tb, stb_t, stb_c, stb_n,
        sb, ssb_c, ssb_n,
        bias if bias is not None else out,
        out, out.stride(0), out.stride(1),
        o2, o2.stride(0), o2.stride(1),
        seg.order, seg.tile_seg, seg.tile_start, seg.tile_end,
        k, n_out, seg.num_tasks, r_t, r_sh,
        BLOCK_M=seg.block_m, BLOCK_N=block_n, BLOCK_K=block_k, R_PAD=rp,
        HAS_BASE=has_base, HAS_LORA=has_lora, HAS_BIAS=bias is not None, SPLIT=split,
        DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("multi_lora")


def seg_wgrad(
    lhs: torch.Tensor,  # [N, D]
    h: torch.Tensor,  # [N, R_PAD] fp32
    seg: TaskSegments,
    task_out: tuple[torch.Tensor, int, int, int] | None,  # (grad tensor, stride_t, stride_n, stride_c)
    r_t: int,
    r_sh: int,
    partial: torch.Tensor | None = None,  # [T + 1, D, r_sh] fp32 shared partials
) -> torch.Tensor | None:
    """Writes the task gradients into task_out; returns the shared partials (or None when r_sh = 0)."""
    n, d = lhs.shape
    rp = h.shape[1]
    assert rp == r_pad(r_t, r_sh) and h.dtype == torch.float32 and h.stride(1) == 1
    if r_sh > 0 and partial is None:
        partial = torch.empty((seg.num_tasks + 1, d, r_sh), device=lhs.device, dtype=torch.float32)
    dt, prec = dot_dtype(lhs.dtype)
    block_n, _ = _blocks(16, d)
    ot, sot_t, sot_n, sot_c = task_out if task_out is not None else (_dummy(h), 0, 0, 0)
    p = partial if partial is not None else h
    sp = (p.stride(0), p.stride(1), p.stride(2)) if partial is not None else (0, 0, 0)
    grid = (seg.num_tasks + 1, triton.cdiv(d, block_n))
    _seg_wgrad_kernel[grid](
        lhs, lhs.stride(0), lhs.stride(1),
        h, h.stride(0),
        seg.order, seg.seg_starts, seg.seg_lengths,
        ot, sot_t, sot_n, sot_c,
        p, *sp,
        d, seg.num_tasks if task_out is not None else 0, r_t, r_sh,
        BLOCK_M=seg.block_m, BLOCK_N=block_n, R_PAD=rp, DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("multi_lora")
    return partial
