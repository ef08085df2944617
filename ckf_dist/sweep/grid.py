"""The grid file of `ckf sweep`: parsing, validation, the trials it names and whether each is done.

A grid is a YAML mapping::

    config: configs/ml100k-quality.yaml     # base config (paths relative to the working directory)
    out: runs/sweeps/ml100k-quality         # sweep folder (default runs/sweeps/<grid file stem>)
    seeds: [0, 1, 2]                        # default seeds of every variant
    overrides: [dist.launcher=local]        # optional, applied to every trial first
    variants:                               # name -> settings, in table order
      ckf: {}
      text_only: {overrides: [model.cf_fusion=false], label: "text-only LLM + LoRA"}
      no_meta: {overrides: [model.meta_net=false], seeds: [0]}
    metrics: [ctr/auc, rating/rmse]         # optional: the table's columns (task/metric)
    cpus_per_trial: 1                       # optional resources (the command line wins)
    gpus_per_trial: 0
    max_concurrent: 4

A trial is one (variant, seed): `ckf train --config CONFIG <overrides> <variant overrides>
run.cache_dir=<out>/cache seed=S run.dir=<out>/<variant>-s<seed>` (the cache: trials with the same
inputs train the CF tables and pre-train the embedded LLM once; an override of run.cache_dir wins). Every variant's overrides are checked against the config
schema when the grid is loaded; a bad grid stops with one line naming the grid file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from ckf_dist.config import Config, ConfigError, apply_overrides, load_config, parse_override, read_yaml, to_dict
from ckf_dist.run import Run

GRID_KEYS = ("config", "out", "seeds", "overrides", "variants", "metrics", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "description")
VARIANT_KEYS = ("overrides", "seeds", "label")
RESERVED_KEYS = ("seed", "run.dir")
"""Set by the sweep for every trial; a grid sets them through `seeds:` and `out:`."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
TASK_NAMES = ("ctr", "topk", "rating", "review_rating", "explanation")

DEFAULT_METRICS = [
    "ctr/auc", "ctr/uauc",
    "topk/hr@1", "topk/ndcg@1", "topk/ndcg@10",
    "rating/rmse", "rating/mae",
    "review_rating/rmse",
    "explanation/bleu4", "explanation/rougeL",
]
"""The headline metric of each task first, then the others (columns shown when present)."""


class GridError(ConfigError):
    """A bad grid file; one line naming the file and the key."""


@dataclass
class Variant:
    name: str
    overrides: list[str]
    seeds: list[int]
    label: str


@dataclass
class Trial:
    """One (variant, seed) of a grid."""

    variant: str
    seed: int
    name: str
    run_dir: str
    overrides: list[str]
    """Everything after `--config`: global, variant, `run.cache_dir=` (unless set), then `seed=` and `run.dir=`."""

    def command(self, config: str) -> list[str]:
        return ["ckf", "train", "--config", config, *self.overrides]


@dataclass
class Grid:
    path: Path
    config: str
    out: Path
    seeds: list[int]
    overrides: list[str]
    variants: dict[str, Variant]
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    cpus_per_trial: Optional[float] = None
    gpus_per_trial: Optional[float] = None
    max_concurrent: Optional[int] = None
    description: str = ""

    def trials(self, extra: Optional[list[str]] = None) -> list[Trial]:
        """Every (variant, seed) in grid order; `extra` overrides go first (e.g. dist.use_gpu=true)."""
        out = []
        for v in self.variants.values():
            for s in v.seeds:
                name = f"{v.name}-s{s}"
                run_dir = str(self.out / name)
                ov = [*(extra or []), *self.overrides, *v.overrides]
                if not any(o.split("=", 1)[0].strip() == "run.cache_dir" for o in ov):  # trials share pre-training
                    ov.append(f"run.cache_dir={self.out / 'cache'}")
                ov += [f"seed={s}", f"run.dir={run_dir}"]
                out.append(Trial(v.name, s, name, run_dir, ov))
        return out

    def select(self, seeds: Optional[list[int]] = None, variants: Optional[list[str]] = None) -> "Grid":
        """This grid with `seeds` in place of every variant's seeds and only the named `variants` (grid
        order kept): `ckf sweep --seeds` / `--variants`, a 3-seed run of a 1-seed grid or a subset
        without editing the file."""
        if variants:
            unknown = [v for v in variants if v not in self.variants]
            if unknown:
                raise GridError(f"{self.path}: --variants: unknown variant '{unknown[0]}' "
                                f"(the grid has {', '.join(self.variants)})")
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise GridError(f"{self.path}: --seeds: expected distinct integer seeds, got {seeds!r}")
        chosen = {n: Variant(n, v.overrides, list(seeds) if seeds is not None else v.seeds, v.label)
                  for n, v in self.variants.items() if not variants or n in variants}
        return dataclasses.replace(self, variants=chosen, seeds=list(seeds) if seeds is not None else self.seeds)

    def resolve(self, trial: Trial) -> Config:
        try:
            return load_config(self.config, trial.overrides)
        except ConfigError as e:
            raise GridError(f"{self.path}: variants.{trial.variant}: {_msg(e)}") from None

    def overridden_keys(self) -> list[str]:
        """Config keys set by the grid's overrides: the variants' first, then the global ones."""
        keys: dict[str, None] = {}
        for text in [*(o for v in self.variants.values() for o in v.overrides), *self.overrides]:
            keys[parse_override(text)[0]] = None
        return list(keys)


