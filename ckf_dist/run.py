"""The run directory: its layout and its six cached stages, in one place.

A run is the folder `run.dir` of a config. Every path inside it, and every "is this stage up to
date", goes through :class:`Run`; nobody else spells a run-directory file name::

    .lock                          the run-directory lock (holder's pid, host and command)
    config.yaml                    the resolved config of the last command
    .source-digests.json           sha256 of each raw input file, under its size and mtime
    data/split/                    SplitData (interactions/part-*.parquet + meta.json)
    data/shards/                   webdataset shards + manifest
    data/staging/                  scratch files of `ckf data prepare` (removed when it ends)
    data/stage.json                ...each stage folder holds its record (key, seconds, summary)
    cf/<model>.safetensors         the CF tables of the backbone and of each baseline
    cf/baselines.json, .md         the CF / popularity baselines (valid and test)
    llm/                           the embedded tiny LLM (unless model.path names one)
    mode/<mapping>.safetensors     the first stage of a baseline mode (BinLLM codes, A-LLMRec alignment)
    train/checkpoints/step-N/      checkpoints (manifest.json of sha256 digests written last);
                                   train/checkpoints/latest names the newest
    train/tb/                      TensorBoard events + metrics.jsonl
    train/final/trainable.safetensors, train/final/peft/   the trained weights (+ manifest.json)
    train/ranks.json, train/config_key
    eval/stage.json                the evaluation stage's record
    metrics.json, metrics.md       test metrics (metrics_valid.* for `ckf eval --split valid`)
    predictions.jsonl              every scored test row: truth and prediction (predictions_valid.jsonl alike)
    deepspeed.json                 the derived DeepSpeed config
    ray/                           Ray Train storage (unless dist.storage_path)

Stages (data -> cf -> llm -> mode -> train -> eval) each own a folder and a key: a hash of the config
sections the stage depends on plus the keys of the stages it reads. Each record also keeps the
lineage of the build: the digest of the stage's own outputs and those of the upstream outputs it
consumed. A stage is fresh when its recorded key equals the current one and every upstream stage
still holds the outputs it was built from; a fresh stage is skipped. With `run.cache_dir`, the
cf and llm stages are built once per key and inputs and copied by the runs that share them
(:meth:`Run.stage_cache_entry`). The runners (what each stage
does) live in :mod:`ckf_dist.pipeline`; this module imports only the config and file helpers.

**Lock.** A command that writes into a run directory holds an exclusive OS lock (``flock``) on
``run.dir/.lock`` for its whole life (:meth:`Run.lock_for_writing`); a second writer stops with one
line naming the holder's pid, host and command, or waits (``--wait``). Commands that only read a
finished run take a shared lock (:meth:`Run.lock_for_reading`), so they never read a stage while
a writer rewrites it. The OS drops the lock when its process ends, however it ends (kill -9
included), so a lock is never stale; temporary checkpoint folders left by dead writers are
removed when the next writer takes the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ckf_dist.config import Config, ConfigError, load_config, save_config, to_dict
from ckf_dist.fsutil import atomic_write_text, sha256_file, verify_manifest
from ckf_dist.rating_scale import RatingScale

log = logging.getLogger(__name__)

STAGES = ("data", "cf", "llm", "mode", "train", "eval")


def stage_hash(obj) -> str:
    """The key of a stage: a short hash of its JSON-able inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_DIGESTS: dict[tuple, str] = {}
"""sha256 of raw input files by (path, size, mtime_ns), for this process: every stage key hashes
the data stage's, so a command computes the fingerprint many times."""


