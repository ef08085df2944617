"""Launchers: run the per-worker recipe locally, under Ray Train, or under the `deepspeed` launcher.

`dist.launcher`:
- `local`     one process, torch AdamW (`LocalEngine`), no Ray, no DeepSpeed;
- `ray`       a Ray `TorchTrainer` with `dist.num_workers` workers, each running the recipe with a
              DeepSpeed engine; `FailureConfig(max_failures)` restarts the worker group after a
              crash and the recipe resumes from the latest registered checkpoint;
- `deepspeed` processes started by `deepspeed --hostfile ... --module ckf_dist.train --config ...`
              (see cluster/), which set RANK / WORLD_SIZE / MASTER_ADDR themselves.

Each launcher hands the recipe what differs between them: an engine factory (local AdamW or
DeepSpeed) and a checkpoint sink (the run directory, or Ray's report). The worker function receives
the config as its argument (a plain dict), never from a global. `ray` and `deepspeed` are imported
inside the functions that need them: optional dependencies, only for their launchers. Ray binds
to 127.0.0.1 unless `dist.ray_address` names a cluster.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from ckf_dist.config import Config, ConfigError, from_dict, to_dict
from ckf_dist.raycluster import check_reachable
from ckf_dist.raycluster import init_ray as _join_or_start_ray
from ckf_dist.run import Run
from ckf_dist.train.checkpoints import ReportedCheckpoints, RunCheckpoints
from ckf_dist.train.engine import DeepSpeedEngineFactory, EngineFactory, LocalEngineFactory
from ckf_dist.train.recipe import CKFRecipe

log = logging.getLogger(__name__)


def ray_worker_loop(loop_config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: rebuild the config, resume, run the recipe."""
    import ray
    import ray.train

    cfg = from_dict(loop_config["config"], source="ray worker config")
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict, folder: Optional[Path]) -> None:
        if folder is None:
            ray.train.report(metrics)
        else:
            # Ray uploads synchronously; the per-rank temporary folder is then removed.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             delete_local_checkpoint_after_upload=True)

    recipe = CKFRecipe(Run(cfg), rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), engine=DeepSpeedEngineFactory(),
                       checkpoints=ReportedCheckpoints(report), node=ray.get_runtime_context().get_node_id())
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            recipe.setup(resume_from=Path(d))
    else:
        recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()


def init_ray(cfg: Config) -> bool:
    """Connect to `dist.ray_address` or start a local cluster; True when this call started one."""
    needed = cfg.dist.num_workers * cfg.dist.cpus_per_worker + 1
    # the dashboard: Ray Train's state queries need it (on dist.dashboard_host)
    return _join_or_start_ray(cfg.dist.ray_address, num_cpus=max(needed, os.cpu_count() or 1),
                              dashboard_host=cfg.dist.dashboard_host, include_dashboard=True)


_check_reachable = check_reachable


def with_absolute_paths(cfg: Config) -> Config:
    """A copy whose paths do not depend on the working directory (Ray workers run elsewhere)."""
    import copy

    out = copy.deepcopy(cfg)
    out.run.dir = str(Path(cfg.run.dir).resolve())
    for section, key in (("data", "path"), ("data", "meta_path"), ("model", "path"), ("dist", "storage_path")):
        value = getattr(getattr(cfg, section), key)
        if value and "://" not in value:
            setattr(getattr(out, section), key, str(Path(value).resolve()))
    return out


def fit_ray(run: Run) -> Any:
    """Run training with Ray Train; returns the Ray `Result`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ckf_dist.train.ray_backend import BoundStoreTorchConfig

    import ray

    cfg = with_absolute_paths(run.cfg)
    started = init_ray(cfg)
    storage = Run(cfg).ray_storage.resolve()
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config={"config": to_dict(cfg)},
        torch_config=BoundStoreTorchConfig(backend="nccl" if cfg.dist.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.dist.num_workers,
            use_gpu=cfg.dist.use_gpu,
            resources_per_worker={"CPU": cfg.dist.cpus_per_worker, **({"GPU": 1} if cfg.dist.use_gpu else {})},
            placement_strategy=cfg.dist.placement_strategy,
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.dist.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.dist.keep_checkpoints),
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
    )
    try:
        return trainer.fit()
    finally:
        if started:
            ray.shutdown()


def _worker_env(cfg: Config) -> dict[str, str]:
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           # DeepSpeed calls torch collectives that torch deprecates: once per step per rank.
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    if not cfg.dist.use_gpu:
        env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(cfg.dist.cpus_per_worker)})
    for k in ("TRITON_INTERPRET", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "CKF_FAULT_AT_STEP"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _run_recipe(run: Run, rank: int, world_size: int, engine: EngineFactory, node: Optional[str] = None) -> None:
    recipe = CKFRecipe(run, rank=rank, world_size=world_size, engine=engine,
                       checkpoints=RunCheckpoints(run.cfg.dist.keep_checkpoints), node=node)
    recipe.setup(resume_from=recipe.latest_checkpoint())
    try:
        recipe.train()
    finally:
        recipe.cleanup()


def run_local(run: Run) -> None:
    _run_recipe(run, 0, 1, LocalEngineFactory())


def run_deepspeed_process(run: Run) -> None:
    """One process started by the `deepspeed` launcher (RANK / WORLD_SIZE from the environment)."""
    import socket

    import torch.distributed as dist

    from ckf_dist.train.rendezvous import init_from_env

    cfg = run.cfg
    started = not dist.is_initialized()
    if started:
        init_from_env("nccl" if cfg.dist.use_gpu else "gloo")
    # the launcher's node rank (CROSS_RANK): hosts may share a name, e.g. several nodes on one machine
    node = f"{socket.gethostname()}/node-{os.environ.get('CROSS_RANK', '0')}"
    try:
        _run_recipe(run, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), DeepSpeedEngineFactory(), node)
        if started:
            dist.barrier()  # every rank is done before rank 0, which serves the rendezvous store, leaves
    finally:
        if started and dist.is_initialized():
            # an orderly teardown: a process that exits with the group's threads alive can abort
            # ("terminate called without an active exception")
            dist.destroy_process_group()


def launch(run: Run | Config) -> None:
    """Dispatch on `dist.launcher` (a Config means the run of its run.dir)."""
    run = run if isinstance(run, Run) else Run(run)
    cfg = run.cfg
    if cfg.dist.launcher == "local":
        run_local(run)
    elif cfg.dist.launcher == "ray":
        fit_ray(run)
    else:
        if "RANK" not in os.environ:
            raise ConfigError(
                "dist.launcher=deepspeed: start with `deepspeed --hostfile FILE --module ckf_dist.train --config FILE` (see cluster/)"
            )
        run_deepspeed_process(run)
