"""`ckf eval --workers N`: a split scored as Ray Data batch inference, the metrics reduced exactly.

The driver picks the evaluation rows exactly as the single-process evaluator does
(:func:`ckf_dist.eval.loop.eval_rows`: same caps, same seeded selection) and cuts each task's rows
into the evaluator's own batches (``eval.batch_size``). Each batch is one Ray Data row; a pool of
N actors, each holding the trained model once, scores batches with
:meth:`~ckf_dist.eval.loop.Evaluator.predict`. A batch's numbers depend on that batch only (the
prompts are right-padded and masked, the topk decoding budget is a property of the catalogue), so
the predictions are those of the single-process run, whatever N (bit for bit when the workers use
torch's thread count of the driver; otherwise to float rounding of a sum's order); they are put back in row order by
(task, offset) and the metrics, UAUC's per-user grouping included, are computed once on the
driver: no row is dropped, padded or counted twice. The driver holds the selected rows and one
prediction per row; the model and the scoring run on the workers (one GPU each when
``dist.use_gpu``). Ray is joined or started as for training (``dist.ray_address``, 127.0.0.1).
"""

from __future__ import annotations

import json

from ckf_dist.data.shards import read_split
from ckf_dist.eval.loop import eval_rows, record_and_score
from ckf_dist.run import Run


class _BatchScorer:
    """A Ray Data actor: the run's trained model, loaded once, scoring whole evaluator batches."""

    def __init__(self, run_dir: str, device: str):
        from ckf_dist.eval.serve import load_trained

        self.evaluator = load_trained(Run.open(run_dir), device)

    def __call__(self, batch: dict) -> dict:
        preds = [json.dumps(self.evaluator.predict(task, json.loads(rows)))
                 for task, rows in zip(batch["task"], batch["rows"])]
        return {"task": list(batch["task"]), "start": list(batch["start"]), "preds": preds}


def evaluate_run_distributed(run: Run, split: str, workers: int) -> dict:
    """Metrics of `split` scored on `workers` Ray actors; equal to :func:`ckf_dist.eval.serve.evaluate_run`."""
    import ray
    import ray.data

    from ckf_dist.train.launch import init_ray

    cfg = run.cfg
    samples = [s for s in read_split(run.shards_dir, split) if s["task"] in cfg.tasks]
    rows = eval_rows(samples, cfg)
    bs = cfg.eval.batch_size
    items = [{"task": task, "start": j, "rows": json.dumps(chunk[j : j + bs])}
             for task, chunk in rows.items() for j in range(0, len(chunk), bs)]
    if not items:
        return record_and_score(rows, {t: [] for t in rows}, cfg.eval.ks, run.predictions_file(split))
    started = init_ray(cfg)
    try:
        use_gpu = cfg.dist.use_gpu
        out = (ray.data.from_items(items, override_num_blocks=len(items))
               .map_batches(_BatchScorer, batch_size=1, concurrency=min(workers, len(items)),
                            fn_constructor_kwargs={"run_dir": str(run.dir.resolve()), "device": "cuda" if use_gpu else "cpu"},
                            num_cpus=cfg.dist.cpus_per_worker, num_gpus=1 if use_gpu else 0)
               .take_all())
    finally:
        if started:
            ray.shutdown()
    parts: dict[str, dict[int, list]] = {t: {} for t in rows}
    for r in out:
        parts[r["task"]][int(r["start"])] = json.loads(r["preds"])
    preds = {t: [p for start in sorted(parts[t]) for p in parts[t][start]] for t in rows}
    for t, chunk in rows.items():  # every row scored exactly once
        if len(preds[t]) != len(chunk):
            raise RuntimeError(f"{t}: {len(preds[t])} predictions for {len(chunk)} rows")
    return record_and_score(rows, preds, cfg.eval.ks, run.predictions_file(split))
