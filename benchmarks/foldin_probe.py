"""How much a rating-aware fold-in would lift MF on users without a trained row (a probe).

    python benchmarks/foldin_probe.py RUN_DIR [--ridge 5] [--bias-ridge 1]

A user with no training interaction (the `new` group of a global time split) gets, in CF
scoring and in CKF's user token, the mean of its history items' MF vectors and no user bias
(ckf_dist.cf.tables): the ratings the user gave those items are not used. This probe scores every
test ctr row of RUN_DIR with the run's MF table twice: as the product does
(`CFTables.score_with_history`), and with the classic explicit-feedback fold-in, a ridge
regression of the history's rating residuals (rating - item bias - global mean) on
(1, item vector) that gives the user a bias and a vector (penalties --bias-ridge, --ridge). Trained users score the same both
ways. Prints ctr AUC overall and per user group. Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.data.shards import read_split
from ckf_dist.data.table import SplitData
from ckf_dist.run import Run


def ridge_fold_in(tables, history: list[int], ratings: np.ndarray, ridge: float, bias_ridge: float) -> np.ndarray:
    """(bias, vector) [d + 1] of a user from its rated history (penalties: bias_ridge, ridge)."""
    v = tables.item_emb[history].astype(np.float64)
    x = np.concatenate([np.ones((len(history), 1)), v], 1)
    y = ratings - tables.item_bias[history] - tables.global_bias
    a = x.T @ x + np.diag([bias_ridge, *([ridge] * v.shape[1])])
    return np.linalg.solve(a, x.T @ y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ridge", type=float, default=5.0, help="L2 penalty of the user vector")
    ap.add_argument("--bias-ridge", type=float, default=1.0, help="L2 penalty of the user bias")
    args = ap.parse_args()
    run = Run.at(args.run_dir)
    tables = load_cf_tables(run.cf_table("mf"))
    if tables.user_bias is None:
        raise SystemExit(f"{run.cf_table('mf')}: not an MF table with biases (cf.mf_loss=mse)")
    sd = SplitData.load(run.split_dir)
    rating_of = {(u, i): r for u, i, r in zip(sd.inter["u"], sd.inter["i"], sd.inter["rating"])}
    test = [s for s in read_split(run.shards_dir, "test") if s["task"] == "ctr"]
    labels = np.array([s["label"] for s in test])
    groups = np.array([s["group"] for s in test])
    users = [s["user"] for s in test]
    items = [s["items"][0] for s in test]
    product = tables.score_with_history(users, [s["history"] for s in test], items)
    refit = product.copy()
    for k, s in enumerate(test):
        if np.any(tables.user_emb[s["user"]] != 0) or not s["history"]:
            continue
        rated = np.array([rating_of[(s["user"], h)] for h in s["history"]])
        w = ridge_fold_in(tables, s["history"], rated, args.ridge, args.bias_ridge)
        refit[k] = w[0] + tables.item_emb[items[k]] @ w[1:] + tables.item_bias[items[k]] + tables.global_bias
    for name, score in (("mean of history vectors (the product)", product), ("rating-aware ridge fold-in", refit)):
        parts = [f"all {roc_auc_score(labels, score):.4f}"]
        for g in ("warm", "cold", "new"):
            m = groups == g
            if m.any() and 0 < labels[m].mean() < 1:
                parts.append(f"{g} {roc_auc_score(labels[m], score[m]):.4f} ({m.sum()} rows)")
        print(f"MF ctr AUC, {name}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
