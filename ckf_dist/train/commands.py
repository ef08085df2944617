"""CLI verbs that need the model: `ckf model init-tiny`, `ckf train`, `ckf eval`, `ckf recommend`.

`ckf train` runs every stage it depends on when its output is missing or stale (data prepare ->
CF train -> init-tiny when `model.path` is unset -> CKF training -> evaluation), each cached in
`run.dir` (see :mod:`ckf_dist.stages`). Training resumes from the latest checkpoint of an
interrupted run with the same configuration.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from ckf_dist.config import Config, ConfigError, load_config, to_dict
from ckf_dist.stages import Stage, _hash, cf_stage, data_stage, load_split, prepare_data, train_cf_stage

log = logging.getLogger(__name__)


def tiny_stage(cfg: Config) -> Stage:
    return Stage("llm", cfg.run_dir / "llm", _hash([data_stage(cfg).key, to_dict(cfg.tiny), cfg.model.placeholder_token]))


def training_stage(cfg: Config) -> Stage:
    llm_key = tiny_stage(cfg).key if not cfg.model.path else cfg.model.path
    parts = [cf_stage(cfg).key, llm_key, to_dict(cfg.model), to_dict(cfg.lora), to_dict(cfg.train), cfg.tasks, cfg.task_mix, cfg.seed]
    return Stage("train", cfg.run_dir / "train", _hash(parts))


def eval_stage(cfg: Config) -> Stage:
    return Stage("eval", cfg.run_dir / "eval", _hash([training_stage(cfg).key, to_dict(cfg.eval)]))


def ensure_tiny(cfg: Config, force: bool = False) -> Path:
    """The embedded LLM, pre-trained on training-split text only (titles, train reviews, summaries)."""
    from ckf_dist.models.tiny import init_tiny

    prepare_data(cfg)
    stage = tiny_stage(cfg)
    out = cfg.run_dir / "llm"

    def build(folder: Path) -> dict:
        sd = load_split(cfg)
        train = sd.part("train")
        texts = list(sd.item_titles) + [t for t in train["review"].tolist() if t] + [t for t in train["summary"].tolist() if t]
        # init_tiny writes atomically into `out`; keep the stage record outside the model files.
        record = folder / "stage.json"
        if record.exists():
            record.unlink()
        shutil.rmtree(out, ignore_errors=True)
        init_tiny(texts, cfg, out)
        info = out / "ckf_tiny.json"
        return json.loads(info.read_text()) if info.exists() else {}

    stage.run(build, force)
    return out


def cmd_init_tiny(args) -> int:
    from ckf_dist.stages import write_run_config

    cfg = load_config(args.config, args.overrides)
    write_run_config(cfg)
    out = ensure_tiny(cfg, force=args.force)
    print(f"tiny LLM: {out}")
    return 0


def run_training(cfg: Config, force: bool = False) -> dict:
    """CKF training through the configured launcher, cached and resumable."""
    from ckf_dist.train.launch import launch

    stage = training_stage(cfg)

    def build(folder: Path) -> dict:
        state_file = folder / "config_key"
        if state_file.exists() and state_file.read_text() != stage.key:
            log.info("training config changed: discarding old checkpoints in %s", folder)
            for sub in ("checkpoints", "tb", "final", "ray"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        state_file.write_text(stage.key)
        launch(cfg)
        return {"final": str(folder / "final" / "trainable.safetensors")}

    if force:
        shutil.rmtree(stage.folder / "checkpoints", ignore_errors=True)
    return stage.run(build, force)


def evaluate_run(cfg: Config, split: str = "test", device: str = "cpu") -> dict:
    """Load the final trainable weights into a fresh model and evaluate `split`."""
    from ckf_dist.data.shards import read_split

    evaluator = load_trained(cfg, device)
    samples = [s for s in read_split(cfg.run_dir / "data" / "shards", split) if s["task"] in cfg.tasks]
    return evaluator.evaluate(samples)


def load_trained(cfg: Config, device: str = "cpu"):
    """An Evaluator over the trained model of a finished run."""
    from ckf_dist.eval.loop import Evaluator
    from ckf_dist.models.factory import build_ckf_model
    from ckf_dist.train.recipe import model_dir

    final = cfg.run_dir / "train" / "final" / "trainable.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{final}: no trained weights (run `ckf train` first)")
    built = build_ckf_model(cfg, model_dir(cfg), cfg.run_dir / "cf" / f"{cfg.cf.model}.safetensors", device)
    model, collator = built.model, built.eval_collator
    model.load_trainable(final)
    model.eval()
    titles = json.loads((cfg.run_dir / "data" / "split" / "meta.json").read_text())["item_titles"]
    return Evaluator(model, collator, cfg, titles, device)


def run_eval_stage(cfg: Config, force: bool = False) -> dict:
    from ckf_dist.eval.loop import write_metrics

    stage = eval_stage(cfg)

    def build(folder: Path) -> dict:
        from ckf_dist.data.samples import protocol_of
        from ckf_dist.data.shards import load_manifest

        device = "cuda" if cfg.dist.use_gpu and torch.cuda.is_available() else "cpu"
        metrics = evaluate_run(cfg, "test", device=device)
        manifest = load_manifest(cfg.run_dir / "data" / "shards")
        per_epoch = int(sum(manifest["splits"]["train"]["tasks"].get(t, 0) for t in cfg.tasks))
        seen = cfg.train.steps * cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.dist.num_workers
        metrics["protocol"] = protocol_of(cfg, load_split(cfg))
        metrics["training"] = {"samples_per_epoch": per_epoch, "samples_seen": seen,
                               "epochs": round(seen / per_epoch, 4) if per_epoch else None}
        write_metrics(metrics, cfg.run_dir)
        return {"metrics": str(cfg.run_dir / "metrics.json")}

    return stage.run(build, force)


def cmd_train(args) -> int:
    from ckf_dist.stages import write_run_config

    cfg = load_config(args.config, args.overrides)
    write_run_config(cfg)
    summary = prepare_data(cfg)
    print(f"data: {summary['users']} users, {summary['items']} items, samples " +
          ", ".join(f"{s} {sum(v.values())}" for s, v in summary["samples"].items()))
    cf = train_cf_stage(cfg)
    if not cfg.model.path:
        ensure_tiny(cfg)
    run_training(cfg, force=args.force)
    run_eval_stage(cfg, force=args.force)
    print("\nCF and popularity baselines (test):")
    print(cf["table"])
    print("\nCKF (test):")
    print((cfg.run_dir / "metrics.md").read_text())
    print(f"run: {cfg.run_dir}  (metrics.json, train/tb for TensorBoard, config.yaml)")
    return 0


def _run_config(run: str) -> Config:
    p = Path(run) / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not a run directory (no config.yaml)")
    cfg = load_config(p)
    if Path(cfg.run.dir).resolve() != Path(run).resolve():
        cfg.run.dir = str(run)
    return cfg


def cmd_eval(args) -> int:
    from ckf_dist.eval.loop import metrics_markdown, write_metrics

    cfg = _run_config(args.run)
    metrics = evaluate_run(cfg, args.split)
    name = "metrics" if args.split == "test" else f"metrics_{args.split}"
    write_metrics(metrics, cfg.run_dir, name)
    print(metrics_markdown(metrics, f"{args.split} metrics"))
    return 0


def recommend(cfg: Config, user: str, k: int, candidates: int, device: str = "cpu") -> dict:
    """CF retrieves the top `candidates` unseen items; the LLM re-ranks them by candidate likelihood."""
    import numpy as np

    from ckf_dist.cf.tables import load_cf_tables
    from ckf_dist.data.samples import build_topk_request

    sd = load_split(cfg)
    if user not in sd.user_ids:
        raise ConfigError(f"--user: unknown user id {user!r} in {cfg.run_dir} (ids look like: {', '.join(sorted(sd.user_ids)[:3])})")
    u = sd.user_ids.index(user)
    tables = load_cf_tables(cfg.run_dir / "cf" / f"{cfg.cf.model}.safetensors")
    seen = set(sd.inter.loc[sd.inter["u"] == u, "i"].tolist())
    scores = tables.score(np.full(sd.num_items, u), np.arange(sd.num_items))
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen][:candidates]
    evaluator = load_trained(cfg, device)
    # Prompts hold data.topk_candidates candidates, as in training: re-rank group by group.
    group = cfg.data.topk_candidates
    requests = [build_topk_request(sd, cfg, u, order[j : j + group], n=j // group) for j in range(0, len(order), group)]
    llm_scores = [v for row in evaluator.candidate_scores(requests) for v in row]
    ranked = sorted(zip(order, llm_scores), key=lambda t: -t[1])[:k]
    out = {"user": user, "items": [{"item": sd.item_ids[i], "title": sd.item_titles[i], "score": s} for i, s in ranked]}
    if "explanation" in cfg.tasks and ranked:
        from ckf_dist.data.samples import build_explanation_request

        out["explanation"] = evaluator.generate([build_explanation_request(sd, cfg, u, ranked[0][0])])[0]
    out["requests"] = requests
    return out


def cmd_recommend(args) -> int:
    cfg = _run_config(args.run)
    res = recommend(cfg, args.user, args.k, args.candidates)
    print(f"top {len(res['items'])} for user {res['user']} (CF retrieval of {args.candidates}, LLM re-ranking):")
    for rank, it in enumerate(res["items"], 1):
        print(f"{rank:>3}. {it['title']}  (item {it['item']}, log-likelihood {it['score']:.3f})")
    if "explanation" in res:
        print(f"why the first: {res['explanation']}")
    return 0