def _msg(e: Exception) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[len("command line: "):] if s.startswith("command line: ") else s


def _seeds(value: Any, where: str, src: Path) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise GridError(f"{src}: key '{where}': expected a non-empty list of integer seeds, got {value!r}")
    if len(set(value)) != len(value):
        raise GridError(f"{src}: key '{where}': repeated seed in {value!r}")
    return list(value)


def _override_list(value: Any, where: str, src: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise GridError(f"{src}: key '{where}': expected a list of key=value strings, got {value!r}")
    out = []
    for i, text in enumerate(value):
        if not isinstance(text, str) or "=" not in text:
            raise GridError(f"{src}: key '{where}[{i}]': expected a key=value string, got {text!r}")
        key = text.split("=", 1)[0].strip()
        if key in RESERVED_KEYS:
            raise GridError(f"{src}: key '{where}[{i}]': '{key}' is set per trial by the sweep (use `seeds:` / `out:`)")
        out.append(text)
    return out


def _check_overrides(base: Config, items: list[str], where: str, src: Path) -> Config:
    """Apply overrides one at a time so an error names the entry that caused it."""
    cfg = copy.deepcopy(base)
    for i, text in enumerate(items):
        try:
            apply_overrides(cfg, [text])
        except ConfigError as e:
            raise GridError(f"{src}: key '{where}[{i}]' ({text}): {_msg(e)}") from None
    return cfg


def _number(value: Any, key: str, src: Path, integer: bool = False) -> Optional[float]:
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value < 0 or (integer and value < 1):
        kind = "a positive integer" if integer else "a number >= 0"
        raise GridError(f"{src}: key '{key}': expected {kind}, got {value!r}")
    return value


def load_grid(path: str | Path, out: Optional[str | Path] = None) -> Grid:
    """Read and validate a grid file; `out` replaces the grid's `out`."""
    src = Path(path)
    if not src.is_file():
        raise GridError(f"{src}: grid file not found")
    data = read_yaml(src, GridError)
    if not isinstance(data, dict):
        raise GridError(f"{src}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    for k in data:
        if k not in GRID_KEYS:
            raise GridError(f"{src}: unknown key '{k}' (expected one of {', '.join(GRID_KEYS)})")
    config = data.get("config")
    if not isinstance(config, str) or not config:
        raise GridError(f"{src}: key 'config': expected the path of a base config, got {config!r}")
    if not Path(config).is_file():
        raise GridError(f"{src}: key 'config': {config} not found (paths are relative to the working directory)")
    if "seeds" not in data:
        raise GridError(f"{src}: key 'seeds': missing (a list of integer seeds)")
    seeds = _seeds(data["seeds"], "seeds", src)
    overrides = _override_list(data.get("overrides"), "overrides", src)
    variants_raw = data.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise GridError(f"{src}: key 'variants': expected a non-empty mapping name -> {{overrides, seeds, label}}")
    try:
        base = load_config(config)
    except ConfigError as e:
        raise GridError(f"{src}: key 'config': {_msg(e)}") from None
    base = _check_overrides(base, overrides, "overrides", src)
    variants: dict[str, Variant] = {}
    for name, spec in variants_raw.items():
        name = str(name)
        if not NAME_RE.match(name):
            raise GridError(f"{src}: key 'variants.{name}': a variant name is a folder name: letters, digits, _ . + - only")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise GridError(f"{src}: key 'variants.{name}': expected a mapping with keys {', '.join(VARIANT_KEYS)}, got {spec!r}")
        for k in spec:
            if k not in VARIANT_KEYS:
                raise GridError(f"{src}: key 'variants.{name}.{k}': unknown key (expected one of {', '.join(VARIANT_KEYS)})")
        v_over = _override_list(spec.get("overrides"), f"variants.{name}.overrides", src)
        v_seeds = _seeds(spec["seeds"], f"variants.{name}.seeds", src) if "seeds" in spec else list(seeds)
        label = spec.get("label", name)
        if not isinstance(label, str):
            raise GridError(f"{src}: key 'variants.{name}.label': expected a string, got {label!r}")
        cfg = _check_overrides(base, v_over, f"variants.{name}.overrides", src)
        try:
            cfg.validate(f"variants.{name}")
        except ConfigError as e:
            raise GridError(f"{src}: key 'variants.{name}': {_msg(e)}") from None
        variants[name] = Variant(name, v_over, v_seeds, label)
    metrics = data.get("metrics", DEFAULT_METRICS)
    if not isinstance(metrics, list) or not metrics:
        raise GridError(f"{src}: key 'metrics': expected a non-empty list of task/metric names, got {metrics!r}")
    for i, m in enumerate(metrics):
        if not isinstance(m, str) or m.count("/") != 1 or m.split("/")[0] not in TASK_NAMES:
            raise GridError(f"{src}: key 'metrics[{i}]': expected task/metric with a task of {', '.join(TASK_NAMES)}, got {m!r}")
    out_dir = out if out is not None else data.get("out") or f"runs/sweeps/{src.stem}"
    if not isinstance(out_dir, (str, Path)):
        raise GridError(f"{src}: key 'out': expected a folder path, got {out_dir!r}")
    description = data.get("description", "")
    return Grid(
        path=src, config=config, out=Path(out_dir), seeds=seeds, overrides=overrides, variants=variants,
        metrics=list(metrics),
        cpus_per_trial=_number(data.get("cpus_per_trial"), "cpus_per_trial", src),
        gpus_per_trial=_number(data.get("gpus_per_trial"), "gpus_per_trial", src),
        max_concurrent=_number(data.get("max_concurrent"), "max_concurrent", src, integer=True),
        description=str(description or ""),
    )


# --------------------------------------------------------------------------------------------
# Resume: which trials are already done


def _comparable(cfg: Config) -> dict:
    """The config as trial_status compares it: run.dir resolved, run.cache_dir left out (where shared
    pre-training is kept changes no result; trials finished before the sweep set it stay done)."""
    d = to_dict(cfg)
    d["run"]["dir"] = str(Path(d["run"]["dir"]).resolve())
    d["run"].pop("cache_dir", None)
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def _stages_fresh(cfg: Config) -> Optional[bool]:
    """Whether the run's evaluation stage (whose key chains data, CF, LLM and training) is up to
    date for `cfg`; None when that cannot be told."""
    try:
        return bool(Run(cfg).eval_stage().fresh())
    except Exception:  # noqa: BLE001 - advisory: the config comparison still decides
        return None


def trial_status(cfg: Config, check_stages: bool = True) -> str:
    """"done" when run.dir has metrics.json, its config.yaml equals `cfg` (the trial's resolved
    config) and its cached stages are fresh; "stale" when it finished with this config but a stage
    went stale since (the code or the inputs changed: its metrics still report, and the sweep
    reruns it); "changed" when a finished run was made with another config; "partial" when the
    run was started; "new" otherwise."""
    run = Run(cfg)
    saved = run.config_file
    if not saved.is_file():
        return "new"
    if not run.metrics_file().is_file():
        return "partial"
    try:
        old = load_config(saved)
    except ConfigError:
        return "changed"
    if _comparable(old) != _comparable(cfg):
        return "changed"
    if check_stages and _stages_fresh(cfg) is False:
        return "stale"
    return "done"


REPORTED_STATUSES = ("done", "stale")
"""Trial statuses whose metrics the sweep's report shows (a stale trial's are marked so)."""


def config_value(cfg: Config, dotted: str) -> Any:
    """The resolved value of a dotted key (dict-valued sections included), or None."""
    cur: Any = to_dict(cfg)
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def finite(v: Any) -> Optional[float]:
    """A metric value as float, None for missing / non-numeric / NaN."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


__all__ = ["Grid", "GridError", "Trial", "Variant", "load_grid", "trial_status", "REPORTED_STATUSES", "config_value", "finite",
           "DEFAULT_METRICS"]
