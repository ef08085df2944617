"""What the rating-aware fold-in does for MF on users without a trained row, and which ridge to use.

    python benchmarks/foldin_probe.py RUN_DIR [--split valid] [--ridges 1 3 10 30]

A user with no training interaction (the `new` group of a global time split) is folded in from
the history of the row being predicted (ckf_dist.cf.foldin): with the ratings the user gave those
items, a ridge regression gives it a bias and a vector (`cf.fold_in_ridge`); without them, the
mean of its history items' vectors and no bias. This probe scores every ctr row of one split of
RUN_DIR with the run's MF table (`CFTables.score_with_history`) both ways, the rating-aware one
for each ridge given, and prints ctr AUC overall and per user group. Choose the ridge on the
valid split; the test split is for reporting. Trained users score the same either way. Needs
scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.data.samples import history_ratings
from ckf_dist.data.shards import read_split
from ckf_dist.data.table import SplitData
from ckf_dist.run import Run


def _ratings(run: Run, rows: list[dict]) -> list[list]:
    """Each row's history ratings: from the samples, or (shards written before they carried them)
    looked up in the split table."""
    if all("history_ratings" in s for s in rows):
        return history_ratings(rows)
    sd = SplitData.load(run.split_dir)
    rating_of = {(u, i): r for u, i, r in zip(sd.inter["u"], sd.inter["i"], sd.inter["rating"])}
    return [[rating_of.get((s["user"], h)) for h in s["history"]] for s in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="valid", choices=["valid", "test"])
    ap.add_argument("--ridges", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0])
    args = ap.parse_args()
    run = Run.at(args.run_dir)
    tables = load_cf_tables(run.cf_table("mf"))
    if tables.user_bias is None:
        raise SystemExit(f"{run.cf_table('mf')}: not an MF table with biases (cf.loss=mse)")
    rows = [s for s in read_split(run.shards_dir, args.split) if s["task"] == "ctr"]
    labels = np.array([s["label"] for s in rows])
    groups = np.array([s["group"] for s in rows])
    users, histories = [s["user"] for s in rows], [s["history"] for s in rows]
    items = np.array([s["items"][0] for s in rows])
    ratings = _ratings(run, rows)
    scored = [("mean of history vectors", tables.score_with_history(users, histories, items))]
    for ridge in args.ridges:
        tables.meta["fold_in_ridge"] = ridge
        scored.append((f"rating-aware, ridge {ridge:g}", tables.score_with_history(users, histories, items, ratings)))
    print(f"MF ctr AUC on the {len(rows)} {args.split} ctr rows of {args.run_dir}:")
    for name, score in scored:
        parts = [f"all {roc_auc_score(labels, score):.4f}"]
        for g in ("warm", "cold", "new"):
            m = groups == g
            if m.any() and 0 < labels[m].mean() < 1:
                parts.append(f"{g} {roc_auc_score(labels[m], score[m]):.4f} ({m.sum()} rows)")
        print(f"  {name}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
