"""How far below its CF backbone a model reading a review_rating prompt could go: the review's words
against MF's predicted rating, on a run's rows.

    python benchmarks/rating_headroom.py RUN_DIR [--alpha 1.0]

The review_rating prompt holds the user's review of the item (``data.review_words`` words) besides
the CF tokens. Three predictors of the rating, each scored (RMSE, predictions clipped to the rating
range) on every test review_rating row:

- the CF backbone's predicted rating (MF; users without a trained row folded in): the baseline
  table's number;
- a ridge regression on the review's TF-IDF unigrams and bigrams (the text of the prompt from
  "review of" on, so the title and the review), fitted on the training rows: what the words alone carry;
- a least-squares stack of the two, fitted on the valid rows (a training row's MF prediction is
  in-sample: MF was fit on that very rating).

Beside them the run's own review_rating RMSE (``metrics.json``). Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, Ridge

from ckf_dist.cf.baselines import CFBaseline
from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.data.shards import read_split
from ckf_dist.run import Run

TASK = "review_rating"


def review_text(sample: dict) -> str:
    """The prompt's text from the item on: its title and the user's review (the twin has no placeholder)."""
    prompt = sample["prompt_text"]
    at = prompt.find("review of")
    return prompt[at:] if at >= 0 else prompt


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--alpha", type=float, default=1.0, help="ridge penalty of the text regression")
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    rows = {split: [s for s in read_split(run.shards_dir, split) if s["task"] == TASK] for split in ("train", "valid", "test")}
    if not rows["test"]:
        raise SystemExit(f"{args.run_dir}: no {TASK} rows (the data have no review text, or the task is not in 'tasks')")
    truth = {split: np.asarray([s["label"] for s in r], dtype=np.float64) for split, r in rows.items()}
    cf = CFBaseline(run.cfg.cf.model, load_cf_tables(run.cf_table(run.cfg.cf.model)))
    if TASK not in cf.tasks():
        raise SystemExit(f"{args.run_dir}: the CF backbone {cf.name} predicts no ratings (cf.loss=mse needed)")
    lo, hi = cf.tables.meta.get("rating_range", (1.0, 5.0))
    cf_pred = {split: np.asarray(cf.predict(TASK, rows[split])) for split in ("valid", "test")}
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit([review_text(s) for s in rows["train"]])
    words = Ridge(alpha=args.alpha).fit(vec.transform([review_text(s) for s in rows["train"]]), truth["train"])
    text_pred = {split: words.predict(vec.transform([review_text(s) for s in rows[split]])) for split in ("valid", "test")}
    stack = LinearRegression().fit(np.column_stack([cf_pred["valid"], text_pred["valid"]]), truth["valid"])
    both = stack.predict(np.column_stack([cf_pred["test"], text_pred["test"]]))
    clip = lambda p: np.clip(p, lo, hi)  # noqa: E731
    y = truth["test"]
    print(f"{TASK} RMSE on {len(y)} test rows: {cf.name} {rmse(clip(cf_pred['test']), y):.4f}; "
          f"the review's words (TF-IDF ridge, alpha {args.alpha:g}, {len(rows['train'])} training rows) "
          f"{rmse(clip(text_pred['test']), y):.4f}; {cf.name} + words (fitted on {len(truth['valid'])} valid rows) "
          f"{rmse(clip(both), y):.4f}; the training mean {rmse(np.full_like(y, truth['train'].mean()), y):.4f}")
    metrics = run.dir / "metrics.json"
    if metrics.is_file():
        own = json.loads(metrics.read_text()).get(TASK, {}).get("rmse")
        if own is not None:
            print(f"the run's own {TASK} RMSE: {own:.4f}")


if __name__ == "__main__":
    main()
