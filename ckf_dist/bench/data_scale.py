"""Scale benchmark of data preparation: ``ckf bench data [--config FILE] [--quick] [--out DIR] [key=value ...]``.

Prepares the synthetic data set at several sizes (``bench.sizes`` nominal interactions, at
``bench.per_user`` interactions per user: ``data.synthetic.num_users = size / per_user``, and
``bench.items`` items) with each engine: ``local`` (one process) and ``ray`` with each of
``bench.workers`` workers (a local Ray with that many CPUs). Every measurement runs in a fresh
child process (`ckf_dist.bench.data_scale --child`), so each peak is its own; the parent samples
the resident memory of the child's whole process tree (the driver, and for Ray its raylet, GCS and
workers) every ``SAMPLE_S`` seconds, and its CPU time. Rows: wall time of the preparation (and
of the child process, Ray's start included), CPU seconds of the process tree (on a shared
machine the wall time follows the load; the CPU time much less), interactions per second,
peak RSS of the driver (its own ``ru_maxrss``), of the largest task worker (``ru_maxrss`` reported
by the tasks) and of any process of the tree (sampled), samples and shard volume. Then, per
engine and worker count, the slope of time and of memory against size (the exponent of a
log-log fit: 1 = linear, 0 = flat) and the checks of the scale target between the two largest
sizes: driver peak RSS flat within 20%, time per interaction flat within 25%, and at the largest
size no process above 3 GB.

The config (default ``configs/quickstart.yaml``: all five tasks) and ``key=value`` overrides set
everything else; the default adds ``data.samples_per_user=4`` (the training-sample cap the
first measurements of this pipeline used), which keeps the shard volume of the largest size a
few GB. Each size's run folder is deleted after its row is taken (``bench.keep=true`` keeps them).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

from ckf_dist.bench.poller import Poller
from ckf_dist.config import ConfigError

SAMPLE_S = 0.25
GIB = 1024.0
TARGETS = {"driver_rss_flat": 0.20, "time_per_interaction_flat": 0.25, "max_process_mb": 3 * 1024.0}
DEFAULT_OVERRIDES = ["data.samples_per_user=4"]


@dataclass
class DataBenchOptions:
    sizes: list[int] = field(default_factory=lambda: [250_000, 1_000_000, 4_000_000])
    """Nominal interactions (users = size / per_user)."""
    engines: list[str] = field(default_factory=lambda: ["local", "ray"])
    workers: list[int] = field(default_factory=lambda: [1, 2])
    """Ray worker counts (CPUs of the local Ray) measured for engine ray."""
    per_user: int = 50
    """data.synthetic.interactions_per_user."""
    items: int = 5000
    """data.synthetic.num_items."""
    keep: bool = False
    """Keep each run's folder (split table and shards)."""


QUICK = {"sizes": [20_000, 80_000], "workers": [1, 2], "items": 500}


def parse_options(overrides: Sequence[str], quick: bool) -> tuple[list[str], DataBenchOptions]:
    """Separate ``bench.<key>=value`` options (checked, typed) from config overrides."""
    import yaml

    names = {f.name for f in fields(DataBenchOptions)}
    config, raw = [], dict(QUICK) if quick else {}
    for text in overrides:
        if not text.startswith("bench."):
            config.append(text)
            continue
        key, sep, value = text.partition("=")
        name = key[len("bench."):]
        if name not in names or not sep:
            raise ConfigError(f"command line: unknown bench option {key!r} (known: {', '.join(sorted('bench.' + n for n in names))})")
        raw[name] = yaml.safe_load(value)
    for name in ("sizes", "workers"):
        if name in raw:
            v = raw[name]
            v = [v] if isinstance(v, int) else v
            if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
                raise ConfigError(f"command line: bench.{name}: expected a list of positive integers, got {raw[name]!r}")
            raw[name] = v
    if "engines" in raw:
        v = [raw["engines"]] if isinstance(raw["engines"], str) else raw["engines"]
        if not isinstance(v, list) or not v or any(e not in ("local", "ray") for e in v):
            raise ConfigError(f"command line: bench.engines: expected a list of local / ray, got {raw['engines']!r}")
        raw["engines"] = v
    for name in ("per_user", "items"):
        if name in raw and not (isinstance(raw[name], int) and not isinstance(raw[name], bool) and raw[name] >= 1):
            raise ConfigError(f"command line: bench.{name}: expected a positive integer, got {raw[name]!r}")
    if "keep" in raw and not isinstance(raw["keep"], bool):
        raise ConfigError(f"command line: bench.keep: expected true or false, got {raw['keep']!r}")
    return config, DataBenchOptions(**raw)


