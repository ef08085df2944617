"""What `ckf sweep` writes into the sweep folder once the trials ran.

- `results.json`: per trial its variant, seed, run dir, status, test metrics (`metrics.json`) and
  the CF / popularity baselines of that trial (`cf/baselines.json`, test split), plus the table;
- `results.md`: one table, rows = variants then baselines, cells "mean ± sd (n seeds)" over the
  seeds (sample sd); a second table of ctr AUC per user group (all / warm / cold / new) when
  `metrics.json` has those groups. Baselines are aggregated over the seeds of the grid too: each
  seed has its own data split and CF models (one baseline set per seed, from its first trial);
- `validation.png`: the validation metric (`eval/<task>/<metric>` records of each trial's
  `train/tb/metrics.jsonl`) against step, mean over seeds, one line per variant, one subplot per
  task's headline metric; skipped when no trial validated (`train.eval_every=0`);
- `tb/<variant>-s<seed>/`: one TensorBoard run per trial: its training scalars (mirrored from
  `metrics.jsonl`, tags as :func:`ckf_dist.telemetry.logger.tb_tag` files them), the test metrics
  as `test/<task>/<metric>`, and an HParams session (variant, seed, every key the grid overrides
  -> the test metrics).

The functions below take plain dicts (the shape of `results.json`) so they are testable without
running anything.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

from ckf_dist.sweep.grid import REPORTED_STATUSES, TASK_NAMES, Grid, Trial, config_value, finite
from ckf_dist.run import Run
from ckf_dist.fsutil import replace_dir, temp_dir_beside

log = logging.getLogger(__name__)

BASELINE_ORDER = ("popularity", "mf", "lightgcn")
PLOT_METRICS = ("ctr/auc", "topk/ndcg@10", "topk/ndcg@5", "topk/hr@1", "rating/rmse", "review_rating/rmse",
                "explanation/rougeL", "explanation/bleu4")
"""The validation metric plotted per task: the first of these recorded, else the grid's `metrics` order."""
GROUPS = ("all", "warm", "cold", "new")
LOWER_IS_BETTER = ("rmse", "mae")


# --------------------------------------------------------------------------------------------
# Collecting


