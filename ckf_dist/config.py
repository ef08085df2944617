"""The one typed configuration of ckf_dist.

Config flows one way: dataclass defaults <- a YAML file in ``configs/`` <- ``key.sub=value``
overrides from the command line. Unknown keys and values of the wrong type are rejected with a
one-line :class:`ConfigError` naming the key and where it came from (the file or ``command
line``). Every run directory keeps its resolved config (:func:`save_config`). The DeepSpeed JSON
and the Ray scaling settings are *derived* from this schema, never written twice.

This module is import-light on purpose (no torch, ray or deepspeed): the CLI, Ray drivers and
tests import it cheaply. Each field carries its documentation as a string literal below it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import re

import yaml

# The sections live in config_sections (one dataclass each, checks beside their fields); they are
# part of this module's interface (`from ckf_dist.config import ALL_TASKS, DataConfig, ...`).
from ckf_dist.config_sections import (
    ALL_TASKS, CFConfig, ConfigError, DataConfig, DistConfig, EvalConfig, KernelsConfig, LoaderConfig, LoRAConfig,
    LoRASetConfig, ModelConfig, RunConfig, SyntheticConfig, TinyLMConfig, TrainConfig,
)
from ckf_dist.fsutil import atomic_write_text

__all__ = [
    "ALL_TASKS", "CFConfig", "Config", "ConfigError", "DataConfig", "DistConfig", "EvalConfig", "KernelsConfig",
    "LoaderConfig", "LoRAConfig", "LoRASetConfig", "ModelConfig", "RunConfig", "SyntheticConfig", "TinyLMConfig",
    "TrainConfig", "apply_overrides", "field_docs", "from_dict", "load_config", "parse_override", "save_config", "to_dict",
]

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

SECTIONS = ("data", "cf", "model", "tiny", "lora", "train", "eval", "dist", "loader")
"""Sections with a `problems()` method, checked in this order."""

MOVED = {"train.data_workers": "loader.workers", "train.shuffle_buffer": "loader.shuffle_buffer",
         "train.length_group": "loader.length_group"}
"""Keys that moved: a config still using the old name gets told the new one."""


@dataclass
class Config:
    seed: int = 0
    """Seed for splits, sampling, initialisation and data order."""
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    """Tasks to build and train (subset of ctr, topk, rating, review_rating, explanation)."""
    task_mix: dict[str, float] = field(default_factory=dict)
    """Relative sampling weight per task in mixed batches (missing tasks weigh 1)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where outputs go."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data ingestion, splits, samples, shards."""
    cf: CFConfig = field(default_factory=CFConfig)
    """CF backbone and CF baselines."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """LLM and CF mapping."""
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    """The embedded tiny LLM (`ckf model init-tiny`)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Multi-LoRA adapter sets."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """CKF training recipe."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """The DataLoader of the training stream."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Distributed launch and DeepSpeed."""
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    """Kernel backend for multi_lora and meta_proj."""

    def validate(self, source: str = "config") -> "Config":
        """Checks across sections here, each section's own in its `problems()`; raises a one-line
        ConfigError naming the first bad key."""
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad:
            raise ConfigError(f"{source}: key 'tasks': unknown task {bad[0]!r} (choose from {', '.join(ALL_TASKS)})")
        if not self.tasks:
            raise ConfigError(f"{source}: key 'tasks': at least one task is needed")
        run_dir = Path(self.run.dir)
        existing = next((q for q in (run_dir, *run_dir.parents) if q.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"{source}: key 'run.dir': {existing} is a file, not a directory")
        if self.seed < 0:
            raise ConfigError(f"{source}: key 'seed': invalid value {self.seed!r} (a seed is >= 0)")
        for t, w in self.task_mix.items():
            if t not in ALL_TASKS:
                raise ConfigError(f"{source}: key 'task_mix.{t}': unknown task")
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"{source}: key 'task_mix.{t}': invalid weight {w!r} (finite, >= 0)")
        if not any(self.task_mix.get(t, 1.0) > 0 for t in self.tasks):
            raise ConfigError(f"{source}: key 'task_mix': every task of 'tasks' has weight 0; nothing would be trained")
        if self.cf.cross_fit and self.model.mapping in ("binllm", "allmrec"):
            raise ConfigError(f"{source}: key 'cf.cross_fit': model.mapping={self.model.mapping} reads the full model's "
                              "codes or aligned items in training; cross-fitting serves the vector modes (ckf, collm, cora)")
        # each section checks its own fields (and those that depend on each other) beside them
        for name in SECTIONS:
            for key, problem in getattr(self, name).problems()[:1]:
                raise ConfigError(f"{source}: key '{name}.{key}': {problem}")
        return self

    def curriculum_on(self) -> bool:
        """Whether training mixes in the text-only twin: ``train.curriculum`` with a CF prompt (soft tokens
        or codes) and trained LoRA adapters; on a frozen LLM (A-LLMRec, CoRA) the twin path trains nothing."""
        return bool(self.train.curriculum) and self.model.prompt_kind() in ("cf", "codes") and \
            self.model.adapter_kind() in ("multi", "shared")

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): stage caches key on it."""
        d = to_dict(self)
        if sections:
            d = {s: _get_dict(d, s) for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)


# --------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _get_dict(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    fail = ConfigError(f"{source}: key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: key '{key}': {value!r} is not one of {', '.join(map(str, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise fail
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return {_coerce(k, args[0], key, source): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads `2e-4` (no dot) as a string
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise fail


def _merge(obj: Any, data: dict, prefix: str, source: str) -> None:
    """Merge a nested dict into a dataclass instance in place, strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            if key in MOVED:
                raise ConfigError(f"{source}: key '{key}' is now '{MOVED[key]}'")
            raise ConfigError(f"{source}: unknown key '{key}'")
        tp = hints[k]
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _merge(current, v, f"{key}.", source)
        else:
            setattr(obj, k, _coerce(v, tp, key, source))