def source_fingerprint(cfg: Config, cache: Optional[Path] = None) -> str:
    """Identity of the raw input files: each file's name, size and sha256; synthetic data has none.

    The content, not the modification time, decides: a dataset copied or extracted again (new
    mtimes, same bytes) keeps every prepared run fresh, and an edit goes stale even when the size
    stays. `cache` (a JSON file) keeps each file's digest under its size and mtime, so a file is
    read again only when one of those changed."""
    paths = [p for p in (cfg.data.path, cfg.data.meta_path) if p]
    known: dict = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    seen: dict = {}
    entries = []
    for p in paths:
        root = Path(p)
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            if not f.exists():
                entries.append([str(f), None, None])
                continue
            st = f.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            hit = known.get(str(f))
            digest = hit[2] if isinstance(hit, list) and len(hit) == 3 and hit[:2] == stamp else None
            if digest is None:  # hashed once per process, even before the run directory exists
                key = (str(f), *stamp)
                if key not in _DIGESTS:
                    _DIGESTS[key] = sha256_file(f)
                digest = _DIGESTS[key]
            seen[str(f)] = [*stamp, digest]
            entries.append([str(f), st.st_size, digest])
    if cache is not None and seen and seen != known and cache.parent.is_dir():
        try:
            atomic_write_text(cache, json.dumps(seen, indent=1, sort_keys=True))
        except OSError as e:  # a read-only run directory: the digests are computed again next time
            log.debug("source digests not cached in %s: %s", cache, e)
    return stage_hash(entries)


SAMPLE_SCHEMA = 2
"""Version of the sample dicts the data stage writes (ckf_dist.data.samples): 2 added
``history_ratings``. Part of the data stage's key, so shards of an older schema are rebuilt."""

DATA_KEY_IGNORES = ("engine", "workers", "block_mb")
"""data.* keys that choose how preparation runs, not what it writes (both engines write the same
files): left out of the data stage key, so switching engines reuses the prepared data."""

TRAIN_KEY_IGNORES = ("debug_checks", "activation_checkpointing")
"""train.* keys that do not change what training computes: left out of the training stage key, so
switching them keeps a finished run fresh (and the keys of runs made before they existed)."""


ADDED_KEYS = {
    "data": ("title_description", "item_rating_stats", "features_first"),
    "cf": ("sasrec_blocks", "sasrec_heads", "seq_dropout", "fold_in_ridge", "cross_fit"),
    "model": ("binllm_bits", "binllm_compress", "allmrec_dim", "align_epochs"),
    "train": ("user_fold_in_rate", "user_token_dropout", "item_first_until"),
}
"""Keys added to a section after runs were made: left out of the stage keys while at their default,
so those runs stay fresh."""


def _section_key(cfg: Config, name: str) -> dict:
    """to_dict of section `name` without its ADDED_KEYS that hold their default value."""
    section = getattr(cfg, name)
    default = type(section)()
    return {k: v for k, v in to_dict(section).items() if not (k in ADDED_KEYS.get(name, ()) and v == getattr(default, k))}


def _train_key(cfg: Config) -> dict:
    """train.* as the training key hashes it: with the loader.* keys under their former train.*
    names (a run made before they moved stays fresh), without TRAIN_KEY_IGNORES."""
    d = {k: v for k, v in _section_key(cfg, "train").items() if k not in TRAIN_KEY_IGNORES}
    d.update(data_workers=cfg.loader.workers, shuffle_buffer=cfg.loader.shuffle_buffer, length_group=cfg.loader.length_group)
    return d


class RunBusy(ConfigError):
    """Another process holds the run directory's lock (one line: who, where, what)."""


class StaleStage(ConfigError):
    """A stage's outputs were not built from what the run now holds (one line: what changed)."""


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _changes(old: dict, new: dict, limit: int = 3) -> str:
    """`key: old -> new` for the first `limit` keys whose values differ (dotted names)."""
    a, b = _flat(old), _flat(json.loads(json.dumps(new, default=str)))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    text = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:limit])
    return text + (f" (+{len(diff) - limit} more)" if len(diff) > limit else "")


