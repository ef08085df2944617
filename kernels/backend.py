"""The ``kernels.backend: auto|torch|triton`` switch shared by every kernel family, and launch counters.

Owns: deciding whether the Triton kernels can run for a given device, with a clear one-line
reason when they cannot (never a silent fallback), and counting kernel launches so tests can
prove the Triton path ran.

Must not know: config objects, models. Callers pass the string from their config.

Triton decides at ``@triton.jit`` decoration time whether kernels run compiled (GPU) or in the
interpreter (``TRITON_INTERPRET=1``), so the mode is probed on a kernel decorated here, at import
of ``ckf_dist.kernels.backend``, which every kernel module imports first.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")

try:
    import triton
    import triton.language as tl

    @triton.jit
    def _probe_kernel(x_ptr):
        tl.store(x_ptr, 1.0)

    _TRITON_IMPORT_ERROR: str | None = None
    TRITON_INTERPRETED: bool = type(_probe_kernel).__name__ == "InterpretedFunction"
except Exception as exc:  # ImportError, or a broken install that fails at decoration
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    TRITON_INTERPRETED = False

# Module-level launch counters: counts only (no tensors, no shapes), so tests can check that the
# Triton path ran. Not state any kernel reads.
_LAUNCHES: Counter[str] = Counter()
_LOGGED: set[tuple[str, str, str]] = set()


def count_launch(family: str) -> None:
    _LAUNCHES[family] += 1


def launch_count(family: str | None = None) -> int:
    """Kernel launches so far for one family ("multi_lora", "meta_proj"), or all when None."""
    if family is None:
        return sum(_LAUNCHES.values())
    return _LAUNCHES[family]


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """None when the Triton kernels can run on tensors of ``device``, else a one-line reason."""
    dev = torch.device(device)
    if _TRITON_IMPORT_ERROR is not None:
        return f"triton is not usable ({_TRITON_IMPORT_ERROR})"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "device is cuda but torch.cuda.is_available() is False"
        return None
    if dev.type == "cpu":
        if TRITON_INTERPRETED:
            return None
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return (
                "TRITON_INTERPRET was set after ckf_dist.kernels was imported; set it before "
                "any kernel import to run Triton on CPU"
            )
        return "tensors are on cpu and Triton needs CUDA (or TRITON_INTERPRET=1 set before import)"
    return f"Triton kernels do not support device type {dev.type!r}"


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Map ``kernels.backend`` (auto|torch|triton) to the backend that will run: "torch" or "triton".

    auto: triton on CUDA when Triton can run there, torch otherwise (the choice is logged once per
    (name, device type, result)). triton: triton, or RuntimeError with the reason it cannot run.
    """
    if name not in BACKENDS:
        raise ValueError(f"kernels.backend must be one of {BACKENDS}, got {name!r}")
    dev = torch.device(device)
    if name == "torch":
        return "torch"
    reason = triton_unavailable_reason(dev)
    if name == "triton":
        if reason is not None:
            raise RuntimeError(f"kernels.backend=triton cannot run: {reason}")
        return "triton"
    chosen = "triton" if dev.type == "cuda" and reason is None else "torch"
    key = (name, dev.type, chosen)
    if key not in _LOGGED:
        _LOGGED.add(key)
        why = "CUDA device" if chosen == "triton" else (reason or "not a CUDA device")
        logger.info("kernels.backend=auto on %s -> %s (%s)", dev.type, chosen, why)
    return chosen