# ---------------------------------------------------------------------------------------- child
def child_main(spec: dict) -> None:
    """One measurement in this (fresh) process: prints one JSON line with the preparation's stats."""
    from ckf_dist.config import load_config
    from ckf_dist.data.prepare import prepare
    from ckf_dist.data.shards import load_manifest

    cfg = load_config(spec["config"], spec["overrides"])
    run = Path(cfg.run.dir)
    stats: dict = {}
    summary = prepare(cfg, run / "split", run / "shards", run / "staging", "bench", stats)
    manifest = load_manifest(run / "shards")
    stats["samples"] = sum(m["samples"] for m in manifest["splits"].values())
    stats["shard_mb"] = sum(s["bytes"] for m in manifest["splits"].values() for s in m["shards"]) / 2**20
    stats["users"] = summary["users"]
    print("BENCH-RESULT " + json.dumps(stats), flush=True)


class TreeWatch(Poller):
    """Samples the RSS and CPU time of a process and all its descendants; keeps each process's
    peak RSS and last CPU time (user + system)."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(SAMPLE_S)
        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, float]] = {}
        self.cpu: dict[int, float] = {}

    def sample(self) -> bool:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return False
        for p in procs:
            try:
                mb = p.memory_info().rss / 2**20
                name = p.name()
                t = p.cpu_times()
                self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:
                continue
            if mb > self.peaks.get(p.pid, ("", 0.0))[1]:
                self.peaks[p.pid] = (name, mb)
        return True

    def cpu_seconds(self) -> float:
        """CPU seconds of the tree (a process's time after its last sample is missed)."""
        return sum(self.cpu.values())

    def largest(self) -> tuple[str, float]:
        return max(self.peaks.values(), key=lambda x: x[1], default=("", 0.0))


def measure(config: str, overrides: list[str], opts: DataBenchOptions, size: int, engine: str, workers: int,
            out: Path) -> dict:
    users = max(1, size // opts.per_user)
    run_dir = out / f"run-{engine}-w{workers}-{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = {"config": config, "overrides": [
        *DEFAULT_OVERRIDES, *overrides, f"data.synthetic.num_users={users}", f"data.synthetic.num_items={opts.items}",
        f"data.synthetic.interactions_per_user={opts.per_user}", f"data.engine={engine}", f"data.workers={workers}",
        f"run.dir={run_dir}"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ckf_dist.bench.data_scale", "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with TreeWatch(proc.pid) as watch:
        output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bench data {engine} w{workers} {size}: exit {proc.returncode}\n{output[-3000:]}")
    line = next(x for x in output.splitlines() if x.startswith("BENCH-RESULT "))
    stats = json.loads(line[len("BENCH-RESULT "):])
    if not opts.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    name, top = watch.largest()
    n = stats["interactions"]
    return {
        "engine": engine, "workers": workers, "size": size, "users": stats["users"], "interactions": n,
        "seconds": round(stats["seconds"], 2), "process_seconds": round(wall, 2),
        "cpu_s": round(watch.cpu_seconds(), 1), "cpu_us_per_interaction": round(1e6 * watch.cpu_seconds() / n, 1),
        "interactions_per_s": round(n / stats["seconds"], 1), "us_per_interaction": round(1e6 * stats["seconds"] / n, 2),
        "driver_peak_mb": round(stats["driver_peak_mb"], 1), "worker_peak_mb": round(stats["worker_peak_mb"], 1),
        "max_process_mb": round(top, 1), "max_process": name, "samples": stats["samples"],
        "shard_mb": round(stats["shard_mb"], 1), "read_tasks": stats["read_tasks"],
        **{f"{k}_s": round(v, 2) for k, v in stats["timings"].items()},
    }


def slope(xs: list[float], ys: list[float]) -> Optional[float]:
    """Exponent b of y ~ x^b (least squares in log-log); None with fewer than two sizes."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / var, 3) if var else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per engine and worker count: slopes against size and the target checks between the two largest sizes."""
    out = []
    for key in dict.fromkeys((r["engine"], r["workers"]) for r in rows):
        series = sorted((r for r in rows if (r["engine"], r["workers"]) == key), key=lambda r: r["interactions"])
        xs = [r["interactions"] for r in series]
        s = {"engine": key[0], "workers": key[1],
             "time_slope": slope(xs, [r["seconds"] for r in series]),
             "driver_rss_slope": slope(xs, [r["driver_peak_mb"] for r in series]),
             "max_rss_slope": slope(xs, [r["max_process_mb"] for r in series])}
        if len(series) >= 2:
            a, b = series[-2], series[-1]
            s["driver_rss_change"] = round(b["driver_peak_mb"] / a["driver_peak_mb"] - 1, 3)
            s["time_per_interaction_change"] = round(b["us_per_interaction"] / a["us_per_interaction"] - 1, 3)
            s["driver_rss_flat"] = abs(s["driver_rss_change"]) <= TARGETS["driver_rss_flat"]
            s["time_per_interaction_flat"] = abs(s["time_per_interaction_change"]) <= TARGETS["time_per_interaction_flat"]
        s["largest_max_process_mb"] = series[-1]["max_process_mb"]
        s["under_3gb"] = series[-1]["max_process_mb"] <= TARGETS["max_process_mb"]
        out.append(s)
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    lines = ["| engine | workers | interactions | wall s (Ray start) | interactions/s | us/interaction | CPU us/interaction | "
             "driver peak MB | largest worker MB | largest process MB | samples | shards MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['interactions']:,} | {r['seconds']:.1f} ({r['start_s']:.1f}) | "
                     f"{r['interactions_per_s']:,.0f} | {r['us_per_interaction']:.1f} | {r['cpu_us_per_interaction']:.1f} | "
                     f"{r['driver_peak_mb']:.0f} | {r['worker_peak_mb']:.0f} | "
                     f"{r['max_process_mb']:.0f} ({r['max_process']}) | {r['samples']:,} | {r['shard_mb']:.0f} |")
    lines += ["", "| engine | workers | time slope | driver RSS slope | largest-process RSS slope | driver RSS change | "
              "time/interaction change | largest process at top size MB |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['engine']} | {s['workers']} | {s['time_slope']} | {s['driver_rss_slope']} | {s['max_rss_slope']} | "
                     f"{s.get('driver_rss_change')} | {s.get('time_per_interaction_change')} | {s['largest_max_process_mb']:.0f} |")
    return "\n".join(lines)


def run_data_bench(config: str, quick: bool, out: Path, overrides: list[str]) -> dict:
    from ckf_dist.bench.common import device_name, load_avg, utc_date, write_rows

    overrides, opts = parse_options(overrides, quick)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(e, w) for e in opts.engines for w in (opts.workers if e == "ray" else [1])]
    rows = []
    for size in opts.sizes:
        for engine, workers in plan:
            row = measure(config, overrides, opts, size, engine, workers, out)
            print(f"{engine:5s} w{workers} {row['interactions']:>9,} interactions: {row['seconds']:7.1f} s ({row['cpu_s']:.0f} CPU s), "
                  f"{row['interactions_per_s']:9,.0f}/s, driver {row['driver_peak_mb']:6.0f} MB, "
                  f"worker {row['worker_peak_mb']:6.0f} MB, largest {row['max_process_mb']:6.0f} MB ({row['max_process']})", flush=True)
            rows.append(row)
    summary = summarize(rows)
    result = {"date": utc_date(), "machine": {"cpu": device_name("cpu"), "cores": os.cpu_count(), "load_avg_end": load_avg()},
              "config": config, "overrides": [*DEFAULT_OVERRIDES, *overrides], "options": asdict(opts), "rows": rows,
              "summary": summary, "targets": TARGETS}
    write_rows(out, "data_scale", rows, result)
    table = markdown(rows, summary)
    (out / "data_scale.md").write_text(table + "\n")
    print(table)
    return result


def cmd_bench_data(args) -> int:
    run_data_bench(args.config, args.quick, Path(args.out), list(args.overrides or []))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        child_main(json.loads(sys.argv[2]))
    else:
        raise SystemExit("usage: ckf bench data [--config FILE] [--quick] [--out DIR] [key=value ...]")
