"""`ckf sweep --grid FILE`: run a grid of variants x seeds as parallel Ray Tune trials, resumably.

Each trial is `ckf train --config CONFIG <overrides> seed=S run.dir=<out>/<variant>-s<seed>` in a
subprocess of its Tune trial (own torch threads: OMP_NUM_THREADS = the trial's CPUs; dies with
the trial), so a trial is exactly what `ckf train` would do by hand, stage cache included.
Trials whose run dir already holds metrics.json for the same resolved config (and fresh cached
stages) are not launched again: rerunning the command finishes a half-done grid.

Ray starts a local cluster on 127.0.0.1 sized to the cores this process may use, unless
RAY_ADDRESS or the grid's `dist.ray_address` names one. Tune's own records go to <out>/tune.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ckf_dist.config import Config, ConfigError
from ckf_dist.run import Run
from ckf_dist.sweep.grid import REPORTED_STATUSES, Grid, GridError, Trial, load_grid, trial_status
from ckf_dist.sweep.report import (
    aggregate, flat_metrics, plot_validation, read_curves, results_markdown, table_json, trial_record, write_tensorboard,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The trial (runs inside a Ray worker)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errs = [ln for ln in text if ln.startswith("error:") or "Error" in ln]
    return (errs[-1] if errs else " | ".join(text[-lines:]))[:400]


def run_trial(config: dict) -> None:
    """Tune function trainable: one `ckf train` subprocess, then its test metrics as the result."""
    import subprocess

    from ray import tune

    spec = config["trial"]
    run = Run.at(spec["run_dir"])
    run.dir.mkdir(parents=True, exist_ok=True)
    log_path = run.trial_log()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a trial's own Ray (dist.launcher=ray) is a separate local cluster
    threads = str(max(1, int(spec["cpus"])))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    argv = [sys.executable, "-m", "ckf_dist.sweep._child", str(os.getpid()), *spec["args"]]
    t0 = time.time()
    with open(log_path, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ckf {' '.join(spec['args'])}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=spec["cwd"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if rc != 0:
        raise RuntimeError(f"`ckf train` exited with status {rc} ({_tail(log_path)}); log: {log_path}")
    metrics = json.loads(run.metrics_file().read_text())
    tune.report({"trial_seconds": time.time() - t0, **flat_metrics(metrics)})


# --------------------------------------------------------------------------------------------
# Resources and Ray


@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    cores: int
    gpus: int


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def plan_resources(grid: Grid, configs: list[Config], n_trials: int, cpus: Optional[float], gpus: Optional[float],
                   max_concurrent: Optional[int], cores: Optional[int] = None, n_gpus: Optional[int] = None) -> Resources:
    """Per-trial CPUs/GPUs and the number of trials at once: command line, then grid, then
    defaults (1 CPU per local-launcher trial, num_workers x cpus_per_worker otherwise; one GPU
    when CUDA is visible; as many trials as cores / GPUs allow)."""
    cores = available_cores() if cores is None else cores
    n_gpus = _cuda_devices() if n_gpus is None else n_gpus

    def need_cpus(c: Config) -> float:
        return 1.0 if c.dist.launcher == "local" else float(c.dist.num_workers * c.dist.cpus_per_worker)

    cpt = cpus if cpus is not None else grid.cpus_per_trial
    if cpt is None:
        cpt = max((need_cpus(c) for c in configs), default=1.0)
    gpt = gpus if gpus is not None else grid.gpus_per_trial
    if gpt is None:
        gpt = 1.0 if n_gpus > 0 else 0.0
    if cpt <= 0:
        raise ConfigError(f"--cpus-per-trial: must be > 0, got {cpt}")
    if gpt > 0 and n_gpus == 0 and not os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"--gpus-per-trial: {gpt} GPU(s) per trial asked, but no CUDA device is visible")
    limit = max(1, math.floor(cores / cpt))
    if gpt > 0 and n_gpus > 0:
        limit = min(limit, max(1, math.floor(n_gpus / gpt)))
    mc = max_concurrent if max_concurrent is not None else grid.max_concurrent
    conc = int(mc) if mc is not None else limit
    return Resources(float(cpt), float(gpt), max(1, min(conc, max(1, n_trials))), cores, n_gpus)


def _init_ray(address: Optional[str], res: Resources) -> bool:
    """Connect to `address` or start a local cluster on 127.0.0.1; True when this call started one."""
    import ray

    from ckf_dist.train.launch import _check_reachable

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(f"dist.ray_address: cannot reach Ray at {address} ({str(e).splitlines()[0]})") from None
        return False
    ray.init(
        address="local",
        num_cpus=max(res.cores, math.ceil(res.cpus_per_trial)),
        num_gpus=res.gpus,
        include_dashboard=False,  # Tune's function trials need no state API; trials start their own Ray if any
        log_to_driver=False,  # a trial's output goes to <run dir>/sweep-trial.log; failures are reported per trial
        _node_ip_address="127.0.0.1",
    )
    return True


def _callback_class():
    from ray import tune

    class Announce(tune.Callback):
        """One line per trial start, end and failure."""

        def __init__(self):
            self.t0: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            spec = trial.config["trial"]
            self.t0[spec["name"]] = time.time()
            print(f"[sweep] start  {spec['name']}  (log: {spec['run_dir']}/sweep-trial.log)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            spec = trial.config["trial"]
            took = time.time() - self.t0.get(spec["name"], time.time())
            res = trial.last_result or {}
            shown = ", ".join(f"{k[5:]} {res[k]:.4f}" for k in spec.get("show", []) if isinstance(res.get(k), (int, float)))
            print(f"[sweep] done   {spec['name']}  in {took:.0f} s" + (f": {shown}" if shown else ""), flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            spec = trial.config["trial"]
            print(f"[sweep] FAILED {spec['name']}  (log: {spec['run_dir']}/sweep-trial.log)", flush=True)

    return Announce()


def run_trials(grid: Grid, trials: list[Trial], res: Resources, address: Optional[str]) -> dict[str, str]:
    """Run `trials` on Ray Tune; returns {trial name: error line} for the failed ones."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no TensorBoard files of Tune's own in the sweep folder
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    cwd = str(Path.cwd())
    config_abs = str(Path(grid.config).resolve())
    show = [f"test/{m}" for m in grid.metrics[:3]]
    specs = [{"name": t.name, "variant": t.variant, "seed": t.seed, "run_dir": str(Path(t.run_dir).resolve()),
              "args": ["train", "--config", config_abs, *t.overrides], "cwd": cwd, "cpus": res.cpus_per_trial, "show": show}
             for t in trials]
    started = _init_ray(address, res)
    try:
        trainable = tune.with_resources(run_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=res.max_concurrent,
                trial_name_creator=lambda tr: tr.config["trial"]["name"],
                trial_dirname_creator=lambda tr: tr.config["trial"]["name"],
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(grid.out.resolve()),
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), _callback_class()],
                verbose=0,
            ),
        )
        grid_result = tuner.fit()
        errors: dict[str, str] = {}
        for r in grid_result:
            if r.error is not None:
                name = (r.config or {}).get("trial", {}).get("name", "?")
                msg = str(r.error).strip().splitlines()
                line = next((ln for ln in reversed(msg) if "`ckf train` exited" in ln), msg[-1] if msg else type(r.error).__name__)
                errors[name] = line.removeprefix("RuntimeError: ")
        return errors
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# Outputs