def from_dict(data: dict, source: str = "config", base: Optional[Config] = None) -> Config:
    cfg = base if base is not None else Config()
    _merge(cfg, data or {}, "", source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last
    silently: a second `train:` block would drop the first)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node, deep=True)
            hash(key)
        except TypeError:
            continue  # an unhashable key: the safe constructor reports it
        if key in seen and key != "<<":
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load(text: str) -> Any:
    """yaml.safe_load that also refuses duplicate keys (the one YAML parser of configs and grids)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects are built


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key.sub, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: key '{key}': cannot parse value {raw!r} ({str(e).splitlines()[0]})") from None
    return key, value


def _into_mapping_field(cfg: Config, parts: list[str], value: Any) -> tuple[list[str], Any]:
    """A dotted key that reaches into a mapping-valued field (`task_mix.topk=1.5`) sets that one
    entry and keeps the others: (the field's key parts, the whole updated mapping); any other key as it is."""
    parent: Any = cfg
    for name in parts[:-2]:
        parent = getattr(parent, name, None)
    current = getattr(parent, parts[-2], None) if len(parts) >= 2 and dataclasses.is_dataclass(parent) else None
    if isinstance(current, dict):
        return parts[:-1], {**current, parts[-1]: value}
    return parts, value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`key.sub=value` overrides, in order; a key inside a mapping field changes that entry only."""
    for text in overrides:
        key, value = parse_override(text)
        parts, value = _into_mapping_field(cfg, key.split("."), value)
        nested: dict = {}
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        _merge(cfg, nested, "", "command line")
    return cfg


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """yaml.safe_load of a file; a syntax error raises `error` with one line naming file:line."""
    try:
        return safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- overrides, then validated."""
    cfg = Config()
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        data = read_yaml(p, ConfigError)
        from_dict(data or {}, source=str(p), base=cfg)
        source = str(p)
    apply_overrides(cfg, overrides or [])
    return cfg.validate(source if not overrides else f"{source} + command line")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Map dotted key -> the docstring under that field (for `ckf config keys` and the README)."""
    import ast
    import inspect

    out: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            doc = ""
            if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(getattr(body[i + 1], "value", None), ast.Constant):
                doc = str(body[i + 1].value.value)  # type: ignore[attr-defined]
            tp = hints.get(name)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                out.update(field_docs(tp, f"{prefix}{name}."))
            else:
                out[f"{prefix}{name}"] = doc
    return out