def _read_json(p: Path) -> Optional[Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def read_baselines(run_dir: Path) -> Optional[dict]:
    """{model: {task: metrics}} on the test split, from run_dir/cf/baselines.json."""
    res = _read_json(Run.at(run_dir).baselines_json)
    if not isinstance(res, dict):
        return None
    res = res.get("results", {}).get("test", res) if "results" in res else res
    return res if isinstance(res, dict) else None


def _scalar_series(run_dir: Path, prefix: str = "") -> dict[str, dict[int, float]]:
    """Finite scalars of run_dir's training log whose name starts with `prefix` (prefix cut off):
    {name: {step: value}}; the last record of a step wins (as after a resume)."""
    p = Run.at(run_dir).train_log
    out: dict[str, dict[int, float]] = {}
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step = rec.pop("step", None)
        if not isinstance(step, int):
            continue
        for k, v in rec.items():
            if k.startswith(prefix) and finite(v) is not None:
                out.setdefault(k[len(prefix):], {})[step] = float(v)
    return out


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Validation records of a run: {"ctr/auc": {step: value}}."""
    return _scalar_series(run_dir, "eval/")


def trial_record(trial: Trial, status: str, error: Optional[str] = None) -> dict:
    rd = Path(trial.run_dir)
    metrics = _read_json(Run.at(rd).metrics_file()) if status in REPORTED_STATUSES else None
    rec = {
        "name": trial.name, "variant": trial.variant, "seed": trial.seed, "run_dir": trial.run_dir,
        "status": status, "overrides": trial.overrides,
        "metrics": metrics if isinstance(metrics, dict) else None,
        "baselines": read_baselines(rd) if status in REPORTED_STATUSES else None,
    }
    if error:
        rec["error"] = error
    log_file = Run.at(rd).trial_log()
    if log_file.is_file():
        rec["log"] = str(log_file)
    return rec


# --------------------------------------------------------------------------------------------
# Aggregating


def metric_value(metrics: Optional[dict], key: str) -> Optional[float]:
    """`ctr/auc` -> metrics["ctr"]["auc"]; `ctr/warm/auc` -> metrics["ctr"]["warm"]["auc"]."""
    cur: Any = metrics
    for part in key.split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return finite(cur)


def mean_sd(values: Iterable[Optional[float]]) -> Optional[tuple[float, Optional[float], int]]:
    """(mean, sample sd or None for one value, n) over the finite values; None if there are none."""
    vals = [v for v in (finite(x) for x in values) if v is not None]
    if not vals:
        return None
    n = len(vals)
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return m, sd, n


def format_cell(stats: Optional[tuple[float, Optional[float], int]]) -> str:
    """"0.7000 ± 0.1000 (3 seeds)", "0.7000 (1 seed)", or "–"."""
    if stats is None:
        return "–"
    m, sd, n = stats
    seeds = f"({n} seed{'s' if n != 1 else ''})"
    return f"{m:.4f} ± {sd:.4f} {seeds}" if sd is not None else f"{m:.4f} {seeds}"


def _group_keys(metrics_list: list[dict]) -> list[str]:
    present = {g for m in metrics_list for g in GROUPS[1:] if isinstance((m.get("ctr") or {}).get(g), dict)}
    return [g for g in GROUPS if g == "all" or g in present]


def aggregate(results: dict) -> list[dict]:
    """Table rows from a results dict (`results.json` shape): the variants in trial order, then
    the baselines (popularity, mf, lightgcn, others) over the distinct seeds of the done trials
    (per seed, each baseline model from the first done trial that reports it: the trials of one
    seed score the same rows, and a variant with another CF backbone adds that backbone's row).

    Row: {"name", "kind": "variant"|"baseline", "seeds": [...], "values": {metric key: [v per seed]}}
    with metric keys `task/metric` and `ctr/<group>/auc`."""
    keys = list(results.get("metrics") or [])
    done = [t for t in results.get("trials", []) if t.get("status") in REPORTED_STATUSES and isinstance(t.get("metrics"), dict)]
    group_keys = [f"ctr/{g}/auc" for g in _group_keys([t["metrics"] for t in done]) if g != "all"]
    all_keys = keys + [k for k in group_keys if k not in keys]
    labels = results.get("labels") or {}
    rows: dict[str, dict] = {}
    for t in done:
        r = rows.setdefault(t["variant"], {"name": labels.get(t["variant"], t["variant"]), "variant": t["variant"],
                                           "kind": "variant", "seeds": [], "values": {k: [] for k in all_keys}})
        r["seeds"].append(t["seed"])
        for k in all_keys:
            r["values"][k].append(metric_value(t["metrics"], k))
    by_seed: dict[int, dict] = {}
    for t in done:  # per seed, each model from the first trial that reports it (a backbone variant adds its own)
        if isinstance(t.get("baselines"), dict):
            seen = by_seed.setdefault(t["seed"], {})
            for name, v in t["baselines"].items():
                seen.setdefault(name, v)
    names = [n for n in BASELINE_ORDER if any(n in b for b in by_seed.values())]
    names += sorted({n for b in by_seed.values() for n in b} - set(names))
    base_rows = []
    for name in names:
        r = {"name": f"{name} (baseline)", "variant": None, "kind": "baseline", "model": name, "seeds": [], "values": {k: [] for k in all_keys}}
        for seed in sorted(by_seed):
            if name not in by_seed[seed]:
                continue
            r["seeds"].append(seed)
            for k in all_keys:
                r["values"][k].append(metric_value(by_seed[seed][name], k))
        base_rows.append(r)
    return list(rows.values()) + base_rows


def _label(key: str) -> str:
    return key.replace("/", " ")


def results_markdown(results: dict, rows: Optional[list[dict]] = None) -> str:
    """The headline table, and the ctr AUC by user group when the runs report groups."""
    rows = aggregate(results) if rows is None else rows
    keys = [k for k in results.get("metrics") or [] if any(mean_sd(r["values"].get(k, [])) for r in rows)]
    lines = []
    if not rows:
        return "No finished trial yet."
    lines.append("| model | " + " | ".join(_label(k) for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(format_cell(mean_sd(r["values"].get(k, []))) for k in keys) + " |")
    groups = [k for k in rows[0]["values"] if k.startswith("ctr/") and k.count("/") == 2
              and any(mean_sd(r["values"].get(k, [])) for r in rows)]
    if groups:
        cols = ["ctr/auc"] + groups
        lines += ["", "ctr AUC by user group:", ""]
        lines.append("| model | " + " | ".join("all" if k == "ctr/auc" else k.split("/")[1] for k in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for r in rows:
            lines.append(f"| {r['name']} | " + " | ".join(format_cell(mean_sd(r["values"].get(k, []))) for k in cols) + " |")
    return "\n".join(lines)


def table_json(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        stats = {}
        for k, vals in r["values"].items():
            s = mean_sd(vals)
            if s is not None:
                stats[k] = {"mean": s[0], "sd": s[1], "n": s[2], "values": vals}
        out.append({"name": r["name"], "kind": r["kind"], "variant": r.get("variant"), "seeds": r["seeds"], "metrics": stats})
    return out


# --------------------------------------------------------------------------------------------
# Validation curves


def curve_panels(results: dict, curves: dict[str, dict[str, dict[int, float]]]) -> list[tuple[str, dict[str, tuple[list[int], list[float], list[float], int]]]]:
    """[(metric key, {variant: (steps, mean, sd, n seeds)})], one panel per task: the task's first
    metric of `results["metrics"]` with validation records, else its first recorded metric."""
    done = [t for t in results.get("trials", []) if t.get("status") in REPORTED_STATUSES and curves.get(t["name"])]
    recorded = {k for t in done for k in curves[t["name"]]}
    tasks: list[str] = []
    for k in sorted(recorded):
        if k.split("/")[0] not in tasks:
            tasks.append(k.split("/")[0])
    order = ["ctr", "topk", "rating", "review_rating", "explanation"]
    tasks.sort(key=lambda t: order.index(t) if t in order else len(order))
    panels = []
    for task in tasks:
        prefs = [*PLOT_METRICS, *(results.get("metrics") or [])]
        key = next((k for k in prefs if k.startswith(task + "/") and k in recorded), None)
        key = key or sorted(k for k in recorded if k.startswith(task + "/"))[0]
        lines: dict[str, tuple] = {}
        variants = list(dict.fromkeys(t["variant"] for t in done))
        for v in variants:
            series = [curves[t["name"]].get(key, {}) for t in done if t["variant"] == v]
            series = [s for s in series if s]
            if not series:
                continue
            steps = sorted({s for c in series for s in c})
            means, sds = [], []
            for st in steps:
                m = mean_sd(c.get(st) for c in series)
                means.append(m[0])
                sds.append(m[1] or 0.0)
            lines[v] = (steps, means, sds, len(series))
        panels.append((key, lines))
    return panels


def plot_validation(results: dict, curves: dict[str, dict[str, dict[int, float]]], out: Path) -> Optional[Path]:
    """validation.png, or None (and no file) when no trial has validation records."""
    panels = [p for p in curve_panels(results, curves) if p[1]]
    if out.exists():
        out.unlink()
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = results.get("labels") or {}
    n = len(panels)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, (key, lines) in zip(axes.flat, panels):
        for v, (steps, means, sds, nseeds) in lines.items():
            line, = ax.plot(steps, means, marker="o", markersize=3, label=f"{labels.get(v, v)} ({nseeds} seed{'s' if nseeds != 1 else ''})")
            if nseeds > 1:
                ax.fill_between(steps, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)], color=line.get_color(), alpha=0.15)
        better = " (lower is better)" if key.split("/")[-1] in LOWER_IS_BETTER else ""
        ax.set_title(f"valid {key.replace('/', ' ')}{better}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{results.get('grid', '')}: validation metrics, mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------
# TensorBoard


def _hparam(v: Any) -> Any:
    if isinstance(v, bool):
        return str(v).lower()  # torch's hparams() would file a bool as a number
    if isinstance(v, (int, float, str)):
        return v
    return json.dumps(v, default=str)


def flat_metrics(metrics: dict, prefix: str = "test") -> dict[str, float]:
    """{"test/ctr/auc": v, "test/ctr/warm/auc": v, ...} for every finite number of metrics.json."""
    out = {}
    for task, m in (metrics or {}).items():
        if task not in TASK_NAMES or not isinstance(m, dict):  # not the protocol / training records
            continue
        for k, v in m.items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    if finite(v2) is not None and k2 != "n":
                        out[f"{prefix}/{task}/{k}/{k2}"] = float(v2)
            elif finite(v) is not None and k != "n":
                out[f"{prefix}/{task}/{k}"] = float(v)
    return out


def write_tensorboard(grid: Grid, results: dict, configs: dict[str, Any], tb_root: Path) -> list[Path]:
    """One run per done trial under tb_root/<variant>-s<seed>/, rewritten from scratch each time.

    configs: {trial name: resolved Config}. Every run carries the same experiment summary (the
    union of hparams and metrics), as the HParams plugin reads one of them."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from ckf_dist.telemetry.logger import tb_tag

    done = [t for t in results.get("trials", []) if t.get("status") in REPORTED_STATUSES and isinstance(t.get("metrics"), dict)]
    tb_root.mkdir(parents=True, exist_ok=True)
    keys = grid.overridden_keys()
    metric_tags = [f"test/{k}" for k in results.get("metrics") or []
                   if any(metric_value(t["metrics"], k) is not None for t in done)]
    variants = list(grid.variants)
    written = []
    for t in done:
        cfg = configs.get(t["name"])
        hp = {"variant": t["variant"], "seed": t["seed"]}
        for k in keys:
            hp[k] = _hparam(config_value(cfg, k)) if cfg is not None else "?"
        flat = flat_metrics(t["metrics"])
        final_step = int(config_value(cfg, "train.steps") or 0) if cfg is not None else 0
        exp, ssi, sei = hparams(hp, {m: flat.get(m, 0.0) for m in metric_tags}, hparam_domain_discrete={"variant": variants})
        dest = tb_root / t["name"]
        tmp = temp_dir_beside(dest)
        w = SummaryWriter(log_dir=str(tmp))
        try:
            w.file_writer.add_summary(exp)
            w.file_writer.add_summary(ssi)
            for tag, series in _mirrored(Path(t["run_dir"])).items():
                for step, v in sorted(series.items()):
                    w.add_scalar(tb_tag(tag), v, step)
            for tag, v in flat.items():
                w.add_scalar(tag, v, final_step)
            w.file_writer.add_summary(sei)
        finally:
            w.close()
        replace_dir(tmp, dest)
        written.append(dest)
    names = {t["name"] for t in done}
    for d in tb_root.iterdir():  # runs of trials that are no longer done (or renamed variants)
        if d.is_dir() and not d.name.startswith(".") and d.name not in names:
            shutil.rmtree(d, ignore_errors=True)
    return written


def _mirrored(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the run's training log: {name: {step: value}}, last one wins."""
    return _scalar_series(run_dir)
