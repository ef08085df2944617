"""A finished run, served: `ckf eval` (metrics of a split) and `ckf recommend` (CF retrieval, LLM
re-ranking, an explanation), both over the model :func:`load_trained` rebuilds from the run."""

from __future__ import annotations

import logging

import numpy as np

from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.config import ConfigError
from ckf_dist.data.samples import build_explanation_request, build_topk_request
from ckf_dist.data.shards import BadShardCounter, read_split
from ckf_dist.data.table import SplitData
from ckf_dist.eval.loop import Evaluator
from ckf_dist.models.factory import build_ckf_model
from ckf_dist.run import Run, StaleStage

log = logging.getLogger(__name__)


def check_tables(run: Run, tables) -> None:
    """The CF table's rows are the split's users and items (one line naming the table if not)."""
    meta = run.split_meta()
    problem = tables.id_mismatch(meta["user_ids"], meta["item_ids"])
    if problem is not None:
        raise StaleStage(f"{run.cf_table()}: {problem}; rerun `ckf train` with this run's config to rebuild it")


def load_trained(run: Run, device: str = "cpu") -> Evaluator:
    """An Evaluator over the trained model of a finished run: every stage it reads current
    (:meth:`Run.check_current`), the final weights as training wrote them (:meth:`Run.verify_final`),
    the CF table's ids those of the split."""
    final = run.final_weights
    if not final.is_file():
        raise FileNotFoundError(f"{final}: no trained weights (run `ckf train` first)")
    run.check_current()
    run.verify_final()
    built = build_ckf_model(run.cfg, run.model_dir, run.cf_table(), device, mode_path=run.mode_file)
    check_tables(run, built.tables)
    model, collator = built.model, built.eval_collator
    model.load_trainable(final)
    model.eval()
    return Evaluator(model, collator, run.cfg, run.item_titles(), device, run.rating_scale())


def evaluate_run(run: Run, split: str = "test", device: str = "cpu") -> dict:
    """Load the final trainable weights into a fresh model and evaluate `split` (each row's
    prediction to `run.predictions_file(split)`). A bad shard
    (unreadable, or not the sample count of the manifest) stops with one line under
    dist.on_bad_shard=error; under skip it is left out and counted (`bad_shards` in the metrics)."""
    evaluator = load_trained(run, device)
    bad = BadShardCounter(run.cfg.dist.on_bad_shard)
    samples = [s for s in read_split(run.shards_dir, split, bad_shards=bad) if s["task"] in run.cfg.tasks]
    metrics = evaluator.evaluate(samples, predictions=run.predictions_file(split))
    if bad.count:
        log.warning("%s: %d bad %s shard(s) left out of the evaluation", run.dir, bad.count, split)
        metrics["bad_shards"] = bad.count
    return metrics


def recommend(run: Run, user: str, k: int, candidates: int, device: str = "cpu") -> dict:
    """CF retrieves the top `candidates` unseen items; the LLM re-ranks them by candidate likelihood."""
    cfg = run.cfg
    if k < 1 or candidates < 1:
        raise ConfigError(f"recommend: k and candidates must be at least 1 (got k={k}, candidates={candidates})")
    run.check_current()
    sd = SplitData.load(run.split_dir)
    if user not in sd.user_ids:
        raise ConfigError(f"--user: unknown user id {user!r} in {run.dir} (ids look like: {', '.join(sorted(sd.user_ids)[:3])})")
    u = sd.user_ids.index(user)
    tables = load_cf_tables(run.cf_table())
    check_tables(run, tables)
    seen = set(sd.inter.loc[sd.inter["u"] == u, "i"].tolist())
    scores = tables.score(np.full(sd.num_items, u), np.arange(sd.num_items))
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen][:candidates]
    evaluator = load_trained(run, device)
    # Prompts hold data.topk_candidates candidates, as in training: re-rank group by group.
    group = cfg.data.topk_candidates
    requests = [build_topk_request(sd, cfg, u, order[j : j + group], n=j // group) for j in range(0, len(order), group)]
    llm_scores = [v for row in evaluator.candidate_scores(requests) for v in row]
    ranked = sorted(zip(order, llm_scores), key=lambda t: -t[1])[:k]
    out = {"user": user, "items": [{"item": sd.item_ids[i], "title": sd.item_titles[i], "score": s} for i, s in ranked]}
    if "explanation" in cfg.tasks and ranked:
        out["explanation"] = evaluator.generate([build_explanation_request(sd, cfg, u, ranked[0][0])])[0]
    out["requests"] = requests
    return out
