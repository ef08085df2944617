"""Optimizer engines behind one small interface, so the recipe reads the same for both launchers.

- :class:`LocalEngine`: torch AdamW + warm-up/decay schedule + clipping, one process
  (`dist.launcher=local`).
- :class:`DeepSpeedEngine`: a DeepSpeed engine (ZeRO-2/3) built from the derived JSON; used by
  the Ray and `deepspeed` launchers. `deepspeed` is imported only here, inside the worker.

Both save checkpoints atomically (write into a temporary folder, then rename) and load them
without unpickling arbitrary objects (safetensors, or `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ckf_dist.config import Config
from ckf_dist.fsutil import atomic_write_text, replace_dir, temp_dir_beside


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Linear warm-up over `train.warmup_frac` of the steps, then linear/cosine/constant decay."""
    total = cfg.train.steps
    warm = max(1, int(round(cfg.train.warmup_frac * total))) if cfg.train.warmup_frac > 0 else 0

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.train.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.train.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def _named_trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """AdamW groups: the adapters at train.lr, the CF mapper (``mapper.*``, trained from scratch)
    at train.lr * train.mapper_lr_scale. Empty groups are left out."""
    named = _named_trainable(model)
    mapper = [p for n, p in named.items() if n.startswith("mapper.")]
    rest = [p for n, p in named.items() if not n.startswith("mapper.")]
    groups = [{"params": rest, "lr": cfg.train.lr}, {"params": mapper, "lr": cfg.train.lr * cfg.train.mapper_lr_scale}]
    return [g for g in groups if g["params"]]


def checkpoint_state(folder: Path) -> Optional[dict[str, Any]]:
    """The state JSON an engine saved with a checkpoint (step, world size, ...), None if absent."""
    p = Path(folder) / "state.json"
    return json.loads(p.read_text()) if p.is_file() else None


class LocalEngine:
    """AdamW on the trainable parameters only, in one process."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        self.model = model
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, eps=cfg.train.eps,
                                           weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.micro = 0
        self.world_size = 1
        self.rank = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.train.grad_accum).backward()
        self.micro += 1

    def step(self) -> Optional[torch.Tensor]:
        """Apply the update after `grad_accum` micro-steps; returns the grad norm (a 0-d tensor on
        the device, read by the caller only when it logs) when it stepped."""
        if self.micro % self.cfg.train.grad_accum:
            return None
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.tensor(0.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, folder: Path, state: dict[str, Any]) -> Path:
        """Trainable weights (safetensors), optimizer + scheduler + RNG (weights-only torch file), state JSON."""
        from safetensors.torch import save_file

        tmp = temp_dir_beside(folder)
        save_file({k: v.detach().contiguous().cpu() for k, v in _named_trainable(self.model).items()}, str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        return replace_dir(tmp, folder)

    def load(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        weights = load_file(str(folder / "trainable.safetensors"))
        params = _named_trainable(self.model)
        missing = set(params) - set(weights)
        if missing:
            raise ValueError(f"{folder}: checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])
        blob = torch.load(folder / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        return json.loads((folder / "state.json").read_text())


class DeepSpeedEngine:
    """A DeepSpeed engine (ZeRO-2/3) with the same interface as :class:`LocalEngine`.

    The optimizer is torch AdamW handed to DeepSpeed (no JIT-built ops, works on the CPU
    accelerator with gloo); the schedule is the same `lr_lambda`. Every rank saves its own ZeRO
    shard into the same folder (saving on rank 0 only hangs).
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, ds_config: dict):
        import deepspeed  # inside the worker: the driver never needs it

        self.cfg = cfg
        if ds_config.get("optimizer_torch_adam"):
            # CPU: skip DeepSpeed's shared-memory collective op, a C++ extension JIT-compiled on
            # first use (about a minute on a fresh machine); gloo carries the collectives.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
        config = {k: v for k, v in ds_config.items() if k != "optimizer_torch_adam"}
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=opt,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)),
            config=config,
        )
        self.model = self.engine.module
        self.world_size = self.engine.world_size
        self.rank = self.engine.global_rank

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> Optional[float]:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, folder: Path, state: dict[str, Any]) -> Path:
        """Collective: every rank writes its shard; rank 0 writes the state JSON last."""
        folder.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(folder), tag="engine", client_state={"ckf_state": json.dumps(state)})
        # Per-rank RNG (dropout masks), so a resumed run repeats the uninterrupted one exactly.
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        tmp = folder / f"rng_rank{self.rank}.pt.tmp"
        torch.save(rng, tmp)
        tmp.replace(folder / f"rng_rank{self.rank}.pt")
        if self.rank == 0:
            atomic_write_text(folder / "state.json", json.dumps(state, indent=2))
        return folder

    def load(self, folder: Path) -> dict[str, Any]:
        path, client = self.engine.load_checkpoint(str(folder), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint (tag 'engine')")
        rng_file = folder / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch_rng"])
            if "cuda_rng" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda_rng"])
        return json.loads(client["ckf_state"])
