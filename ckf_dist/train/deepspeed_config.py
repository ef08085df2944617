"""The DeepSpeed JSON, derived from the typed config (never hand-written twice).

Batch settings are consistent by construction:
``train_batch_size = train.micro_batch_size * train.grad_accum * world_size``.
ZeRO stage 3 is the default; stage 2 is selectable (`dist.zero_stage`) and is usually the better
choice for LoRA across nodes, because ZeRO-3 all-gathers the *frozen* base weights every step.
The engine always hands DeepSpeed a torch AdamW (no JIT-built CPU-Adam op); bf16 is off on CPU
unless asked. `dist.deepspeed_overrides` is merged last, for rare knobs. What is not DeepSpeed JSON
(whether DeepSpeed's JIT-built shared-memory collective op may be used) is a separate field of
:class:`DeepSpeedSetup`, never a key inside the JSON.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckf_dist.config import Config, ConfigError
from ckf_dist.fsutil import atomic_write_text


def resolve_dtype(cfg: Config, on_gpu: bool) -> str:
    """`train.dtype=auto` -> bf16 on GPU, fp32 on CPU."""
    if cfg.train.dtype == "auto":
        return "bf16" if on_gpu else "fp32"
    return cfg.train.dtype


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class DeepSpeedSetup:
    """What :class:`ckf_dist.train.engine.DeepSpeedEngine` needs: the DeepSpeed JSON and the flags
    that are not part of it."""

    config: dict[str, Any]
    shm_comm: bool
    """May DeepSpeed use its shared-memory collective op? Off on CPU: it is a C++ extension
    JIT-compiled on first use (about a minute on a fresh machine); gloo carries the collectives."""


def deepspeed_setup(cfg: Config, world_size: int, on_gpu: bool) -> DeepSpeedSetup:
    return DeepSpeedSetup(config=deepspeed_config(cfg, world_size, on_gpu), shm_comm=on_gpu)


def deepspeed_config(cfg: Config, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """Build the DeepSpeed config for `world_size` data-parallel ranks."""
    if world_size < 1:
        raise ConfigError(f"dist.num_workers: world size must be >= 1, got {world_size}")
    dtype = resolve_dtype(cfg, on_gpu)
    stage = cfg.dist.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero.update(
            {
                "stage3_param_persistence_threshold": cfg.dist.param_persistence_threshold,
                "stage3_gather_16bit_weights_on_model_save": False,
                "overlap_comm": on_gpu,
                "contiguous_gradients": True,
            }
        )
    if cfg.dist.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.micro_batch_size * cfg.train.grad_accum * world_size,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    merged = _deep_merge(ds, cfg.dist.deepspeed_overrides)
    check_batch_consistency(merged, world_size)
    return merged


def check_batch_consistency(ds: dict, world_size: int) -> None:
    """A world size incompatible with the batch settings is a one-line error before any work."""
    mb = ds["train_micro_batch_size_per_gpu"]
    ga = ds["gradient_accumulation_steps"]
    tb = ds["train_batch_size"]
    if mb * ga * world_size != tb:
        raise ConfigError(
            f"dist.deepspeed_overrides: train_batch_size {tb} != micro batch {mb} x grad accum {ga} x world size {world_size}"
        )


def write_deepspeed_config(ds: dict, path: str | Path) -> Path:
    """Write to `path` (the run's deepspeed.json, beside the resolved config), atomically."""
    return atomic_write_text(path, json.dumps(ds, indent=2))
