"""Multi-LoRA linear layer: a frozen base linear plus a task-shared and a per-row task adapter
(or a per-row adapter generated for each row: CoRA).

Owns: :class:`MultiLoRALinear` (PEFT style: the original layer is kept as ``base_layer``; every
trainable tensor's name starts with ``lora_``) and :class:`LoRAContext`, the per-model object
that carries the per-row task ids of the current forward into every wrapped layer.
Must not know: HF model classes (see ``inject.py``), CKF, DeepSpeed, Ray.

Per wrapped layer, for a token n of a row whose task adapter is t(n) (t = -1: none)::

    y[n] = base(x[n]) + s_sh (x_d[n] A_shᵀ) B_shᵀ + s_t (x_d[n] A_{t(n)}ᵀ) B_{t(n)}ᵀ

with ``s = alpha / r`` per adapter set and ``x_d`` the dropped-out input shared by both sets (so a
module holding both sets needs one dropout rate for them). Parameters (stacked, so a kernel
addresses task t at ``t * stride``):

    lora_shared_A [r_sh, d_in]      lora_shared_B [d_out, r_sh]
    lora_task_A   [T, r_t, d_in]    lora_task_B   [T, d_out, r_t]

A is initialised like PEFT (kaiming-uniform, a=sqrt(5), per task), B with zeros, so a freshly
wrapped model computes exactly what the base model computes.

**Row adapters** (``model.mapping=cora``, :mod:`ckf_dist.modules.cora`): instead of T stored task
adapters, every row b of the call has its own adapter generated from its codes z_b [r, h] (set on
the context with ``ctx.rows(token_rows, codes)``)::

    A_b = z_b G_Aᵀ  [r, d_in]     B_b = (z_b G_Bᵀ)ᵀ  [d_out, r]     (G_A = lora_row_A [d_in, h], G_B = lora_row_B [d_out, h])

and the stacked [B, r, d_in] / [B, d_out, r] factors go through the task slot of the same fused
op, with the row index of each token as its "task" (a per-row adapter is the general case of a
per-task adapter): same kernels, same segments, gradients flow back into the codes. G_B starts at
zero. A layer holds task adapters or row adapters, not both (they share the op's slot).

The per-row task interface (what the kernels issue consumes)
-------------------------------------------------------------
HF models call ``q_proj(hidden)`` with nothing but the activations, so the task ids of the rows
reach the wrapped layers through a :class:`LoRAContext`:

1. The owner of the model (``CKFModel``) creates ONE ``LoRAContext`` per model instance and hands
   the same object, by reference, to every ``MultiLoRALinear`` at injection time
   (``inject_multi_lora(model, lora_cfg, num_tasks, ctx)``). There is no process-global state:
   two models in one process each have their own context.
2. Once per LLM call the owner sets the token-level task ids with
   ``with ctx.tasks(token_task_ids):`` (``token_task_ids``: [N] int64, N = B * L, row b's task id
   repeated over its L tokens, row-major like ``x.reshape(-1, d)``; -1 = no task adapter). This
   calls ``build_segments(token_task_ids, ctx.num_tasks)`` once and stores the result in
   ``ctx.segments`` (a :class:`ckf_dist.kernels.segments.TaskSegments`) and ``ctx.num_tokens``;
   the segments are cleared when the block exits.
3. Each wrapped layer flattens its input ``[B, L, d_in] -> [N, d_in]`` and calls
   ``multi_lora_linear(x, base.weight, base.bias, lora_shared_A, lora_shared_B, s_sh,
   lora_task_A, lora_task_B, s_t, ctx.segments, dropout=p, training=self.training,
   backend=ctx.backend)``; ``ctx.backend`` is "torch" or "triton" (from ``resolve_backend``).
   Autograd keeps a reference to the segments, so the backward of a layer sees the same
   segments as its forward even after the context is cleared.

4. Activation checkpointing recomputes a layer's forward in backward, after the block has exited:
   the checkpoint's ``context_fn`` (:meth:`LoRAContext.checkpoint_context`) captures the segments
   at forward time and sets them again for the recomputation.

A layer with task adapters called outside ``ctx.tasks(...)`` raises (a forgotten task id would
silently train the wrong thing); a layer with shared adapters only does not need the context.

ZeRO-3: parameters are read inside ``forward`` on every call and never cached (a cached reference
is an empty tensor after partitioning); the context holds no parameters. The fused op takes
``base_layer.weight`` without calling ``base_layer``; when that weight is released (ZeRO-3,
``numel() == 0``) the layer calls ``base_layer`` so its own hooks gather it, and the op adds the
adapters on a zero base. ZeRO-2, or a `dist.param_persistence_threshold` above the projection
size, keeps the fully fused path.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ckf_dist.config import ConfigError
from ckf_dist.kernels.multi_lora import multi_lora_linear
from ckf_dist.kernels.segments import TaskSegments, build_segments


@dataclass(eq=False)
class LoRAContext:
    """Per-model carrier of the current forward's task segments (see the module docstring).

    num_tasks: T, the number of stacked task adapters (task index = position in config.ALL_TASKS).
    backend:   "torch" | "triton", passed to every multi_lora_linear call.
    segments:  the current call's TaskSegments, or None outside ``tasks(...)``.
    num_tokens: N the segments were built for (checked against each layer's flattened input).
    check_ids: check the task ids' range when building segments (a device-to-host read; the CKF
               collator already checked them on the CPU).
    """

    num_tasks: int
    backend: str = "torch"
    check_ids: bool = True
    segments: Optional[TaskSegments] = None
    num_tokens: int = 0
    row_codes: Optional[torch.Tensor] = None
    """[T, r, h]: the codes of the current call's row adapters (``rows(...)``), None otherwise."""

    @contextmanager
    def tasks(self, token_task_ids: torch.Tensor) -> Iterator["LoRAContext"]:
        """Set the segments for one LLM call. token_task_ids: [N] int64 on the activations' device."""
        if self.segments is not None:
            raise RuntimeError("LoRAContext.tasks(...) is already active: nested LLM calls are not supported")
        self.segments = build_segments(token_task_ids.reshape(-1), self.num_tasks, check=self.check_ids)
        self.num_tokens = int(token_task_ids.numel())
        try:
            yield self
        finally:
            self.segments = None
            self.num_tokens = 0

    @contextmanager
    def rows(self, token_rows: torch.Tensor, codes: torch.Tensor) -> Iterator["LoRAContext"]:
        """Set per-row adapters for one LLM call: token_rows [N] int64, the row of ``codes`` whose
        adapter each token uses (-1: none); codes [T, r, h] (see the module docstring)."""
        if self.segments is not None:
            raise RuntimeError("LoRAContext is already active: nested LLM calls are not supported")
        self.segments = build_segments(token_rows.reshape(-1), int(codes.shape[0]), check=self.check_ids)
        self.num_tokens = int(token_rows.numel())
        self.row_codes = codes
        try:
            yield self
        finally:
            self.segments, self.num_tokens, self.row_codes = None, 0, None

    def row_adapters(self, rows: torch.Tensor, seq_len: int, codes: torch.Tensor):
        """``rows(...)`` for a [B', L] call whose row k uses the adapter of codes[rows[k]] (rows: [B'])."""
        return self.rows(rows.long().unsqueeze(1).expand(-1, seq_len).reshape(-1), codes)

    def checkpoint_context(self):
        """``context_fn`` for :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): called in
        the forward of a checkpointed block, it captures the current segments (and row codes); the
        recomputation in backward (after the forward's ``tasks(...)`` block has exited) runs with
        them set again."""
        segments, num_tokens, codes = self.segments, self.num_tokens, self.row_codes

        @contextmanager
        def replay() -> Iterator[None]:
            saved = (self.segments, self.num_tokens, self.row_codes)
            self.segments, self.num_tokens, self.row_codes = segments, num_tokens, codes
            try:
                yield
            finally:
                self.segments, self.num_tokens, self.row_codes = saved

        return nullcontext(), replay()

    def row_tasks(self, task_ids: torch.Tensor, seq_len: int):
        """``tasks(...)`` for a [B, L] call given per-row ids task_ids: [B] (row id repeated over L)."""
        return self.tasks(task_ids.long().unsqueeze(1).expand(-1, seq_len).reshape(-1))


