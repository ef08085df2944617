"""Plain-torch multi-LoRA reference: the obviously-correct loop over tasks.

Test oracle for the Triton kernels and the ``kernels.backend=torch`` path; differentiable by
autograd. Computes, per row n with task t(n) (t = -1: no task adapter),

    y[n] = x[n] Wᵀ + b + s_sh (x_d[n] A_shᵀ) B_shᵀ + s_t (x_d[n] A_{t(n)}ᵀ) B_{t(n)}ᵀ

with x_d the dropped-out input (``x_dropped``; defaults to x) shared by both adapter paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..segments import TaskSegments


def multi_lora_reference(
    x: torch.Tensor,  # [N, d_in]
    weight: torch.Tensor,  # [d_out, d_in]
    bias: torch.Tensor | None,  # [d_out]
    shared_a: torch.Tensor | None,  # [r_sh, d_in]
    shared_b: torch.Tensor | None,  # [d_out, r_sh]
    shared_scale: float,
    task_a: torch.Tensor | None,  # [T, r_t, d_in]
    task_b: torch.Tensor | None,  # [T, d_out, r_t]
    task_scale: float,
    segments: TaskSegments | None,
    x_dropped: torch.Tensor | None = None,  # [N, d_in], dropout(x); None = x
) -> torch.Tensor:  # [N, d_out]
    xd = x if x_dropped is None else x_dropped
    y = F.linear(x, weight, bias)
    if shared_a is not None:
        y = y + shared_scale * ((xd @ shared_a.t()) @ shared_b.t())
    if task_a is not None and segments is not None:
        for t in range(task_a.shape[0]):
            rows = (segments.task_ids == t).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            delta = task_scale * ((xd[rows] @ task_a[t].t()) @ task_b[t].t())
            y = y.index_add(0, rows, delta.to(y.dtype))
    return y