@dataclass
class Stage:
    """One cached step of the pipeline.

    `config` names what the key hashes (recorded, so a stale stage can say what changed);
    `upstream` are the stages whose outputs it consumes; `outputs` lists the files whose digest
    identifies what it built (its lineage fingerprint, read by the stages downstream)."""

    name: str
    folder: Path
    key: str
    config: dict = field(default_factory=dict)
    upstream: dict[str, "Stage"] = field(default_factory=dict)
    outputs: Callable[[], list[Path]] = lambda: []

    @property
    def record(self) -> Path:
        return self.folder / "stage.json"

    def read_record(self) -> Optional[dict]:
        if not self.record.is_file():
            return None
        try:
            rec = json.loads(self.record.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        return rec if isinstance(rec, dict) else None

    def output(self) -> Optional[str]:
        """The recorded digest of this stage's outputs (None: not built, or built before lineage)."""
        return (self.read_record() or {}).get("output")

    def digest(self) -> str:
        """sha256 over the files of :attr:`outputs` (names and contents)."""
        h = hashlib.sha256()
        for p in sorted(Path(p) for p in self.outputs()):
            if p.is_file():
                name = p.relative_to(self.folder.parent) if p.is_relative_to(self.folder.parent) else p
                h.update(f"{name}\0".encode())
                h.update(sha256_file(p).encode())
        return h.hexdigest()[:16]

    def problem(self) -> Optional[str]:
        """None when fresh; else why not, in one line (no record, another config, other inputs)."""
        rec = self.read_record()
        if rec is None:
            return f"{self.folder.name}/ has no stage record (never built, or its build did not finish)"
        if rec.get("key") != self.key:
            what = _changes(rec["config"], self.config) if isinstance(rec.get("config"), dict) and self.config else ""
            return f"{self.folder.name}/ was built for another configuration" + (f" ({what})" if what else "")
        for name, stage in self.upstream.items():
            used, now = (rec.get("inputs") or {}).get(name), stage.output()
            if used is not None and now is not None and used != now:
                return (f"{self.folder.name}/ was built from {stage.folder.name}/ {used}, which now holds {now} "
                        f"(rebuilt since)")
        return None

    def fresh(self) -> bool:
        return self.problem() is None

    def clear_record(self) -> None:
        if self.record.exists():
            self.record.unlink()

    def run(self, fn: Callable[[Path], dict], force: bool = False, intact: Optional[Callable[[], Optional[str]]] = None) -> dict:
        """Run `fn(folder)` unless fresh (and, when `intact` is given, its outputs check out:
        `intact()` returns None or the problem); returns the recorded summary either way."""
        problem = None if force else self.problem()
        if not force and problem is None:
            broken = intact() if intact is not None else None
            if broken is None:
                log.info("stage %s: up to date (%s), skipped", self.name, self.folder)
                return self.read_record()["summary"]
            log.warning("stage %s: %s; rebuilding", self.name, broken)
        elif problem is not None and self.record.is_file():
            log.info("stage %s: %s; rebuilding", self.name, problem)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clear_record()
        inputs = {name: stage.output() for name, stage in self.upstream.items()}
        t0 = time.time()
        summary = fn(self.folder)
        rec = {"key": self.key, "seconds": round(time.time() - t0, 2), "summary": summary,
               "inputs": inputs, "output": self.digest(), "config": self.config}
        atomic_write_text(self.record, json.dumps(rec, indent=2, default=str))
        return summary


# ------------------------------------------------------------------------------------------------
# The run-directory lock

_HELD: dict[str, dict] = {}
"""Locks this process holds: resolved run dir -> {fd, mode, count}."""


def _holder_line(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        info = json.loads(raw) if raw else None
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return "a process that reads it (`ckf recommend` or `ckf report`) or a writer just starting"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (`{info.get('command')}`, since {since})"


def _command_line(limit: int = 120) -> str:
    """This process's command line as the lock records it (shortened in the middle)."""
    text = " ".join(["ckf", *sys.argv[1:]]) if sys.argv else "ckf"
    return text if len(text) <= limit else text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3):]


