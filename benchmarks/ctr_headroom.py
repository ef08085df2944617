"""How much ctr signal a prompt carries: a 3-feature logistic regression on a run's ctr rows.

    python benchmarks/ctr_headroom.py RUN_DIR [--train-rows 30000]

Features of a ctr row (all in its prompt or CF vectors): the log-odds of the item's smoothed
training positive rate (the popularity baseline's score), the log-odds of the share of liked
items in the row's history (smoothed towards the global rate), and the history length. Fitted on
the first `--train-rows` training ctr rows, scored on every test ctr row: an AUC that a model
reading the same prompt can reach. Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ckf_dist.cf.baselines import Popularity
from ckf_dist.data.shards import read_split
from ckf_dist.data.table import SplitData
from ckf_dist.run import Run


def features(samples: list[dict], pop: Popularity, label_of: dict, prior: float) -> np.ndarray:
    rows = []
    for s in samples:
        labels = [label_of[(s["user"], h)] for h in s["history"]]
        liked = (sum(labels) + 2 * prior) / (len(labels) + 2)
        item = float(np.clip(pop.pos_rate[s["items"][0]], 1e-4, 1 - 1e-4))
        rows.append([np.log(item / (1 - item)), np.log(liked / (1 - liked)), len(labels)])
    return np.asarray(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--train-rows", type=int, default=30000)
    args = ap.parse_args()
    run = Run.at(args.run_dir)
    sd = SplitData.load(run.split_dir)
    pop = Popularity(sd)
    label_of = {(u, i): p for u, i, p in zip(sd.inter["u"], sd.inter["i"], sd.inter["pos"])}
    prior = float(sd.part("train")["pos"].mean())
    train = [s for s in read_split(run.shards_dir, "train") if s["task"] == "ctr"][: args.train_rows]
    test = [s for s in read_split(run.shards_dir, "test") if s["task"] == "ctr"]
    model = LogisticRegression().fit(features(train, pop, label_of, prior), [s["label"] for s in train])
    auc = roc_auc_score([s["label"] for s in test], model.predict_proba(features(test, pop, label_of, prior))[:, 1])
    print(f"ctr AUC of item rate + history liked share + history length (logistic regression): {auc:.4f} "
          f"on {len(test)} test rows")


if __name__ == "__main__":
    main()