def _init_a(a: torch.Tensor) -> None:
    """PEFT's A init (kaiming-uniform with a=sqrt(5)) on one [r, d_in] matrix."""
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with a task-shared adapter, T task adapters, or both (summed).

    Args:
      base_layer: the original linear, kept (and frozen) as ``self.base_layer``.
      ctx: the model's LoRAContext (shared by reference with every wrapped layer).
      shared: (r, alpha, dropout) of the shared set, or None.
      task: (r, alpha, dropout) of the task sets, or None; needs ``ctx.num_tasks >= 1``.
      row: (r, alpha, dropout, h) of a generated per-row adapter (codes of width h), or None.
    Input ``x: [..., d_in]`` (e.g. [B, L, d_in]); output ``[..., d_out]``.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        ctx: LoRAContext,
        shared: Optional[tuple[int, float, float]] = None,
        task: Optional[tuple[int, float, float]] = None,
        name: str = "",
        row: Optional[tuple[int, float, float, int]] = None,
    ):
        super().__init__()
        if shared is None and task is None and row is None:
            raise ValueError(f"{name or 'MultiLoRALinear'}: needs a shared, task or row adapter")
        if task is not None and row is not None:
            raise ValueError(f"{name or 'MultiLoRALinear'}: task and row adapters share the op's slot: one or the other")
        if shared is not None and row is not None and shared[2] != row[2]:
            raise ConfigError(f"lora: module '{name}' holds shared and row adapters, which need the same dropout")
        if shared is not None and task is not None and shared[2] != task[2]:
            raise ConfigError(
                f"lora: module '{name}' holds shared and task adapters, which need the same dropout "
                f"(lora.shared.dropout={shared[2]} vs lora.task.dropout={task[2]})"
            )
        if task is not None and ctx.num_tasks < 1:
            raise ValueError(f"{name}: task adapters need ctx.num_tasks >= 1")
        self.base_layer = base_layer
        self.ctx = ctx
        d_out, d_in = base_layer.weight.shape
        self.in_features, self.out_features = d_in, d_out
        dev, dt = base_layer.weight.device, base_layer.weight.dtype
        self.shared_scale = 0.0
        self.task_scale = 0.0
        self.dropout = 0.0
        if shared is not None:
            r, alpha, p = shared
            self.lora_shared_A = nn.Parameter(torch.empty(r, d_in, device=dev, dtype=dt))
            self.lora_shared_B = nn.Parameter(torch.zeros(d_out, r, device=dev, dtype=dt))
            self.shared_scale = float(alpha) / r
            self.dropout = float(p)
        else:
            self.register_parameter("lora_shared_A", None)
            self.register_parameter("lora_shared_B", None)
        if task is not None:
            r, alpha, p = task
            t = ctx.num_tasks
            self.lora_task_A = nn.Parameter(torch.empty(t, r, d_in, device=dev, dtype=dt))
            self.lora_task_B = nn.Parameter(torch.zeros(t, d_out, r, device=dev, dtype=dt))
            self.task_scale = float(alpha) / r
            self.dropout = float(p)
        else:
            self.register_parameter("lora_task_A", None)
            self.register_parameter("lora_task_B", None)
        self.row_scale = 0.0
        self.lora_row_A: Optional[nn.Linear] = None
        self.lora_row_B: Optional[nn.Linear] = None
        if row is not None:
            r, alpha, p, h = row
            self.lora_row_A = nn.Linear(h, d_in, bias=False, device=dev, dtype=dt)  # G_A
            self.lora_row_B = nn.Linear(h, d_out, bias=False, device=dev, dtype=dt)  # G_B
            self.row_scale = float(alpha) / r
            self.dropout = float(p)
        self.reset_lora_parameters()

    @property
    def has_shared(self) -> bool:
        return self.lora_shared_A is not None

    @property
    def has_task(self) -> bool:
        return self.lora_task_A is not None

    @property
    def has_row(self) -> bool:
        return self.lora_row_A is not None

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A: kaiming-uniform (per task); B: zeros."""
        if self.lora_shared_A is not None:
            _init_a(self.lora_shared_A)
            self.lora_shared_B.zero_()
        if self.lora_task_A is not None:
            for t in range(self.lora_task_A.shape[0]):
                _init_a(self.lora_task_A[t])
            self.lora_task_B.zero_()
        if self.lora_row_A is not None:
            _init_a(self.lora_row_A.weight)
            self.lora_row_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_in] -> [..., d_out]. Reads every parameter here (ZeRO-3 safe)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [N, d_in]
        segments = None
        task_a, task_b, task_scale = self.lora_task_A, self.lora_task_B, self.task_scale
        if self.has_row:
            codes = self.ctx.row_codes
            if codes is None:
                raise RuntimeError("MultiLoRALinear with a row adapter called without row codes: wrap the LLM call in "
                                   "`with ctx.rows(token_rows, codes):` (see ckf_dist.modules.multi_lora)")
            task_a = self.lora_row_A(codes)  # [T, r, d_in]
            task_b = self.lora_row_B(codes).transpose(1, 2).contiguous()  # [T, d_out, r]
            task_scale = self.row_scale
        if self.has_task or self.has_row:
            segments = self.ctx.segments
            if segments is None:
                raise RuntimeError(
                    "MultiLoRALinear with task adapters called without task ids: wrap the LLM call "
                    "in `with ctx.tasks(token_task_ids):` (see ckf_dist.modules.multi_lora)"
                )
            if self.ctx.num_tokens != x2.shape[0]:
                raise RuntimeError(
                    f"LoRAContext holds task ids for {self.ctx.num_tokens} tokens but the layer got "
                    f"{x2.shape[0]}: set them for exactly this LLM call"
                )
        base = self.base_layer
        weight, bias, y_base = base.weight, base.bias, None
        if weight.numel() == 0:
            # Released by a sharding framework (ZeRO-3 outside its gather window): call the base
            # layer so its own hooks gather the weight, and add the adapters on a zero base
            # (a stride-0 view: no memory). Costs one extra base-size GEMM; ZeRO-2 avoids it.
            y_base = base(x2)
            weight = x2.new_zeros(()).expand(y_base.shape[-1], x2.shape[-1])
            bias = None
        y = multi_lora_linear(
            x2,
            weight,
            bias,
            self.lora_shared_A,
            self.lora_shared_B,
            self.shared_scale,
            task_a,
            task_b,
            task_scale,
            segments,
            dropout=self.dropout,
            training=self.training,
            backend=self.ctx.backend,
        )
        if y_base is not None:
            y = y + y_base
        return y.reshape(*lead, y.shape[-1])

    def extra_repr(self) -> str:
        parts = [f"in={self.in_features}, out={self.out_features}"]
        if self.has_shared:
            parts.append(f"shared r={self.lora_shared_A.shape[0]} scale={self.shared_scale:g}")
        if self.has_task:
            parts.append(f"task T={self.lora_task_A.shape[0]} r={self.lora_task_A.shape[1]} scale={self.task_scale:g}")
        if self.has_row:
            parts.append(f"row h={self.lora_row_A.in_features} scale={self.row_scale:g}")
        parts.append(f"dropout={self.dropout:g}")
        return ", ".join(parts)
