"""`ckf report RUN_DIR ...`: one markdown table over finished runs, mean ± sd over seeds.

Runs are grouped by what they train, ignoring `seed` and `run.dir`: the group label names the
ablation switches that differ from full CKF (`model.cf_fusion=false` -> "text-only LLM + LoRA",
`model.mapping=collm` -> "CoLLM-style", `model.mapping=binllm` -> "BinLLM-style", a CF backbone other
than MF, ...). Each run contributes its `metrics.json` (CKF) and,
once per group, its CF and popularity baselines (`cf/baselines.json`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

from ckf_dist.config import Config, load_config, to_dict
from ckf_dist.fsutil import atomic_write_text
from ckf_dist.run import Run, RunBusy

log = logging.getLogger(__name__)

COLUMNS = [
    ("ctr", "auc"), ("ctr", "uauc"),
    ("topk", "hr@1"), ("topk", "ndcg@5"),
    ("rating", "rmse"), ("rating", "mae"),
    ("review_rating", "rmse"),
    ("explanation", "bleu4"), ("explanation", "rougeL"),
]


def variant_name(cfg: Config) -> str:
    """A readable label for the model variant of a run."""
    if not cfg.model.cf_fusion:
        name = "text-only LLM + LoRA (TALLRec-style)"
    elif cfg.model.mapping == "collm":
        name = "CoLLM-style (shared MLP mapping, one LoRA)"
    elif cfg.model.mapping == "binllm":
        name = "BinLLM-style (binary CF codes as text, one LoRA)"
    elif cfg.model.mapping == "cora":
        name = "CoRA-style (per-row LoRA generated from CF, frozen LLM)"
    elif cfg.model.mapping == "allmrec":
        name = "A-LLMRec-style (aligned CF soft tokens, frozen LLM)"
    else:
        parts = []
        if not cfg.model.meta_net:
            parts.append("no meta-network")
        if not cfg.lora.task_specific:
            parts.append("shared LoRA only")
        name = "CKF" + (f" ({', '.join(parts)})" if parts else "")
    if cfg.model.cf_fusion and cfg.cf.model != "mf":
        name += f" [CF backbone {cfg.cf.model}]"
    if len(cfg.tasks) == 1:
        name += f" [trained on {cfg.tasks[0]} only]"
    return name


def _group_key(cfg: Config) -> str:
    d = to_dict(cfg)
    d.pop("seed")
    d["run"] = {}
    return json.dumps(d, sort_keys=True)


def _mean_sd(values: list[float]) -> Optional[str]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.4f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.4f} ± {sd:.4f}"


def collect(run_dirs: list[str], wait: bool = False) -> list[dict]:
    """Rows: {"name", "seeds", "runs", "values": {(task, metric): [v per seed]}}. Each run is read
    under its shared lock (a consistent snapshot); a run a writer holds is left out with a warning
    naming the writer, or waited for with `wait`."""
    groups: dict[str, dict] = {}
    baselines: dict[str, dict] = {}
    for run in run_dirs:
        rd = Run.at(run)
        cfg_file = rd.config_file
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: not a run directory")
        try:
            rd.lock_for_reading(wait)
        except RunBusy as e:
            log.warning("left out: %s", e)
            continue
        try:
            _collect_one(rd, groups, baselines)
        finally:
            rd.unlock()
    return _rows(groups, baselines)


def _collect_one(rd: Run, groups: dict, baselines: dict) -> None:
    """Add one run's metrics and baselines to `groups` / `baselines`."""
    cfg_file = rd.config_file
    cfg = load_config(cfg_file)
    key = _group_key(cfg)
    g = groups.setdefault(key, {"name": variant_name(cfg), "seeds": [], "runs": [], "values": {}, "dataset": cfg.data.format})
    metrics_file = rd.metrics_file()
    if metrics_file.is_file():
        m = json.loads(metrics_file.read_text())
        g["seeds"].append(cfg.seed)
        g["runs"].append(str(rd.dir))
        for task, metric in COLUMNS:
            g["values"].setdefault((task, metric), []).append((m.get(task) or {}).get(metric))
    bl = rd.baselines_json
    if bl.is_file():
        res = json.loads(bl.read_text())
        res = res.get("results", {}).get("test", res)
        for model, tasks in res.items():
            b = baselines.setdefault(f"{cfg.data.format}/{model}/{cfg.seed}", {"name": model, "seed": cfg.seed, "tasks": tasks})
            b["tasks"] = tasks


def _rows(groups: dict, baselines: dict) -> list[dict]:
    rows = [g for g in groups.values() if g["runs"]]
    by_model: dict[str, dict] = {}
    for b in baselines.values():
        row = by_model.setdefault(b["name"], {"name": f"{b['name']} (CF baseline)" if b["name"] != "popularity" else "popularity", "seeds": [], "runs": [], "values": {}})
        if b["seed"] in row["seeds"]:
            continue
        row["seeds"].append(b["seed"])
        for task, metric in COLUMNS:
            row["values"].setdefault((task, metric), []).append((b["tasks"].get(task) or {}).get(metric))
    return list(by_model.values()) + rows


def report_markdown(rows: list[dict]) -> str:
    used = [c for c in COLUMNS if any(any(v is not None for v in r["values"].get(c, [])) for r in rows)]
    head = "| model | seeds | " + " | ".join(f"{t} {m}" for t, m in used) + " |"
    lines = [head, "|" + "---|" * (len(used) + 2)]
    for r in rows:
        cells = [_mean_sd(r["values"].get(c, [])) or "–" for c in used]
        lines.append(f"| {r['name']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_report(args) -> int:
    table = report_markdown(collect(args.runs, wait=getattr(args, "wait", False)))
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), table + "\n")
    return 0