def _acquire(run_dir: Path, exclusive: bool, wait: bool) -> bool:
    """Take the lock of `run_dir`; True when this call took it (not already held here)."""
    key = str(run_dir.resolve())
    held = _HELD.get(key)
    if held is not None:
        if exclusive and held["mode"] != "exclusive":
            raise RunBusy(f"{run_dir}: this process reads the run and cannot also write it")
        held["count"] += 1
        return False
    lock_file = run_dir / ".lock"
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if exclusive:
            raise RunBusy(f"{run_dir}: cannot create its lock file ({e.strerror}); is the folder writable?") from None
        try:  # a reader of a read-only copy: lock it if the file is there, else nobody can write it
            fd = os.open(lock_file, os.O_RDONLY)
        except OSError:
            return False
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_line(fd)
            if not wait:
                verb = "write" if exclusive else "read"
                raise RunBusy(f"{run_dir} is in use by {holder}; cannot {verb} it now (wait for it, or pass --wait)") from None
            log.warning("%s is in use by %s; waiting for it", run_dir, holder)
            fcntl.flock(fd, op)
    except BaseException:
        os.close(fd)
        raise
    if exclusive:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": _command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _HELD[key] = {"fd": fd, "mode": "exclusive" if exclusive else "shared", "count": 1}
    return True


