"""The stage runners: data prepare -> CF train (+ baselines) -> tiny LLM -> mode stage -> CKF training -> eval.

Each runner runs its stage through :class:`ckf_dist.run.Run` (which owns the folders and the
keys), so a fresh stage is skipped and anything else reruns. This module wires components
together; the components themselves (loaders, CF models, shards, the recipe) know nothing of
caching or the CLI. `ckf train` calls :func:`run_all`.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Callable

import torch

from ckf_dist.cf.align import save_alignment, train_alignment
from ckf_dist.cf.baselines import baseline_table_markdown, run_baselines
from ckf_dist.cf.binarize import save_binarizer, train_binarizer
from ckf_dist.cf.crossfit import fit_cross_folds
from ckf_dist.cf.fit import SPLIT_COLUMNS, train_cf
from ckf_dist.cf.tables import load_cf_tables, save_cf_tables
from ckf_dist.data.prepare import prepare
from ckf_dist.data.samples import protocol_of
from ckf_dist.data.shards import load_manifest, read_split, sample_stream, shard_urls, verify_shards
from ckf_dist.data.splits import item_texts
from ckf_dist.data.table import SplitData
from ckf_dist.eval.loop import write_metrics
from ckf_dist.eval.serve import evaluate_run
from ckf_dist.fsutil import atomic_write_text, copy_dir, exclusive_lock, verify_manifest
from ckf_dist.models.llm import load_llm
from ckf_dist.models.text_embed import mean_pooled_embeddings
from ckf_dist.models.tiny import INFO_FILE, init_tiny
from ckf_dist.run import Run, Stage, stage_hash
from ckf_dist.train.launch import launch

log = logging.getLogger(__name__)


def load_split(run: Run) -> SplitData:
    return SplitData.load(run.split_dir)


def prepare_data(run: Run, force: bool = False) -> dict:
    """Load -> split -> samples -> shards (data.engine: this process or Ray Data), cached in run.dir/data."""
    cfg = run.cfg
    stage = run.data_stage()

    def build(folder: Path) -> dict:
        return prepare(cfg, run.split_dir, run.shards_dir, run.staging_dir, stage.key)

    # fresh only while every shard the manifest lists is there, whole
    return stage.run(build, force, intact=lambda: verify_shards(run.shards_dir))


def train_cf_stage(run: Run, force: bool = False) -> dict:
    """Train the CF backbone (and the other CF baselines), evaluate baselines; cached in run.dir/cf
    (and shared through run.cache_dir, :func:`run_cached`)."""
    cfg = run.cfg
    prepare_data(run)
    stage = run.cf_stage()

    def build(folder: Path) -> None:
        sd = SplitData.load(run.split_dir, columns=[*SPLIT_COLUMNS, "summary"])  # summaries: the explanation baseline
        samples = {s: read_split(run.shards_dir, s) for s in ("valid", "test")}
        names = list(dict.fromkeys([cfg.cf.model, *cfg.cf.baselines]))
        tables, reports = {}, {}
        for name in names:
            t, report = train_cf(sd, cfg.cf, cfg.seed, name, history_len=cfg.data.history_len)
            if name == cfg.cf.model and cfg.cf.cross_fit:  # the backbone's out-of-fold tables, for training rows
                t.cross_fit = fit_cross_folds(sd, cfg.cf, cfg.seed, t, name, history_len=cfg.data.history_len)
            save_cf_tables(  # no timings in the tables: equal inputs give byte-equal files (the stage's lineage)
                run.cf_table(name), t.user_emb, t.item_emb, t.user_ids, t.item_ids,
                extra={**t.meta, **{k: v for k, v in report.items() if k not in ("grid", "seconds")}},
                user_bias=t.user_bias, item_bias=t.item_bias, global_bias=t.global_bias, encoder=t.encoder or None,
                cross_fit=t.cross_fit or None,
            )
            tables[name], reports[name] = t, report
        results = {split: run_baselines(sd, samples, cfg, cfg.seed, split=split, tables=tables) for split in ("valid", "test")}
        atomic_write_text(run.baselines_json, json.dumps({"results": results, "training": reports}, indent=2, default=str))
        atomic_write_text(run.baselines_markdown, baseline_table_markdown(results["test"]) + "\n")

    def summarize(folder: Path) -> dict:
        training = json.loads(run.baselines_json.read_text())["training"]
        return {"backbone": str(run.cf_table()), "table": run.baselines_markdown.read_text().rstrip("\n"),
                "weight_decay": {n: r["weight_decay"] for n, r in training.items()}}

    return run_cached(run, stage, build, summarize, force)


def pretraining_texts(run: Run) -> list[str]:
    """The embedded LLM's corpus, from the training split only: titles, train reviews and summaries,
    and the first `tiny.prompt_texts` training prompts in shard order (text-only twins), each
    followed by an answer drawn uniformly from its task's answer set (Yes / No, the rating levels,
    one of the candidates' titles; explanation prompts stand alone). The drawn answer carries no
    label: the LLM learns the language and the answer format of its prompts, as a real LLM knows
    them, but nothing of who likes what."""
    cfg = run.cfg
    sd = load_split(run)
    train = sd.part("train")
    texts = list(sd.item_titles) + [t for t in train["review"].tolist() if t] + [t for t in train["summary"].tolist() if t]
    if cfg.tiny.prompt_texts:
        rng = random.Random(f"ckf-tiny-corpus/{cfg.seed}")
        answers = {"ctr": ["Yes", "No"], "rating": sd.scale.answers, "review_rating": sd.scale.answers}
        stream = sample_stream(shard_urls(run.shards_dir, "train"), rank=0, world_size=1)
        for s in itertools.islice(stream, cfg.tiny.prompt_texts):
            choices = answers.get(s["task"]) or [sd.item_titles[c] for c in s["candidates"]]
            # joined as the collator joins prompt and target tokens (the target has no leading space)
            texts.append(s["prompt_text"] + (rng.choice(choices) if choices else ""))
    return texts


def ensure_tiny(run: Run, force: bool = False) -> Path:
    """The embedded LLM, pre-trained on training-split text only (:func:`pretraining_texts`); with
    run.cache_dir, pre-trained once per data, tiny.* and seed and copied by the other runs (:func:`run_cached`)."""
    cfg = run.cfg
    prepare_data(run)

    def build(folder: Path) -> None:
        init_tiny(pretraining_texts(run), cfg, folder)  # writes atomically into the stage folder

    def summarize(folder: Path) -> dict:
        info = folder / INFO_FILE
        return json.loads(info.read_text()) if info.exists() else {}

    run_cached(run, run.llm_stage(), build, summarize, force)
    return run.llm_dir


def run_cached(run: Run, stage: Stage, build: Callable[[Path], None], summarize: Callable[[Path], dict],
               force: bool = False) -> dict:
    """Run `stage`: `build(folder)` writes its files, `summarize(folder)` reads its summary back
    from them. With run.cache_dir, a stage is built once per key and inputs
    (:meth:`Run.stage_cache_entry`) and copied by every other run that needs it: the entry is
    written whole with a sha256 manifest; a run that finds it damaged builds again and replaces
    it; a stage built before run.cache_dir was set publishes itself. The entry's lock covers the
    build, so a run with the same inputs waits for it, then copies."""
    entry = run.stage_cache_entry(stage)
    built: list[bool] = []  # set when build_or_copy built rather than copied

    def build_or_copy(folder: Path) -> dict:
        problem = "no run.cache_dir" if entry is None else verify_manifest(entry)
        if problem is None:
            copy_dir(entry, folder, ignore=("manifest.json",))
            log.info("stage %s: copied from %s (built by a run with the same inputs)", stage.name, entry)
        else:
            if entry is not None and entry.exists():
                log.warning("stage %s: cache entry %s: %s; building again", stage.name, entry, problem)
            shutil.rmtree(folder, ignore_errors=True)  # the folder holds only what this build writes
            folder.mkdir(parents=True)
            build(folder)
            built.append(True)
        return summarize(folder)

    if entry is None or (not force and stage.fresh() and entry.is_dir()):  # nothing to build or share
        return stage.run(build_or_copy, force)
    with exclusive_lock(entry.parent / f"{entry.name}.lock"):
        summary = stage.run(build_or_copy, force)
        if built or not entry.is_dir():  # built here, or before run.cache_dir was set
            copy_dir(stage.folder, entry, ignore=(stage.record.name,), manifest=True)
    return summary


def train_mode_stage(run: Run, force: bool = False) -> dict:
    """The first stage of a baseline mode, on the frozen CF tables, cached in run.dir/mode:
    BinLLM's binarisation layers (model.mapping=binllm), A-LLMRec's alignment of the CF items with
    the LLM's text embeddings of them (model.mapping=allmrec). Nothing for the other modes."""
    cfg = run.cfg
    if not cfg.model.needs_mode_stage():
        return {}
    train_cf_stage(run)
    if cfg.model.mapping == "allmrec" and not cfg.model.path:
        ensure_tiny(run)
    stage = run.mode_stage()

    def build(folder: Path) -> dict:
        sd = load_split(run)
        tables = load_cf_tables(run.cf_table())
        if cfg.model.mapping == "binllm":
            weights, report = train_binarizer(sd, tables, cfg.cf, cfg.model.binllm_bits, cfg.seed)
            save_binarizer(run.mode_file, weights, report)
        else:
            device = "cuda" if cfg.dist.use_gpu and torch.cuda.is_available() else "cpu"
            llm, tok = load_llm(run.model_dir, cfg.model.placeholder_token, dtype=torch.float32)
            names = sd.item_titles if cfg.data.title_description else item_texts(sd.item_titles, sd.item_text)
            text = mean_pooled_embeddings(llm, tok, names, device=device)
            del llm
            aligned, weights, report = train_alignment(sd, tables, text, cfg.model.allmrec_dim, cfg.model.align_epochs,
                                                       cfg.seed, cfg.cf.batch_size, cfg.data.history_len)
            save_alignment(run.mode_file, aligned, weights, report)
            report["last_epoch"] = report["history"][-1]
        return {"file": str(run.mode_file), **{k: v for k, v in report.items() if k != "history"}}

    return stage.run(build, force)


