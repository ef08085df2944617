"""The run directory: its layout and its five cached stages, in one place.

A run is the folder `run.dir` of a config. Every path inside it, and every "is this stage up to
date", goes through :class:`Run`; nobody else spells a run-directory file name::

    config.yaml                    the resolved config of the last command
    data/split/                    SplitData (interactions.parquet + meta.json)
    data/shards/                   webdataset shards + manifest
    data/stage.json                ...each stage folder holds its record (key, seconds, summary)
    cf/<model>.safetensors         the CF tables of the backbone and of each baseline
    cf/baselines.json, .md         the CF / popularity baselines (valid and test)
    llm/                           the embedded tiny LLM (unless model.path names one)
    train/checkpoints/step-N/      checkpoints; train/checkpoints/latest names the newest
    train/tb/                      TensorBoard events + metrics.jsonl
    train/final/trainable.safetensors, train/final/peft/   the trained weights
    train/ranks.json, train/config_key
    eval/stage.json                the evaluation stage's record
    metrics.json, metrics.md       test metrics (metrics_valid.* for `ckf eval --split valid`)
    deepspeed.json                 the derived DeepSpeed config
    ray/                           Ray Train storage (unless dist.storage_path)

Stages (data -> cf -> llm -> train -> eval) each own a folder and a key: a hash of the config
sections the stage depends on plus the keys of the stages it reads. A stage whose recorded key
equals the current one is fresh and is skipped. The runners (what each stage does) live in
:mod:`ckf_dist.pipeline`; this module imports only the config and file helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ckf_dist.config import Config, load_config, save_config, to_dict
from ckf_dist.rating_scale import RatingScale
from ckf_dist.fsutil import atomic_write_text

log = logging.getLogger(__name__)

STAGES = ("data", "cf", "llm", "train", "eval")


def stage_hash(obj) -> str:
    """The key of a stage: a short hash of its JSON-able inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_fingerprint(cfg: Config) -> str:
    """Identity of the raw input files (names, sizes, mtimes); synthetic data has none."""
    paths = [p for p in (cfg.data.path, cfg.data.meta_path) if p]
    entries = []
    for p in paths:
        root = Path(p)
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            if f.exists():
                st = f.stat()
                entries.append([str(f), st.st_size, int(st.st_mtime)])
            else:
                entries.append([str(f), None, None])
    return stage_hash(entries)


TRAIN_KEY_IGNORES = ("debug_checks", "activation_checkpointing")
"""train.* keys that do not change what training computes: left out of the training stage key, so
switching them keeps a finished run fresh (and the keys of runs made before they existed)."""


def _train_key(cfg: Config) -> dict:
    """train.* as the training key hashes it: with the loader.* keys under their former train.*
    names (a run made before they moved stays fresh), without TRAIN_KEY_IGNORES."""
    d = {k: v for k, v in to_dict(cfg.train).items() if k not in TRAIN_KEY_IGNORES}
    d.update(data_workers=cfg.loader.workers, shuffle_buffer=cfg.loader.shuffle_buffer, length_group=cfg.loader.length_group)
    return d


@dataclass
class Stage:
    """One cached step of the pipeline."""

    name: str
    folder: Path
    key: str

    @property
    def record(self) -> Path:
        return self.folder / "stage.json"

    def fresh(self) -> bool:
        if not self.record.is_file():
            return False
        try:
            return json.loads(self.record.read_text()).get("key") == self.key
        except json.JSONDecodeError:
            return False

    def clear_record(self) -> None:
        if self.record.exists():
            self.record.unlink()

    def run(self, fn: Callable[[Path], dict], force: bool = False) -> dict:
        """Run `fn(folder)` unless fresh; returns the recorded summary either way."""
        if self.fresh() and not force:
            log.info("stage %s: up to date (%s), skipped", self.name, self.folder)
            return json.loads(self.record.read_text())["summary"]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clear_record()
        t0 = time.time()
        summary = fn(self.folder)
        rec = {"key": self.key, "seconds": round(time.time() - t0, 2), "summary": summary}
        atomic_write_text(self.record, json.dumps(rec, indent=2, default=str))
        return summary


