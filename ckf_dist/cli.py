"""`ckf`: the command-line entry point.

Verbs, grouped by stage:
    ckf data prepare  --config FILE [key=value ...]   load, split, build samples, write shards
    ckf data download movielens-100k|movielens-1m|movielens-latest-small|movielens-25m|movielens-32m [--dest DIR]
    ckf cf train      --config FILE [key=value ...]   CF backbone + baselines table
    ckf model init-tiny --config FILE [key=value ...] the embedded tiny LLM
    ckf train         --config FILE [key=value ...]   every stage, end to end
    ckf eval          --run DIR                       evaluate a finished run
    ckf recommend     --run DIR --user ID [--k N]     CF retrieval + LLM re-ranking
    ckf report        RUN_DIR ...                     one markdown table over runs and seeds
    ckf sweep         --grid FILE [--out DIR] [--max-concurrent N] [--dry-run]
                                                      variants x seeds as Ray Tune trials, one table
    ckf bench         kernels|e2e|data ...            benchmarks
    ckf cluster check-hostfile --hostfile FILE --config FILE [key=value ...]
                                                      validate a deepspeed hostfile against a config
    ckf config keys                                   every config key with its documentation

Commands that build from a config take `--config FILE` then `key.sub=value` overrides;
commands that read a finished run take `--run DIR`. Expected failures (bad config, bad data,
missing files, a run directory another command holds, a stale stage) print one line
`error: ...` and exit with status 2.

A command that writes into a run directory holds its lock for its whole life; one that only
reads it (`recommend`, `report`) holds a shared lock while it reads. `--wait` waits for the
holder instead of stopping.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from ckf_dist.config import ConfigError, field_docs, load_config
from ckf_dist.data.download import URLS as DOWNLOADS
from ckf_dist.run import Run, release_locks

log = logging.getLogger("ckf_dist.cli")

WAIT_HELP = "if another command holds the run directory, wait for it instead of stopping"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML file in configs/ (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, applied after the file")
    p.add_argument("--force", action="store_true", help="rerun the stage even if its cached output is up to date")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)


def _load(args) -> Run:
    """The run of `--config FILE key=value ...`, locked for writing for the rest of the command,
    its resolved config written into run.dir."""
    run = Run(load_config(args.config, args.overrides))
    exposure = run.cfg.dist.exposure()
    if exposure:
        log.warning(exposure)
    run.lock_for_writing(wait=args.wait)
    run.write_config()
    return run


def _open(args, write: bool) -> Run:
    """The finished run of `--run DIR`, under its lock (exclusive when the command writes into it)."""
    Run.open(args.run)  # one line when it is not a run directory, before any lock file is made
    at = Run.at(args.run)
    at.lock_for_writing(wait=args.wait) if write else at.lock_for_reading(wait=args.wait)
    return Run.open(args.run)  # its config as the lock holder left it


def cmd_data_prepare(args) -> int:
    from ckf_dist.pipeline import prepare_data

    run = _load(args)
    summary = prepare_data(run, force=args.force)
    _print_data_summary(run, summary)
    return 0


def _print_data_summary(run: Run, s: dict) -> None:
    print(f"dataset {s['dataset']}: {s['users']} users, {s['items']} items, "
          f"interactions train/valid/test = {s['interactions']['train']}/{s['interactions']['valid']}/{s['interactions']['test']}, "
          f"cold users {s['cold_users']}")
    for split, per_task in s["samples"].items():
        tasks = ", ".join(f"{t} {n}" for t, n in per_task.items())
        print(f"  {split}: {sum(per_task.values())} samples in {s['shards'][split]} shards ({tasks})")
    if s.get("skipped"):
        print("  skipped records: " + ", ".join(f"{k}: {v}" for k, v in s["skipped"].items()))
    print(f"shards: {run.shards_dir}")


def cmd_data_download(args) -> int:
    from ckf_dist.data.download import FORMAT_OF, download

    path = download(args.name, Path(args.dest))
    print(f"downloaded {args.name} to {path} (data.format={FORMAT_OF[args.name]} data.path={path})")
    return 0


def cmd_cf_train(args) -> int:
    from ckf_dist.pipeline import train_cf_stage

    run = _load(args)
    summary = train_cf_stage(run, force=args.force)
    print(summary["table"])
    print(f"CF tables and baselines: {run.cf_dir}")
    return 0


def cmd_init_tiny(args) -> int:
    from ckf_dist.pipeline import ensure_tiny

    out = ensure_tiny(_load(args), force=args.force)
    print(f"tiny LLM: {out}")
    return 0


def cmd_train(args) -> int:
    """Every stage it depends on when missing or stale (data -> CF -> tiny LLM when model.path is
    unset -> CKF training -> evaluation), each cached in run.dir; an interrupted training with the
    same configuration resumes from its latest checkpoint."""
    from ckf_dist.pipeline import run_all

    run = _load(args)
    summary = run_all(run, force=args.force)
    data = summary["data"]
    print(f"data: {data['users']} users, {data['items']} items, samples " +
          ", ".join(f"{s} {sum(v.values())}" for s, v in data["samples"].items()))
    print("\nCF and popularity baselines (test):")
    print(summary["cf"]["table"])
    from ckf_dist.eval.report import variant_name

    print(f"\n{variant_name(run.cfg)} (test):")
    print(run.metrics_markdown("test").read_text())
    print(f"run: {run.dir}  ({run.metrics_file().name}, {run.tb_dir.relative_to(run.dir)} for TensorBoard, {run.config_file.name})")
    return 0


def cmd_eval(args) -> int:
    from ckf_dist.eval.loop import metrics_markdown, write_metrics
    from ckf_dist.eval.serve import evaluate_run

    if args.workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {args.workers}")
    run = _open(args, write=True)  # writes metrics*.json
    if args.workers:
        from ckf_dist.eval.distributed import evaluate_run_distributed

        metrics = evaluate_run_distributed(run, args.split, args.workers)
    else:
        metrics = evaluate_run(run, args.split)
    write_metrics(metrics, run.metrics_file(args.split))
    print(metrics_markdown(metrics, f"{args.split} metrics"))
    return 0


def cmd_recommend(args) -> int:
    from ckf_dist.eval.serve import recommend

    for flag, value in (("--k", args.k), ("--candidates", args.candidates)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1 (got {value})")
    res = recommend(_open(args, write=False), args.user, args.k, args.candidates)
    print(f"top {len(res['items'])} for user {res['user']} (CF retrieval of {args.candidates}, LLM re-ranking):")
    for rank, it in enumerate(res["items"], 1):
        print(f"{rank:>3}. {it['title']}  (item {it['item']}, log-likelihood {it['score']:.3f})")
    if "explanation" in res:
        print(f"why the first: {res['explanation']}")
    return 0


def cmd_cluster_check_hostfile(args) -> int:
    from ckf_dist.train.hostfile import check_launch

    cfg = load_config(args.config, args.overrides)
    hosts, world = check_launch(args.hostfile, cfg, on_gpu=cfg.dist.use_gpu)
    ds_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    print(f"{args.hostfile}: {len(hosts)} node(s), {world} rank(s); global batch {ds_batch} "
          f"(micro {cfg.train.micro_batch_size} x accum {cfg.train.grad_accum} x {world})")
    return 0


def cmd_config_keys(args) -> int:
    for key, doc in field_docs().items():
        print(f"{key}: {doc}")
    return 0


def _not_yet(name: str) -> Callable:
    def run(args) -> int:
        raise ConfigError(f"`ckf {name}` is not available in this version")

    return run


def _resolve(name: str, fallback: Callable) -> Callable:
    """Commands implemented in later modules plug in here when present."""
    import importlib

    module, _, attr = name.rpartition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("ckf_dist"):
            return fallback
        raise
    return getattr(mod, attr, fallback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckf", description="CKF: LLM-based multi-task recommendation, distributed.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="group", required=True)

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="verb", required=True)
    p = data.add_parser("prepare", help="load, split, build samples and write webdataset shards")
    _config_args(p)
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("download", help="download a public dataset (needs internet)")
    p.add_argument("name", choices=list(DOWNLOADS))
    p.add_argument("--dest", default="data", help="folder to extract into (default: data/)")
    p.set_defaults(func=cmd_data_download)

    cf = sub.add_parser("cf", help="collaborative-filtering backbone").add_subparsers(dest="verb", required=True)
    p = cf.add_parser("train", help="train the CF backbone and the CF/popularity baselines")
    _config_args(p)
    p.set_defaults(func=cmd_cf_train)

    model = sub.add_parser("model", help="base LLM").add_subparsers(dest="verb", required=True)
    p = model.add_parser("init-tiny", help="write the embedded tiny LLM (tokenizer + pre-trained LLaMA-architecture model)")
    _config_args(p)
    p.set_defaults(func=cmd_init_tiny)

    p = sub.add_parser("train", help="every stage end to end: data, CF, tiny LLM, CKF training, evaluation")
    _config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--workers", type=int, default=0,
                   help="score on N Ray workers (Ray Data batch inference; 0 = in this process)")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("recommend", help="CF retrieval + LLM re-ranking for one user")
    p.add_argument("--run", required=True)
    p.add_argument("--user", required=True, help="raw user id as in the dataset")
    p.add_argument("--k", type=int, default=10, help="items to list (>= 1)")
    p.add_argument("--candidates", type=int, default=100, help="CF candidates the LLM re-ranks (>= 1)")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", help="collect runs into one markdown table (mean ± sd over seeds)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--wait", action="store_true", help="wait for runs being written instead of leaving them out")
    p.set_defaults(func=_resolve("ckf_dist.eval.report:cmd_report", _not_yet("report")))

    p = sub.add_parser("sweep", help="a grid of variants x seeds as parallel Ray Tune trials; one mean ± sd table, resumable")
    p.add_argument("--grid", "-g", required=True, help="grid YAML (configs/sweeps/*.yaml)")
    p.add_argument("--out", help="sweep folder (default: the grid's `out`)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cores / GPUs allow)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1 for dist.launcher=local)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default 1 when CUDA is visible, else 0)")
    p.add_argument("--seeds", help="comma-separated seeds for every variant, in place of the grid's (e.g. 0,1,2)")
    p.add_argument("--variants", help="comma-separated variant names: run and report only these")
    p.add_argument("--dry-run", action="store_true", help="list the trials, their status and commands; run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild results.md/json, the plot and tb/ from finished trials")
    p.set_defaults(func=_resolve("ckf_dist.sweep:cmd_sweep", _not_yet("sweep")))

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="verb", required=True)
    p = bench.add_parser("kernels", help="multi_lora and meta_proj vs their torch baselines")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a tiny grid that runs in seconds")
    p.add_argument("--out", default="runs/bench/kernels")
    p.set_defaults(func=cmd_bench_kernels)

    p = bench.add_parser("e2e", help="training throughput: ckf_dist vs a per-task HF + PEFT loop, 1 vs 2 workers, data pipeline")
    p.add_argument("--config", "-c", default="configs/quickstart.yaml")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a few steps only (seconds to a minute)")
    p.add_argument("--out", default="runs/bench/e2e")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_resolve("ckf_dist.bench.e2e:cmd_bench_e2e", _not_yet("bench e2e")))

    p = bench.add_parser("data", help="data preparation at 250k / 1M / 4M interactions: both engines, 1 and 2 Ray workers, time and memory slopes")
    p.add_argument("--config", "-c", default="configs/quickstart.yaml")
    p.add_argument("--quick", action="store_true", help="two small sizes (about a minute)")
    p.add_argument("--out", default="runs/bench/data")
    p.add_argument("overrides", nargs="*", help="config overrides and bench.<key>=value options")
    p.set_defaults(func=_resolve("ckf_dist.bench.data_scale:cmd_bench_data", _not_yet("bench data")))

    cl = sub.add_parser("cluster", help="launch checks").add_subparsers(dest="verb", required=True)
    p = cl.add_parser("check-hostfile", help="validate a deepspeed hostfile and its world size against the batch settings")
    p.add_argument("--hostfile", required=True)
    p.add_argument("--config", "-c")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_cluster_check_hostfile)

    cfgp = sub.add_parser("config", help="configuration").add_subparsers(dest="verb", required=True)
    p = cfgp.add_parser("keys", help="list every key with its documentation")
    p.set_defaults(func=cmd_config_keys)
    return parser


def cmd_bench_kernels(args) -> int:
    from ckf_dist.bench.kernels import run_kernel_bench

    run_kernel_bench(args.device, args.quick, Path(args.out))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    expected: tuple = (ConfigError, FileNotFoundError)
    try:
        from ckf_dist.data.errors import DataError
        from ckf_dist.train.errors import TrainingError

        expected = expected + (DataError, TrainingError)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except expected as e:
        if args.verbose:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        release_locks()


if __name__ == "__main__":
    sys.exit(main())
