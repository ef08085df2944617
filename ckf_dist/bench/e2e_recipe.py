"""``ckf bench e2e`` measurements of the real recipe: local launcher and Ray, from its own metrics.

Owns: the bench's run.dir (claimed with a marker file; only a claimed run.dir has its training
outputs deleted between measurements), the cached inputs (data, CF, tiny LLM), and reading the
recipe's ``perf/*`` windows from ``run.dir/train/tb/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ckf_dist.bench.common import load_avg
from ckf_dist.config import Config, ConfigError, load_config
from ckf_dist.run import Run
from ckf_dist.fsutil import atomic_write_text

MARKER = ".ckf_bench"
"""File the bench leaves in its run.dir: only such a run.dir has its training outputs deleted."""


def claim_run_dir(cfg: Config) -> None:
    """Refuse a run.dir holding someone's training run (the bench deletes train/ and ray/ between
    measurements); mark it as the bench's otherwise."""
    d = cfg.run_dir
    if not (d / MARKER).is_file() and Run(cfg).has_training():
        raise ConfigError(f"run.dir {d}: holds a training run the bench did not make (it would delete train/ and ray/); "
                          "give the bench its own run.dir")
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / MARKER, "run.dir of `ckf bench e2e`: train/ and ray/ are deleted before each measurement\n")


def _clean_training(cfg: Config) -> None:
    """Drop a previous measurement's training outputs so the next one starts fresh (no resume)."""
    claim_run_dir(cfg)
    Run(cfg).clear_training(whole=True)


def _windows(run_dir: Path) -> list[dict]:
    p = Run.at(run_dir).train_log
    if not p.is_file():
        return []
    return [r for r in (json.loads(x) for x in p.read_text().splitlines() if x.strip()) if "perf/tokens_per_s" in r]


def rates_from_metrics(run_dir: Path, warmup_windows: int = 1) -> dict[str, Any]:
    """Mean of the recipe's logged ``perf/*`` windows, the first ``warmup_windows`` dropped."""
    wins = _windows(run_dir)
    used = wins[warmup_windows:] if len(wins) > warmup_windows else wins[-1:]
    if not used:
        raise RuntimeError(f"{Run.at(run_dir).train_log}: no perf/tokens_per_s window logged")

    def mean(k: str) -> float:
        return float(statistics.fmean(r[k] for r in used if k in r))

    return {
        "tokens_per_s": mean("perf/tokens_per_s"),
        "samples_per_s": mean("perf/samples_per_s"),
        "tokens_per_s_per_worker": mean("perf/tokens_per_s_per_worker"),
        "data_wait_frac": mean("perf/data_wait_frac"),
        "step_s": mean("perf/step_s"),
        "windows": len(used),
        "window_tokens_per_s": [round(r["perf/tokens_per_s"], 1) for r in wins],
    }


# ------------------------------------------------------------------------------------------------
# Setup: data -> CF -> tiny LLM (cached in run.dir)
# ------------------------------------------------------------------------------------------------


def prepare_inputs(cfg: Config) -> None:
    from ckf_dist.pipeline import prepare_inputs as prepare

    run = Run(cfg)
    run.write_config()
    prepare(run)


# ------------------------------------------------------------------------------------------------
# (a) ckf_dist's recipe
# ------------------------------------------------------------------------------------------------


def measure_recipe(cfg: Config) -> dict[str, Any]:
    """Run the recipe through its launcher from scratch; rates from its metrics.jsonl."""
    from ckf_dist.train.launch import launch

    _clean_training(cfg)
    t0 = time.perf_counter()
    launch(Run(cfg))
    out = rates_from_metrics(cfg.run_dir)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["load_avg_1m"] = load_avg()
    return out


# ------------------------------------------------------------------------------------------------
# (b) Ray: 1 vs 2 workers
# ------------------------------------------------------------------------------------------------


def measure_ray(config: Optional[str], base: Sequence[str], workers: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The recipe under dist.launcher=ray for each worker count (one local Ray cluster, on 127.0.0.1)."""
    for k, v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("DS_ACCELERATOR", "cpu"), ("GLOO_SOCKET_IFNAME", "lo"),
                 ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(k, v)
    import ray

    from ckf_dist.train.launch import init_ray

    started = not ray.is_initialized()
    out: dict[int, dict[str, Any]] = {}
    try:
        # Start the local cluster sized for the largest worker count (later fits reuse it).
        init_ray(load_config(config, [*base, "dist.launcher=ray", f"dist.num_workers={max(workers)}"]))
        for n in workers:
            cfg = load_config(config, [*base, "dist.launcher=ray", f"dist.num_workers={n}"])
            out[n] = measure_recipe(cfg)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    return out


