"""Fused per-user meta-network projection (the personalized bridge of the CKF paper, arXiv 2410.20642).

Family layout: ``reference.py`` (materialize W_u then bmm, oracle), ``kernel.py`` (the
``@triton.jit`` kernels and launchers), ``function.py`` (the ``torch.autograd.Function``),
``op.py`` (the public entry point ``meta_proj``).
"""

from ..backend import launch_count as _launch_count
from ..backend import resolve_backend
from .op import meta_proj
from .reference import meta_proj_reference


def launch_count() -> int:
    """Triton kernel launches of this family so far (tests use it to prove the Triton path ran)."""
    return _launch_count("meta_proj")


__all__ = ["launch_count", "meta_proj", "meta_proj_reference", "resolve_backend"]