class Run:
    """The run directory of `cfg` (``cfg.run.dir``). ``Run.at(path)`` gives the paths of a folder
    without a config (readers of finished runs); stage keys and config-dependent paths need one."""

    def __init__(self, cfg: Optional[Config] = None, dir: str | Path | None = None):
        if cfg is None and dir is None:
            raise ValueError("Run needs a config or a directory")
        self._cfg = cfg
        self.dir = Path(dir) if dir is not None else Path(cfg.run.dir)

    @classmethod
    def at(cls, path: str | Path) -> "Run":
        return cls(None, path)

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """A finished (or started) run directory, with the config it saved; a moved folder keeps
        working (run.dir follows the folder)."""
        p = cls.at(path).config_file
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not a run directory (no config.yaml)")
        cfg = load_config(p)
        if Path(cfg.run.dir).resolve() != Path(path).resolve():
            cfg.run.dir = str(path)
        return cls(cfg)

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            raise ValueError(f"{self.dir}: this Run has no config (made with Run.at)")
        return self._cfg

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    # ------------------------------------------------------------------ top level
    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def write_config(self) -> Path:
        """Every command that builds from a config keeps the resolved config in run.dir."""
        return save_config(self.cfg, self.config_file)

    def metrics_file(self, split: str = "test") -> Path:
        """metrics.json for the test split, metrics_<split>.json otherwise (the .md twin beside)."""
        return self.dir / ("metrics.json" if split == "test" else f"metrics_{split}.json")

    def metrics_markdown(self, split: str = "test") -> Path:
        return self.metrics_file(split).with_suffix(".md")

    @property
    def deepspeed_file(self) -> Path:
        return self.dir / "deepspeed.json"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's storage: dist.storage_path, or run.dir/ray."""
        return Path(self.cfg.dist.storage_path) if self.cfg.dist.storage_path else self.dir / "ray"

    def trial_log(self) -> Path:
        """The log of a sweep trial running in this folder."""
        return self.dir / "sweep-trial.log"

    # ------------------------------------------------------------------ data
    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def split_dir(self) -> Path:
        return self.data_dir / "split"

    @property
    def shards_dir(self) -> Path:
        return self.data_dir / "shards"

    def split_meta(self) -> dict:
        """The split's ids and titles (without loading the interactions)."""
        from ckf_dist.data.table import SplitData

        return SplitData.read_meta(self.split_dir)

    def item_titles(self) -> list[str]:
        return self.split_meta()["item_titles"]

    def rating_scale(self) -> RatingScale:
        """The split's rating scale (whole stars 1..5 for splits written before scales were recorded)."""
        return RatingScale(*self.split_meta().get("rating_scale", [1.0, 5.0, 1.0]))

    # ------------------------------------------------------------------ cf
    @property
    def cf_dir(self) -> Path:
        return self.dir / "cf"

    def cf_table(self, name: Optional[str] = None) -> Path:
        """The CF tables of model `name` (default: the backbone, cf.model)."""
        return self.cf_dir / f"{name or self.cfg.cf.model}.safetensors"

    @property
    def baselines_json(self) -> Path:
        return self.cf_dir / "baselines.json"

    @property
    def baselines_markdown(self) -> Path:
        return self.cf_dir / "baselines.md"

    # ------------------------------------------------------------------ llm
    @property
    def llm_dir(self) -> Path:
        """Where the embedded tiny LLM is written."""
        return self.dir / "llm"

    @property
    def model_dir(self) -> Path:
        """The base LLM the run trains on: model.path, or the embedded one."""
        return Path(self.cfg.model.path) if self.cfg.model.path else self.llm_dir

    # ------------------------------------------------------------------ train
    @property
    def train_dir(self) -> Path:
        return self.dir / "train"

    @property
    def checkpoints_dir(self) -> Path:
        return self.train_dir / "checkpoints"

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints_dir / "latest"

    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"step-{step:06d}"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints_dir / self.checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """The finished checkpoints, oldest first (temporary folders are hidden)."""
        return sorted(p for p in self.checkpoints_dir.glob("step-*") if p.is_dir())

    def latest_checkpoint(self) -> Optional[Path]:
        if not self.latest_pointer.is_file():
            return None
        p = self.checkpoints_dir / self.latest_pointer.read_text().strip()
        return p if p.is_dir() else None

    def mark_latest(self, checkpoint: Path) -> None:
        atomic_write_text(self.latest_pointer, Path(checkpoint).name)

    @property
    def tb_dir(self) -> Path:
        return self.train_dir / "tb"

    @property
    def train_log(self) -> Path:
        """The JSON-lines twin of the TensorBoard events."""
        return self.tb_dir / "metrics.jsonl"

    @property
    def final_dir(self) -> Path:
        return self.train_dir / "final"

    @property
    def final_weights(self) -> Path:
        return self.final_dir / "trainable.safetensors"

    @property
    def peft_dir(self) -> Path:
        return self.final_dir / "peft"

    @property
    def ranks_file(self) -> Path:
        return self.train_dir / "ranks.json"

    @property
    def config_key_file(self) -> Path:
        """The training stage key the checkpoints in train/ were made under."""
        return self.train_dir / "config_key"

    def clear_training(self, whole: bool = False) -> None:
        """Drop the outputs of an earlier training (checkpoints, events, final weights, Ray
        storage); `whole` drops train/ and ray/ entirely."""
        subs = [self.train_dir] if whole else [self.checkpoints_dir, self.tb_dir, self.final_dir]
        for p in [*subs, self.dir / "ray"]:
            shutil.rmtree(p, ignore_errors=True)

    def has_training(self) -> bool:
        return self.train_dir.exists() or (self.dir / "ray").exists()

    # ------------------------------------------------------------------ eval
    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    # ------------------------------------------------------------------ stages
    def data_stage(self) -> Stage:
        cfg = self.cfg
        key = stage_hash([to_dict(cfg.data), cfg.tasks, cfg.seed, cfg.model.placeholder_token, source_fingerprint(cfg)])
        return Stage("data", self.data_dir, key)

    def cf_stage(self) -> Stage:
        cfg = self.cfg
        key = stage_hash([self.data_stage().key, to_dict(cfg.cf), cfg.eval.ks, cfg.eval.max_samples_per_task, cfg.eval.task_caps])
        return Stage("cf", self.cf_dir, key)

    def llm_stage(self) -> Stage:
        cfg = self.cfg
        return Stage("llm", self.llm_dir, stage_hash([self.data_stage().key, to_dict(cfg.tiny), cfg.model.placeholder_token]))

    def train_stage(self) -> Stage:
        cfg = self.cfg
        llm_key = self.llm_stage().key if not cfg.model.path else cfg.model.path
        parts = [self.cf_stage().key, llm_key, to_dict(cfg.model), to_dict(cfg.lora), _train_key(cfg), cfg.tasks, cfg.task_mix, cfg.seed]
        return Stage("train", self.train_dir, stage_hash(parts))

    def eval_stage(self) -> Stage:
        return Stage("eval", self.eval_dir, stage_hash([self.train_stage().key, to_dict(self.cfg.eval)]))

    def stage(self, name: str) -> Stage:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} (have {', '.join(STAGES)})")
        return getattr(self, f"{name}_stage")()
