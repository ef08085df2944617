"""Cached pipeline stages: data prepare -> CF train (+ baselines) -> (later stages).

Each stage writes into its own folder of `run.dir` and records a `stage.json` holding a key:
a hash of the config sections it depends on plus the keys of the stages it reads. A stage whose
recorded key equals the current one is skipped; anything else reruns it. This module wires
components together; the components themselves (loaders, CF models, shards) know nothing of
caching or the CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ckf_dist.config import Config, save_config, to_dict
from ckf_dist.fsutil import atomic_write_text

log = logging.getLogger(__name__)


def _hash(obj) -> str:
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
    return _hash(entries)


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

    def run(self, fn: Callable[[Path], dict], force: bool = False) -> dict:
        """Run `fn(folder)` unless fresh; returns the recorded summary either way."""
        if self.fresh() and not force:
            log.info("stage %s: up to date (%s), skipped", self.name, self.folder)
            return json.loads(self.record.read_text())["summary"]
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.record.exists():
            self.record.unlink()
        t0 = time.time()
        summary = fn(self.folder)
        rec = {"key": self.key, "seconds": round(time.time() - t0, 2), "summary": summary}
        atomic_write_text(self.record, json.dumps(rec, indent=2, default=str))
        return summary


def data_stage(cfg: Config) -> Stage:
    key = _hash([to_dict(cfg.data), cfg.tasks, cfg.seed, cfg.model.placeholder_token, source_fingerprint(cfg)])
    return Stage("data", cfg.run_dir / "data", key)


def cf_stage(cfg: Config) -> Stage:
    key = _hash([data_stage(cfg).key, to_dict(cfg.cf), cfg.eval.ks, cfg.eval.max_samples_per_task, cfg.eval.task_caps])
    return Stage("cf", cfg.run_dir / "cf", key)


def write_run_config(cfg: Config) -> Path:
    """Every command that builds from a config keeps the resolved config in run.dir."""
    return save_config(cfg, cfg.run_dir / "config.yaml")


# --------------------------------------------------------------------------------------------


def prepare_data(cfg: Config, force: bool = False) -> dict:
    """Load -> split -> samples -> shards, cached in run.dir/data."""
    from ckf_dist.data.loaders import load_dataset
    from ckf_dist.data.samples import build_samples
    from ckf_dist.data.shards import fingerprint_frame, write_shards
    from ckf_dist.data.splits import split_dataset

    stage = data_stage(cfg)

    def build(folder: Path) -> dict:
        rec = load_dataset(cfg.data, cfg.seed)
        sd = split_dataset(rec, cfg.data, cfg.seed)
        sd.save(folder / "split")
        samples = build_samples(sd, cfg)
        manifest = write_shards(
            samples,
            folder / "shards",
            samples_per_shard=cfg.data.samples_per_shard,
            shard_multiple=cfg.data.shard_multiple,
            seed=cfg.seed,
            dataset_fingerprint=fingerprint_frame(sd.inter),
            config_hash=stage.key,
            extra={"skipped": sd.skipped, "dataset": sd.name},
        )
        parts = {s: int((sd.inter["split"] == s).sum()) for s in ("train", "valid", "test")}
        return {
            "dataset": sd.name,
            "users": sd.num_users,
            "items": sd.num_items,
            "interactions": parts,
            "cold_users": int((~sd.warm_mask()).sum()),
            "samples": {s: m["tasks"] for s, m in manifest["splits"].items()},
            "shards": {s: len(m["shards"]) for s, m in manifest["splits"].items()},
            "skipped": sd.skipped,
        }

    return stage.run(build, force)


def load_split(cfg: Config):
    from ckf_dist.data.table import SplitData

    return SplitData.load(cfg.run_dir / "data" / "split")


def train_cf_stage(cfg: Config, force: bool = False) -> dict:
    """Train the CF backbone (and the other CF baselines), evaluate baselines; cached in run.dir/cf."""
    from ckf_dist.cf.baselines import baseline_table_markdown, run_baselines
    from ckf_dist.cf.tables import save_cf_tables
    from ckf_dist.cf.train import train_cf
    from ckf_dist.data.shards import read_split

    prepare_data(cfg)
    stage = cf_stage(cfg)

    def build(folder: Path) -> dict:
        sd = load_split(cfg)
        shard_dir = cfg.run_dir / "data" / "shards"
        samples = {s: read_split(shard_dir, s) for s in ("valid", "test")}
        names = list(dict.fromkeys([cfg.cf.model, *cfg.cf.baselines]))
        tables, reports = {}, {}
        for name in names:
            t, report = train_cf(sd, cfg.cf, cfg.seed, name)
            save_cf_tables(
                folder / f"{name}.safetensors", t.user_emb, t.item_emb, t.user_ids, t.item_ids,
                extra={**t.meta, **{k: v for k, v in report.items() if k != "grid"}},
                user_bias=t.user_bias, item_bias=t.item_bias, global_bias=t.global_bias,
            )
            tables[name], reports[name] = t, report
        results = {split: run_baselines(sd, samples, cfg, cfg.seed, split=split, tables=tables) for split in ("valid", "test")}
        (folder / "baselines.json").write_text(json.dumps({"results": results, "training": reports}, indent=2, default=str))
        table = baseline_table_markdown(results["test"])
        (folder / "baselines.md").write_text(table + "\n")
        return {"backbone": str(folder / f"{cfg.cf.model}.safetensors"), "table": table,
                "weight_decay": {n: r["weight_decay"] for n, r in reports.items()}}

    return stage.run(build, force)


def cf_table_path(cfg: Config) -> Path:
    return cfg.run_dir / "cf" / f"{cfg.cf.model}.safetensors"
