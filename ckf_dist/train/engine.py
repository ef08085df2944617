"""Optimizer engines behind one small interface, so the recipe reads the same for both launchers.

- :class:`LocalEngine`: torch AdamW + warm-up/decay schedule + clipping, one process
  (`dist.launcher=local`).
- :class:`DeepSpeedEngine`: a DeepSpeed engine (ZeRO-2/3) built from the derived JSON; used by
  the Ray and `deepspeed` launchers. `deepspeed` is imported only here, inside the worker.

Both save checkpoints atomically (write into a temporary folder, then rename) and load them
without unpickling arbitrary objects (safetensors, or `torch.load(weights_only=True)`): DeepSpeed's
own checkpoint engine loads with `weights_only=False`, so its `load` is replaced by a
weights-only one that allows the few DeepSpeed classes its optimizer states hold (plain state
holders, no code run on load). Before any load, the recipe checks the folder against the sha256
manifest the run wrote (:func:`ckf_dist.fsutil.verify_manifest`).

A non-finite gradient norm stops the local engine before its optimizer step (:class:`NonFiniteStep`);
DeepSpeed applies its step inside `engine.step()`, so the recipe stops right after it, before any
save (the weights in memory are lost with the process).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch

from ckf_dist.config import Config
from ckf_dist.fsutil import atomic_write, atomic_write_text, replace_dir, temp_dir_beside
from ckf_dist.run import Run
from ckf_dist.train.deepspeed_config import DeepSpeedSetup, deepspeed_setup, resolve_dtype, write_deepspeed_config


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


class NonFiniteStep(RuntimeError):
    """The gradient norm of an optimizer step is not finite: the step was not applied."""

    def __init__(self, norm: float):
        super().__init__(f"non-finite gradient norm {norm}")
        self.norm = norm


def deepspeed_safe_globals() -> list:
    """The DeepSpeed classes its checkpoints pickle (enums and loss-scaler state holders), allowed
    in a weights-only load; nothing else outside torch's own weights-only set is."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def weights_only_load(path: str, map_location=None):
    """What DeepSpeed's checkpoint engine `load` does, with `weights_only=True`."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


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
        the device) when it stepped. A non-finite norm (a NaN or infinite loss or gradient) raises
        :class:`NonFiniteStep` before the optimizer step: one read of the norm per optimizer step."""
        if self.micro % self.cfg.train.grad_accum:
            return None
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.tensor(0.0)
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStep(float(norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def gather_trainable(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Full CPU copies of `named` (one process: nothing to gather)."""
        return {k: v.detach().cpu().clone() for k, v in named.items()}

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

    def __init__(self, model: torch.nn.Module, cfg: Config, setup: DeepSpeedSetup):
        # Optional import: only the DeepSpeed launchers (Ray, `deepspeed`) need deepspeed installed;
        # the local engine and the driver never import it.
        import deepspeed

        self.cfg = cfg
        if not setup.shm_comm:
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
        config = setup.config
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=opt,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)),
            config=config,
        )
        self.model = self.engine.module
        self.world_size = self.engine.world_size
        self.rank = self.engine.global_rank
        if getattr(self.engine, "checkpoint_engine", None) is not None:
            self.engine.checkpoint_engine.load = weights_only_load  # never weights_only=False

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

    def gather_trainable(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Full CPU copies of `named` on rank 0 (ZeRO-3 partitions gathered; a collective: every
        rank calls it); empty on the other ranks."""
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, p in named.items():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if self.rank == 0:
                    out[name] = p.detach().cpu().clone()
        return out

    def save(self, folder: Path, state: dict[str, Any]) -> Path:
        """Collective: every rank writes its shard; rank 0 writes the state JSON last."""
        folder.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(folder), tag="engine", client_state={"ckf_state": json.dumps(state)})
        # Per-rank RNG (dropout masks), so a resumed run repeats the uninterrupted one exactly.
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        atomic_write(folder / f"rng_rank{self.rank}.pt", lambda tmp: torch.save(rng, tmp))
        if self.rank == 0:
            atomic_write_text(folder / "state.json", json.dumps(state, indent=2))
        return folder

    def load(self, folder: Path) -> dict[str, Any]:
        if getattr(self.engine, "checkpoint_engine", None) is None:
            raise RuntimeError("DeepSpeed built no checkpoint engine: refusing to load a checkpoint it would unpickle unchecked")
        self.engine.checkpoint_engine.load = weights_only_load
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


# ------------------------------------------------------------------------------------------------
# What a launcher hands the recipe: how to build its engine


class EngineFactory(Protocol):
    """Builds the optimizer engine of one rank; says in which dtype the model is loaded for it."""

    def model_dtype(self, cfg: Config, device: torch.device) -> torch.dtype: ...

    def __call__(self, model: torch.nn.Module, cfg: Config, run: Run, rank: int, world_size: int,
                 device: torch.device) -> "LocalEngine | DeepSpeedEngine": ...


class LocalEngineFactory:
    """One process, torch AdamW: the model is loaded in the training dtype (`train.dtype`)."""

    def model_dtype(self, cfg: Config, device: torch.device) -> torch.dtype:
        return torch.bfloat16 if resolve_dtype(cfg, on_gpu=device.type == "cuda") == "bf16" else torch.float32

    def __call__(self, model: torch.nn.Module, cfg: Config, run: Run, rank: int, world_size: int,
                 device: torch.device) -> LocalEngine:
        return LocalEngine(model, cfg)


class DeepSpeedEngineFactory:
    """ZeRO data parallelism: the model is loaded in fp32 (DeepSpeed casts it and keeps fp32
    master weights); rank 0 writes the derived DeepSpeed JSON into the run."""

    def model_dtype(self, cfg: Config, device: torch.device) -> torch.dtype:
        return torch.float32

    def __call__(self, model: torch.nn.Module, cfg: Config, run: Run, rank: int, world_size: int,
                 device: torch.device) -> DeepSpeedEngine:
        setup = deepspeed_setup(cfg, world_size, on_gpu=device.type == "cuda")
        if rank == 0:
            write_deepspeed_config(setup.config, run.deepspeed_file)
        return DeepSpeedEngine(model, cfg, setup)
