"""Triton kernels of ckf_dist (imported as ckf_dist.kernels; only torch and triton here).

Families: ``multi_lora`` (base + shared + per-row task LoRA linear) and ``meta_proj`` (fused
per-user bridge). ``resolve_backend`` maps ``kernels.backend: auto|torch|triton`` for both.
"""

from .backend import launch_count, resolve_backend
from .segments import TaskSegments, build_segments

__all__ = ["TaskSegments", "build_segments", "launch_count", "resolve_backend"]
