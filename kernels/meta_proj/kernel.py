"""Triton kernels of the fused per-user bridge and their launchers.

With MetaNet's last layer linear, W_u[b] = reshape(M z_b + m), M = meta_weight [d*d, h],
m = meta_bias [d*d], and

    u'[b, j] = lam Σ_{i,k} e[b,i] z[b,k] M[i*d+j, k] + Σ_i e[b,i] (lam m[i*d+j] + (1-lam) G[i,j])

i.e. one GEMM over the flattened outer product vec(e_b ⊗ z_b) (K = d*h) against M read as a
[(i,k), j] matrix, plus a small [B, d] x [d, d] GEMM for the bias and the general bridge. The
outer product is formed tile by tile in registers; W_u ([B, d, d]) never exists in memory.

Kernels:
* ``_meta_act_kernel``  out[b, n] = lam Σ_{(p,k)} a[b,p] z[b,k] M(p, n, k) + Σ_p a[b,p] C(p, n),
  C = lam m + (1-lam) G. Forward: a = e, (p, n) = (i, j). Backward de: a = du, (p, n) = (j, i):
  the same kernel with M, m and G read transposed through strides.
* ``_meta_dz_kernel``   dz[b, k] = lam Σ_{(i,j)} e[b,i] du[b,j] M[i*d+j, k].
* ``_meta_dw_kernel``   dM[(i,j), k] = lam Σ_b e[b,i] du[b,j] z[b,k] and, from the same tiles,
  P[(i,j)] = Σ_b e[b,i] du[b,j] (dm = lam P, dG = (1-lam) P). One program per output tile
  loops over the batch: deterministic, no atomics.

Loads are cast to DOT_DTYPE (fp32 in the interpreter and for fp32 inputs, else the input dtype);
the outer-product tiles are formed in fp32; accumulation is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import TRITON_INTERPRETED, count_launch


@triton.jit
def _meta_act_kernel(
    a_ptr, stride_ab, stride_ap,  # a [B, P]
    z_ptr, stride_zb, stride_zk,  # z [B, H]
    m_ptr, stride_m_p, stride_m_n, stride_m_k,  # M element (p, n, k)
    mb_ptr, stride_mb_p, stride_mb_n,  # meta bias element (p, n)
    g_ptr, stride_g_p, stride_g_n,  # general bridge element (p, n)
    out_ptr, stride_ob, stride_on,  # out [B, N]
    B, P, H, N, lam,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = bs < B
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    bs64 = bs.to(tl.int64)

    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for kk0 in range(0, P * H, BLOCK_K):
        kk = kk0 + tl.arange(0, BLOCK_K)
        kk_mask = kk < P * H
        p = kk // H
        k = kk % H
        av = tl.load(a_ptr + bs64[:, None] * stride_ab + p[None, :] * stride_ap,
                     mask=b_mask[:, None] & kk_mask[None, :], other=0.0).to(tl.float32)
        zv = tl.load(z_ptr + bs64[:, None] * stride_zb + k[None, :] * stride_zk,
                     mask=b_mask[:, None] & kk_mask[None, :], other=0.0).to(tl.float32)
        mt = tl.load(m_ptr + p[:, None].to(tl.int64) * stride_m_p + ns[None, :] * stride_m_n
                     + k[:, None] * stride_m_k,
                     mask=kk_mask[:, None] & n_mask[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot((av * zv).to(DOT_DTYPE), mt, acc, input_precision=PREC)
    acc = acc * lam

    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_mask = ps < P
        av = tl.load(a_ptr + bs64[:, None] * stride_ab + ps[None, :] * stride_ap,
                     mask=b_mask[:, None] & p_mask[None, :], other=0.0).to(tl.float32)
        pn_mask = p_mask[:, None] & n_mask[None, :]
        c = (1.0 - lam) * tl.load(g_ptr + ps[:, None] * stride_g_p + ns[None, :] * stride_g_n,
                                  mask=pn_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            c += lam * tl.load(mb_ptr + ps[:, None] * stride_mb_p + ns[None, :] * stride_mb_n,
                               mask=pn_mask, other=0.0).to(tl.float32)
        acc = tl.dot(av.to(DOT_DTYPE), c.to(DOT_DTYPE), acc, input_precision=PREC)
    tl.store(out_ptr + bs64[:, None] * stride_ob + ns[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=b_mask[:, None] & n_mask[None, :])


@triton.jit
def _meta_dz_kernel(
    e_ptr, stride_eb, stride_ei,  # e [B, D]
    du_ptr, stride_db, stride_dj,  # du [B, D]
    m_ptr, stride_mq, stride_mk,  # M [D*D, H]
    out_ptr, stride_ob, stride_ok,  # dz [B, H]
    B, D, H, lam,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = bs < B
    ks = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = ks < H
    bs64 = bs.to(tl.int64)

    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for q0 in range(0, D * D, BLOCK_K):
        q = q0 + tl.arange(0, BLOCK_K)
        q_mask = q < D * D
        i = q // D
        j = q % D
        bq_mask = b_mask[:, None] & q_mask[None, :]
        ev = tl.load(e_ptr + bs64[:, None] * stride_eb + i[None, :] * stride_ei, mask=bq_mask, other=0.0)
        dv = tl.load(du_ptr + bs64[:, None] * stride_db + j[None, :] * stride_dj, mask=bq_mask, other=0.0)
        mt = tl.load(m_ptr + q[:, None].to(tl.int64) * stride_mq + ks[None, :] * stride_mk,
                     mask=q_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
        lhs = ev.to(tl.float32) * dv.to(tl.float32)
        acc = tl.dot(lhs.to(DOT_DTYPE), mt, acc, input_precision=PREC)
    acc = acc * lam
    tl.store(out_ptr + bs64[:, None] * stride_ob + ks[None, :] * stride_ok,
             acc.to(out_ptr.dtype.element_ty), mask=b_mask[:, None] & k_mask[None, :])


@triton.jit
def _meta_dw_kernel(
    e_ptr, stride_eb, stride_ei,  # e [B, D]
    du_ptr, stride_db, stride_dj,  # du [B, D]
    z_ptr, stride_zb, stride_zk,  # z [B, H]
    out_ptr, stride_oq, stride_ok,  # dM [D*D, H]
    p_ptr,  # P [D*D] fp32: Σ_b e[b,i] du[b,j]
    B, D, H, lam,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < D * D
    i = q // D
    j = q % D
    ks = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = ks < H

    acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    psum = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < B
        bs64 = bs.to(tl.int64)
        qb_mask = q_mask[:, None] & b_mask[None, :]
        ev = tl.load(e_ptr + bs64[None, :] * stride_eb + i[:, None] * stride_ei, mask=qb_mask, other=0.0)
        dv = tl.load(du_ptr + bs64[None, :] * stride_db + j[:, None] * stride_dj, mask=qb_mask, other=0.0)
        lhs = ev.to(tl.float32) * dv.to(tl.float32)  # [BLOCK_Q, BLOCK_B]
        psum += tl.sum(lhs, axis=1)
        zt = tl.load(z_ptr + bs64[:, None] * stride_zb + ks[None, :] * stride_zk,
                     mask=b_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(lhs.to(DOT_DTYPE), zt, acc, input_precision=PREC)
    acc = acc * lam
    tl.store(out_ptr + q[:, None].to(tl.int64) * stride_oq + ks[None, :] * stride_ok,
             acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & k_mask[None, :])
    if pid_n == 0:
        tl.store(p_ptr + q, psum, mask=q_mask)


# ----------------------------------------------------------------------------------------------
# Launchers (explicit output buffers so tests can pass NaN-filled ones).
# ----------------------------------------------------------------------------------------------


def _dot_dtype(dtype: torch.dtype):
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"meta_proj kernels support fp32/fp16/bf16, got {dtype}")
    if TRITON_INTERPRETED or dtype == torch.float32:
        return tl.float32, "ieee"
    return (tl.float16 if dtype == torch.float16 else tl.bfloat16), "tf32"


def _pow2_block(n: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(n)))


# NOTE: block sizes are fixed, not autotuned (autotune does not run in the interpreter); on GPU
# they are a first guess, tuning is owed with the GPU benchmark numbers.
_BLOCK_B = 64
_BLOCK_K = 64


def act(
    a: torch.Tensor,  # [B, P]
    z: torch.Tensor,  # [B, H]
    m: tuple[torch.Tensor, int, int, int],  # (M, stride_p, stride_n, stride_k)
    mb: tuple[torch.Tensor, int, int] | None,  # (m, stride_p, stride_n)
    g: tuple[torch.Tensor, int, int],  # (G, stride_p, stride_n)
    lam: float,
    out: torch.Tensor,  # [B, N]
) -> torch.Tensor:
    b, p = a.shape
    h = z.shape[1]
    n = out.shape[1]
    if b == 0:
        return out
    dt, prec = _dot_dtype(a.dtype)
    block_n = _pow2_block(n, 64)
    mbt, smb_p, smb_n = mb if mb is not None else (out, 0, 0)
    grid = (triton.cdiv(b, _BLOCK_B), triton.cdiv(n, block_n))
    _meta_act_kernel[grid](
        a, a.stride(0), a.stride(1),
        z, z.stride(0), z.stride(1),
        m[0], m[1], m[2], m[3],
        mbt, smb_p, smb_n,
        g[0], g[1], g[2],
        out, out.stride(0), out.stride(1),
        b, p, h, n, float(lam),
        BLOCK_B=_BLOCK_B, BLOCK_N=block_n, BLOCK_K=_BLOCK_K, BLOCK_P=_pow2_block(p, 64),
        HAS_BIAS=mb is not None, DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("meta_proj")
    return out


def grad_z(e: torch.Tensor, du: torch.Tensor, meta_weight: torch.Tensor, lam: float, out: torch.Tensor) -> torch.Tensor:
    b, d = e.shape
    h = meta_weight.shape[1]
    if b == 0:
        return out
    dt, prec = _dot_dtype(e.dtype)
    block_n = _pow2_block(h, 64)
    grid = (triton.cdiv(b, _BLOCK_B), triton.cdiv(h, block_n))
    _meta_dz_kernel[grid](
        e, e.stride(0), e.stride(1),
        du, du.stride(0), du.stride(1),
        meta_weight, meta_weight.stride(0), meta_weight.stride(1),
        out, out.stride(0), out.stride(1),
        b, d, h, float(lam),
        BLOCK_B=_BLOCK_B, BLOCK_N=block_n, BLOCK_K=_BLOCK_K, DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("meta_proj")
    return out


def grad_w(
    e: torch.Tensor,  # [B, D]
    du: torch.Tensor,  # [B, D]
    z: torch.Tensor,  # [B, H]
    lam: float,
    out: torch.Tensor,  # [D*D, H]
    p_out: torch.Tensor,  # [D*D] fp32
) -> None:
    b, d = e.shape
    h = z.shape[1]
    dt, prec = _dot_dtype(e.dtype)
    block_q = 64
    block_n = _pow2_block(h, 64)
    block_b = 32 if not TRITON_INTERPRETED else 64
    grid = (triton.cdiv(d * d, block_q), triton.cdiv(h, block_n))
    _meta_dw_kernel[grid](
        e, e.stride(0), e.stride(1),
        du, du.stride(0), du.stride(1),
        z, z.stride(0), z.stride(1),
        out, out.stride(0), out.stride(1),
        p_out,
        b, d, h, float(lam),
        BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_B=block_b, DOT_DTYPE=dt, PREC=prec,
    )
    count_launch("meta_proj")
