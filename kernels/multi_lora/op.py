"""``multi_lora_linear``: base linear + task-shared LoRA + per-row task LoRA, one entry point.

Owns: argument validation, LoRA dropout (computed once here with ``F.dropout`` so both backends
and both adapter paths see the same mask) and dispatch to the torch reference or the Triton
autograd Function. Parameters are passed in on every call and never cached (ZeRO-3 safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..segments import TaskSegments
from .reference import multi_lora_reference


def _check_param(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.numel() == 0 and any(s > 0 for s in shape):
        raise ValueError(
            f"{name} is empty (shape {tuple(t.shape)}): a ZeRO-3 partitioned parameter read outside "
            "its gather window? Read parameters inside the module's forward."
        )
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def validate_args(x, weight, bias, shared_a, shared_b, task_a, task_b, segments) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [N, d_in], got shape {tuple(x.shape)}")
    n, d_in = x.shape
    if weight.dim() != 2:
        raise ValueError(f"weight must be [d_out, d_in], got shape {tuple(weight.shape)}")
    d_out = weight.shape[0]
    _check_param("weight", weight, (d_out, d_in))
    if bias is not None:
        _check_param("bias", bias, (d_out,))
    if (shared_a is None) != (shared_b is None):
        raise ValueError("shared_a and shared_b must both be given or both be None")
    if shared_a is not None:
        r_sh = shared_a.shape[0] if shared_a.dim() == 2 else -1
        _check_param("shared_a", shared_a, (r_sh, d_in))
        _check_param("shared_b", shared_b, (d_out, r_sh))
    if (task_a is None) != (task_b is None):
        raise ValueError("task_a and task_b must both be given or both be None")
    if task_a is not None:
        if task_a.dim() != 3:
            raise ValueError(f"task_a must be [T, r_t, d_in], got shape {tuple(task_a.shape)}")
        t, r_t = task_a.shape[0], task_a.shape[1]
        _check_param("task_a", task_a, (t, r_t, d_in))
        _check_param("task_b", task_b, (t, d_out, r_t))
        if segments is not None:
            if segments.num_tasks != t:
                raise ValueError(f"segments.num_tasks={segments.num_tasks} but task_a has T={t} adapters")
    if segments is not None:
        if not isinstance(segments, TaskSegments):
            raise TypeError(f"segments must be a TaskSegments (build_segments), got {type(segments)}")
        if segments.num_rows != n:
            raise ValueError(f"segments cover {segments.num_rows} rows but x has {n}")
        if segments.task_ids.device != x.device:
            raise ValueError(f"segments are on {segments.task_ids.device} but x is on {x.device}")
    for name, p in (("weight", weight), ("bias", bias), ("shared_a", shared_a), ("shared_b", shared_b),
                    ("task_a", task_a), ("task_b", task_b)):
        if p is not None and p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")


def multi_lora_linear(
    x: torch.Tensor,  # [N, d_in] fp32/fp16/bf16
    weight: torch.Tensor,  # [d_out, d_in], frozen base weight
    bias: torch.Tensor | None,  # [d_out]
    shared_a: torch.Tensor | None,  # [r_sh, d_in]
    shared_b: torch.Tensor | None,  # [d_out, r_sh]
    shared_scale: float,
    task_a: torch.Tensor | None,  # [T, r_t, d_in], stacked task adapters
    task_b: torch.Tensor | None,  # [T, d_out, r_t]
    task_scale: float,
    segments: TaskSegments | None,  # None => no row has a task adapter
    dropout: float = 0.0,
    training: bool = False,
    backend: str = "torch",  # resolved backend: "torch" | "triton" (see resolve_backend)
) -> torch.Tensor:  # [N, d_out]
    """y = x Wᵀ + b + s_sh (x_d A_shᵀ) B_shᵀ + s_t (x_d A_{t(row)}ᵀ) B_{t(row)}ᵀ, x_d = dropout(x).

    ``backend`` must already be resolved ("torch" or "triton"; call ``resolve_backend`` once for
    "auto"). Leading dimensions are not flattened here: pass x as [tokens, d_in].
    """
    validate_args(x, weight, bias, shared_a, shared_b, task_a, task_b, segments)
    has_adapter = shared_a is not None or (task_a is not None and segments is not None)
    x_d = x
    if has_adapter and dropout > 0.0 and training:
        x_d = F.dropout(x, p=dropout, training=True)
    if backend == "torch":
        return multi_lora_reference(
            x, weight, bias, shared_a, shared_b, shared_scale, task_a, task_b, task_scale, segments,
            x_dropped=x_d,
        )
    if backend == "triton":
        from .function import multi_lora_triton

        return multi_lora_triton(
            x, x_d, weight, bias, shared_a, shared_b, shared_scale, task_a, task_b, task_scale, segments
        )
    raise ValueError(f"backend must be 'torch' or 'triton' (resolve 'auto' with resolve_backend), got {backend!r}")