def _release(key: str) -> None:
    held = _HELD.pop(key)
    fd = held["fd"]
    try:
        if held["mode"] == "exclusive":
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def release_locks() -> None:
    """Release every run-directory lock this process holds (the end of a command)."""
    for key in list(_HELD):
        _release(key)


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

    # ------------------------------------------------------------------ lock
    def lock_for_writing(self, wait: bool = False) -> None:
        """Hold the exclusive lock of this run directory until :func:`release_locks` or the end of
        the process; a second writer (or a reader) elsewhere gets :class:`RunBusy`, or waits with
        `wait`. Taking it removes the temporary checkpoint folders of writers that died."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if _acquire(self.dir, exclusive=True, wait=wait):
            self.remove_stale_temporaries()

    def lock_for_reading(self, wait: bool = False) -> None:
        """Hold a shared lock: no writer changes the run while this process reads it."""
        if self.dir.is_dir():
            _acquire(self.dir, exclusive=False, wait=wait)

    def unlock(self) -> None:
        """Give back one hold of this directory's lock (released when the last hold goes)."""
        key = str(self.dir.resolve())
        if key in _HELD:
            _HELD[key]["count"] -= 1
            if _HELD[key]["count"] <= 0:
                _release(key)

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary folders and files a dead writer left (``.step-N.tmp-PID``, ``.old-PID``, ``*.tmp``)
        under train/; only called with the exclusive lock held, when no other writer can be at work."""
        stale = []
        for folder in (self.checkpoints_dir, self.train_dir, self.final_dir):
            if folder.is_dir():
                stale += [p for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)]
                stale += [p for p in folder.iterdir() if p.is_file() and p.name.endswith(".tmp")]
        for p in stale:
            log.warning("removed %s, left by a writer that did not finish", p)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return stale

    # ------------------------------------------------------------------ top level
    @property
    def source_digests_file(self) -> Path:
        """The cache of :func:`source_fingerprint`: a raw input is hashed again only when its size
        or mtime changed."""
        return self.dir / ".source-digests.json"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def write_config(self) -> Path:
        """Every command that builds from a config keeps the resolved config in run.dir."""
        return save_config(self.cfg, self.config_file)

    def metrics_file(self, split: str = "test") -> Path:
        """metrics.json for the test split, metrics_<split>.json otherwise (the .md twin beside)."""
        return self.dir / ("metrics.json" if split == "test" else f"metrics_{split}.json")

    def predictions_file(self, split: str = "test") -> Path:
        """Every scored row's prediction (JSON lines): predictions.jsonl for the test split,
        predictions_<split>.jsonl otherwise."""
        return self.dir / ("predictions.jsonl" if split == "test" else f"predictions_{split}.jsonl")

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

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

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

    # ------------------------------------------------------------------ mode
    @property
    def mode_dir(self) -> Path:
        return self.dir / "mode"

    @property
    def mode_file(self) -> Path:
        """The first-stage output of the configured mode (model.mapping=binllm | allmrec)."""
        return self.mode_dir / f"{self.cfg.model.mapping}.safetensors"

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
        """The checkpoint the `latest` pointer names (not verified; see :meth:`latest_intact_checkpoint`)."""
        if not self.latest_pointer.is_file():
            return None
        p = self.checkpoints_dir / self.latest_pointer.read_text().strip()
        return p if p.is_dir() else None

    def latest_intact_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint whose files match its sha256 manifest; every newer one that does
        not is skipped with a warning naming it and the problem. None when none is intact."""
        named = self.latest_checkpoint()
        candidates = sorted(self.checkpoints(), reverse=True)
        if named is not None:
            candidates = [named] + [c for c in candidates if c != named]
        for c in candidates:
            problem = verify_manifest(c)
            if problem is None:
                return c
            log.warning("checkpoint %s is not intact (%s): skipped, falling back to an older one", c, problem)
        return None

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

    def verify_final(self) -> None:
        """The final weights match the manifest training wrote beside them; else one line
        (:class:`StaleStage`) naming the file: edited weights must not give other metrics."""
        if not self.final_weights.is_file():
            raise FileNotFoundError(f"{self.final_weights}: no trained weights (run `ckf train` first)")
        if not (self.final_dir / "manifest.json").is_file():
            log.warning("%s: no manifest.json (written before manifests existed): the weights are not verified", self.final_dir)
            return
        problem = verify_manifest(self.final_dir)
        if problem is not None:
            raise StaleStage(f"{self.final_dir}: {problem}; retrain (`ckf train --force`) or restore the folder")

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
        source = source_fingerprint(cfg, self.source_digests_file)
        data = {k: v for k, v in _section_key(cfg, "data").items() if k not in DATA_KEY_IGNORES}
        key = stage_hash([data, cfg.tasks, cfg.seed, cfg.model.placeholder_token, source, SAMPLE_SCHEMA])
        config = {"data": data, "tasks": cfg.tasks, "seed": cfg.seed,
                  "model": {"placeholder_token": cfg.model.placeholder_token}, "source_files": source,
                  "sample_schema": SAMPLE_SCHEMA}
        return Stage("data", self.data_dir, key, config,
                     outputs=lambda: [*sorted(p for p in self.split_dir.rglob("*") if p.is_file()),
                                      self.shards_dir / "manifest.json"])

    def stage_cache_entry(self, stage: Stage) -> Optional[Path]:
        """run.cache_dir/<stage>/<stage key>-<digest of its inputs>: the one built copy of a stage
        (the CF tables, the embedded LLM) that every run with the same config sections and the same
        upstream outputs shares; None when run.cache_dir is unset or an upstream stage has no
        recorded output."""
        if not self.cfg.run.cache_dir:
            return None
        inputs = {name: up.output() for name, up in stage.upstream.items()}
        if any(v is None for v in inputs.values()):
            return None
        return Path(self.cfg.run.cache_dir) / stage.name / f"{stage.key}-{stage_hash(inputs)}"

    def cf_stage(self) -> Stage:
        cfg = self.cfg
        data = self.data_stage()
        key = stage_hash([data.key, _section_key(cfg, "cf"), cfg.eval.ks, cfg.eval.max_samples_per_task, cfg.eval.task_caps])
        config = {**data.config, "cf": _section_key(cfg, "cf"),
                  "eval": {"ks": cfg.eval.ks, "max_samples_per_task": cfg.eval.max_samples_per_task, "task_caps": cfg.eval.task_caps}}
        return Stage("cf", self.cf_dir, key, config, {"data": data},
                     outputs=lambda: sorted(self.cf_dir.glob("*.safetensors")))  # what later stages read

    def llm_stage(self) -> Stage:
        cfg = self.cfg
        data = self.data_stage()
        key = stage_hash([data.key, to_dict(cfg.tiny), cfg.model.placeholder_token])
        return Stage("llm", self.llm_dir, key, {**data.config, "tiny": to_dict(cfg.tiny)}, {"data": data},
                     outputs=lambda: sorted(p for p in self.llm_dir.rglob("*") if p.is_file() and p.name != "stage.json"))

    def mode_stage(self) -> Stage:
        """BinLLM's binarisation layer or A-LLMRec's alignment network, trained on the frozen CF tables
        (and, for A-LLMRec, the LLM's text embeddings of the items)."""
        cfg, m = self.cfg, self.cfg.model
        cf = self.cf_stage()
        upstream = {"cf": cf}
        parts = [cf.key, m.mapping, cfg.seed]
        config = {**cf.config, "model": {"mapping": m.mapping}}
        if m.mapping == "binllm":
            parts += [m.binllm_bits]
            config["model"]["binllm_bits"] = m.binllm_bits
        elif m.mapping == "allmrec":
            if not m.path:
                upstream["llm"] = self.llm_stage()
            llm_key = upstream["llm"].key if not m.path else m.path
            parts += [llm_key, m.placeholder_token, m.allmrec_dim, m.align_epochs]
            config.update(upstream["llm"].config if "llm" in upstream else {})
            config["model"] = {"mapping": m.mapping, "path": m.path, "placeholder_token": m.placeholder_token,
                               "allmrec_dim": m.allmrec_dim, "align_epochs": m.align_epochs}
        return Stage("mode", self.mode_dir, stage_hash(parts), config, upstream, outputs=lambda: [self.mode_file])

    def train_stage(self) -> Stage:
        cfg = self.cfg
        cf = self.cf_stage()
        upstream = {"data": cf.upstream["data"], "cf": cf}
        if not cfg.model.path:
            upstream["llm"] = self.llm_stage()
        llm_key = upstream["llm"].key if not cfg.model.path else cfg.model.path
        model = _section_key(cfg, "model")
        parts = [cf.key, llm_key, model, to_dict(cfg.lora), _train_key(cfg), cfg.tasks, cfg.task_mix, cfg.seed]
        if cfg.model.needs_mode_stage():
            upstream["mode"] = self.mode_stage()
            parts.append(upstream["mode"].key)
        config = {**cf.config, **(upstream["llm"].config if "llm" in upstream else {}), "model": model,
                  "lora": to_dict(cfg.lora), "train": _train_key(cfg), "task_mix": cfg.task_mix}
        return Stage("train", self.train_dir, stage_hash(parts), config, upstream,
                     outputs=lambda: [self.final_weights])

    def eval_stage(self) -> Stage:
        train = self.train_stage()
        return Stage("eval", self.eval_dir, stage_hash([train.key, to_dict(self.cfg.eval)]),
                     {**train.config, "eval": to_dict(self.cfg.eval)}, {"train": train},
                     outputs=lambda: [self.metrics_file("test")])

    def check_current(self, names: tuple[str, ...] = ("data", "cf", "llm", "mode", "train")) -> None:
        """Readers of a finished run (`ckf eval`, `ckf recommend`): every stage they read is fresh
        for the run's config.yaml and built from what its upstream stages now hold; else one line
        (:class:`StaleStage`) saying what changed."""
        for name in names:
            if (name == "llm" and self.cfg.model.path) or (name == "mode" and not self.cfg.model.needs_mode_stage()):
                continue
            problem = self.stage(name).problem()
            if problem is not None:
                raise StaleStage(f"{self.dir}: {problem}; rerun `ckf train` with this run's config to rebuild it")

    def stage(self, name: str) -> Stage:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} (have {', '.join(STAGES)})")
        return getattr(self, f"{name}_stage")()