def write_outputs(grid: Grid, trials: list[Trial], statuses: dict[str, str], errors: dict[str, str],
                  configs: dict[str, Config]) -> dict:
    """results.json, results.md, validation.png and tb/ in the sweep folder; returns the results dict."""
    from ckf_dist.fsutil import atomic_write_text

    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "grid": str(grid.path), "config": grid.config, "out": str(out), "description": grid.description,
        "metrics": grid.metrics, "labels": {v.name: v.label for v in grid.variants.values()},
        "trials": [trial_record(t, statuses.get(t.name, "new"), errors.get(t.name)) for t in trials],
    }
    rows = aggregate(results)
    results["table"] = table_json(rows)
    curves = {t.name: read_curves(Path(t.run_dir)) for t in trials if statuses.get(t.name) in REPORTED_STATUSES}
    png = plot_validation(results, curves, out / "validation.png")
    results["plot"] = str(png) if png else None
    tb = write_tensorboard(grid, results, configs, out / "tb")
    results["tensorboard"] = [str(p) for p in tb]
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(out / "results.md", _markdown(grid, results, rows, png) + "\n")
    return results


def _markdown(grid: Grid, results: dict, rows: list[dict], png: Optional[Path]) -> str:
    counts: dict[str, int] = {}
    for t in results["trials"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines = [f"# Sweep `{grid.path}`", ""]
    if grid.description:
        lines += [grid.description.strip(), ""]
    lines += [f"`ckf sweep --grid {grid.path}` over `{grid.config}`: " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + " trial(s). Test split; cells are mean ± sd over seeds (sample sd), with the number of seeds;"
              " baselines are scored on the same test rows, one set per seed.", ""]
    lines.append(results_markdown(results, rows))
    lines.append("")
    stale = [t["name"] for t in results["trials"] if t["status"] == "stale"]
    if stale:
        lines += [f"Stale: {', '.join(stale)} finished with this config, but the code or the inputs changed since; "
                  "their metrics are in the tables above. Rerun the sweep to refresh them.", ""]
    if png is not None:
        lines += [f"![validation metrics against step]({png.name})", ""]
    else:
        lines += ["No validation curve: no trial logged `eval/*` records (set `train.eval_every` > 0).", ""]
    common = [o for o in results["trials"][0]["overrides"] if o in grid.overrides] if results["trials"] else []
    lines += [f"Trials: `ckf train --config {grid.config} {' '.join(common)}` followed by:", "",
              "| trial | status | overrides |", "|---|---|---|"]
    for t in results["trials"]:
        status = t["status"] + (f": {t['error']}" if t.get("error") else "")
        rest = [o for o in t["overrides"] if o not in common]
        lines.append(f"| {t['name']} | {status.replace('|', '/')} | `{' '.join(rest)}` |")
    lines += ["", f"TensorBoard: `tensorboard --logdir {grid.out / 'tb'}` (one run per trial, HParams tab)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command


def _int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GridError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _name_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def cmd_sweep(args) -> int:
    grid = load_grid(args.grid, out=args.out).select(_int_list(args.seeds, "--seeds"), _name_list(args.variants))
    base_trials = grid.trials()
    configs0 = {t.name: grid.resolve(t) for t in base_trials}
    address = os.environ.get("RAY_ADDRESS") or next((c.dist.ray_address for c in configs0.values() if c.dist.ray_address), None)
    res = plan_resources(grid, list(configs0.values()), len(base_trials), args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent)
    extra = ["dist.use_gpu=true"] if res.gpus_per_trial > 0 and "dist.use_gpu" not in grid.overridden_keys() else []
    trials = grid.trials(extra)
    configs = {t.name: grid.resolve(t) for t in trials}
    statuses = {t.name: trial_status(configs[t.name]) for t in trials}
    todo = [t for t in trials if statuses[t.name] != "done"]
    n_var = len(grid.variants)
    print(f"sweep {grid.path}: {len(trials)} trials ({n_var} variant{'s' if n_var != 1 else ''} x seeds) over {grid.config}; "
          f"{len(trials) - len(todo)} done, {len(todo)} to run; folder {grid.out}")
    common = [*extra, *grid.overrides]
    print(f"  every trial: ckf train --config {grid.config} {' '.join(common)} ...")
    for t in trials:
        print(f"  {t.name:<24} {statuses[t.name]:<8} ... {' '.join(t.overrides[len(common):])}")
    conc = min(res.max_concurrent, max(1, len(todo)))
    if todo and not args.report_only:
        print(f"Ray Tune: up to {conc} trial(s) at once, {res.cpus_per_trial:g} CPU + {res.gpus_per_trial:g} GPU each "
              f"({res.cores} cores, {res.gpus} GPU(s) here){'; Ray at ' + address if address else ''}")
    if args.dry_run:
        return 0
    errors: dict[str, str] = {}
    if todo and not args.report_only:
        grid.out.mkdir(parents=True, exist_ok=True)
        errors = run_trials(grid, todo, res, address)
        statuses = {t.name: trial_status(configs[t.name]) for t in trials}
        for name in errors:
            statuses[name] = "failed"
    results = write_outputs(grid, trials, statuses, errors, configs)
    print()
    print(results_markdown(results, aggregate(results)))
    print(f"\nresults: {grid.out / 'results.md'}, {grid.out / 'results.json'}"
          + (f", {results['plot']}" if results["plot"] else " (no validation records: no plot)"))
    print(f"TensorBoard: tensorboard --logdir {grid.out / 'tb'} --host 127.0.0.1")
    if errors:
        first = next(iter(errors.items()))
        print(f"error: {len(errors)} of {len(todo)} trial(s) failed (rerun to retry them); {first[0]}: {first[1]}", file=sys.stderr)
        return 1
    left = [t.name for t in trials if statuses[t.name] != "done"]
    if left and not args.report_only:
        print(f"error: {len(left)} trial(s) not done: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}; "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


__all__ = ["cmd_sweep", "run_trial", "plan_resources", "write_outputs", "GridError"]
