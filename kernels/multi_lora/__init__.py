"""Batched multi-LoRA linear (base + task-shared + per-row task adapter), forward and backward.

Family layout: ``reference.py`` (plain-torch loop, oracle), ``kernel.py`` (the ``@triton.jit``
kernels and their launchers), ``function.py`` (the ``torch.autograd.Function``), ``op.py`` (the
public entry point ``multi_lora_linear``). Rows are grouped by task once per batch with
``ckf_dist.kernels.segments.build_segments``.
"""

from ..backend import resolve_backend
from ..backend import launch_count as _launch_count
from ..segments import TaskSegments, build_segments
from .op import multi_lora_linear
from .reference import multi_lora_reference


def launch_count() -> int:
    """Triton kernel launches of this family so far (tests use it to prove the Triton path ran)."""
    return _launch_count("multi_lora")


__all__ = [
    "TaskSegments",
    "build_segments",
    "launch_count",
    "multi_lora_linear",
    "multi_lora_reference",
    "resolve_backend",
]