def run_training(run: Run, force: bool = False) -> dict:
    """CKF training through the configured launcher, cached and resumable."""
    stage = run.train_stage()

    def build(folder: Path) -> dict:
        # checkpoints resume only under the same config and the same inputs (CF tables, LLM)
        state_key = stage_hash([stage.key, {name: up.output() for name, up in stage.upstream.items()}])
        state_file = run.config_key_file
        if state_file.exists() and state_file.read_text() != state_key:
            log.info("training config or inputs changed: discarding old checkpoints in %s", folder)
            run.clear_training()
        atomic_write_text(state_file, state_key)
        launch(run)
        return {"final": str(run.final_weights)}

    if force:
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
    return stage.run(build, force)


def run_eval_stage(run: Run, force: bool = False) -> dict:
    """Test metrics of the trained model (metrics.json/md), with the protocol and epochs seen."""
    cfg = run.cfg
    stage = run.eval_stage()

    def build(folder: Path) -> dict:
        device = "cuda" if cfg.dist.use_gpu and torch.cuda.is_available() else "cpu"
        metrics = evaluate_run(run, "test", device=device)
        manifest = load_manifest(run.shards_dir)
        per_epoch = int(sum(manifest["splits"]["train"]["tasks"].get(t, 0) for t in cfg.tasks))
        seen = cfg.train.steps * cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.dist.num_workers
        metrics["protocol"] = protocol_of(cfg, load_split(run))
        metrics["training"] = {"samples_per_epoch": per_epoch, "samples_seen": seen,
                               "epochs": round(seen / per_epoch, 4) if per_epoch else None}
        write_metrics(metrics, run.metrics_file("test"))
        return {"metrics": str(run.metrics_file("test"))}

    return stage.run(build, force)


def prepare_inputs(run: Run) -> None:
    """Every stage training reads: data, CF tables, the tiny LLM unless model.path is set."""
    prepare_data(run)
    train_cf_stage(run)
    if not run.cfg.model.path:
        ensure_tiny(run)
    train_mode_stage(run)


def run_all(run: Run, force: bool = False) -> dict:
    """`ckf train`: every stage, each skipped when fresh; returns the data and CF summaries."""
    data = prepare_data(run)
    cf = train_cf_stage(run)
    if not run.cfg.model.path:
        ensure_tiny(run)
    train_mode_stage(run)
    run_training(run, force=force)
    run_eval_stage(run, force=force)
    return {"data": data, "cf": cf}
