"""Every kept checkpoint of a finished run, scored on all of its valid and test rows.

    python benchmarks/checkpoint_curve.py RUN_DIR [--tasks ctr rating]

Why: whether choosing the checkpoint by a validation metric (early stopping, as CoLLM's runner
does with valid AUC) would change the test result, and how the test metric moves with the steps.
During training the validation draws `eval.valid_max_samples_per_task` rows; here every valid and
test row of the tasks given is scored (rating tasks: RMSE of the expected digit; ctr: AUC).
Keep every checkpoint when training (`dist.keep_checkpoints=0`, `train.save_every=N`); only
checkpoints that hold the trainable weights in one file (the local launcher's) can be read.
Prints one line per checkpoint and which step the best validation score picks.
"""

from __future__ import annotations

import argparse

from ckf_dist.data.shards import read_split
from ckf_dist.eval.serve import load_trained
from ckf_dist.run import Run
from ckf_dist.sweep.report import LOWER_IS_BETTER

HEADLINE = {"ctr": "auc", "rating": "rmse", "review_rating": "rmse"}
"""The metric each task is judged by here."""


def headline(task: str, metrics: dict) -> float:
    return metrics[HEADLINE[task]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--tasks", nargs="+", default=["ctr"], choices=sorted(HEADLINE))
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    ev = load_trained(run)  # the final weights verified; each checkpoint's replace them below
    rows = {split: [s for s in read_split(run.shards_dir, split) if s["task"] in args.tasks] for split in ("valid", "test")}
    readable = [c for c in run.checkpoints() if (c / "trainable.safetensors").is_file()]
    if not readable:
        raise SystemExit(f"{run.checkpoints_dir}: no checkpoint with trainable.safetensors (local launcher, dist.keep_checkpoints=0)")
    print(f"{run.dir}: {len(readable)} checkpoints; rows: "
          + ", ".join(f"{split} {len(r)}" for split, r in rows.items()))
    curve = []
    for ckpt in readable:
        ev.model.load_trainable(ckpt / "trainable.safetensors")
        ev.model.eval()
        scores = {split: ev.evaluate(r, progress=False) for split, r in rows.items()}
        step = int(ckpt.name.split("-")[1])
        curve.append((step, scores))
        print(f"  step {step:>7}  " + "  ".join(
            f"{t} valid {headline(t, scores['valid'][t]):.4f} test {headline(t, scores['test'][t]):.4f}" for t in args.tasks),
            flush=True)
    for t in args.tasks:
        sign = -1.0 if HEADLINE[t] in LOWER_IS_BETTER else 1.0
        step, scores = max(curve, key=lambda c: sign * headline(t, c[1]["valid"][t]))
        last_step, last = curve[-1]
        print(f"  {t}: best valid at step {step} (test {headline(t, scores['test'][t]):.4f}); "
              f"last checkpoint, step {last_step}: test {headline(t, last['test'][t]):.4f}")


if __name__ == "__main__":
    main()
