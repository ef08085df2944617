"""How much ctr signal a run's prompts carry, and how far above its CF backbone a model reading
them could go: logistic regressions on a run's ctr rows.

    python benchmarks/ctr_headroom.py RUN_DIR [--train-rows 30000]

Features of a ctr row (all in its prompt or CF vectors): the log-odds of the item's smoothed
training positive rate (the popularity baseline's score), the log-odds of the share of liked
items in the row's history (smoothed towards the global rate), the history length, and the CF
backbone's score (`cf.model`'s table, users without a trained row folded in: the CF baseline's
own ctr score). Two regressions, each scored on every test ctr row:

- prompt statistics: the first three features, fitted on the first `--train-rows` training rows;
- CF + prompt statistics: all four, fitted on the valid rows (a training row's CF score is
  in-sample: the vectors were fit on that very rating), against the CF score alone on the same
  test rows. Their difference is the headroom a model that reads the same prompt and CF vectors
  has above its CF backbone without learning anything beyond these statistics.

With MF tables (biases and vectors), MF's score b + b_u + b_i + p_u . q_i is split into its parts,
the user bias b_u (how generous the user is), the item bias b_i (how liked the item is), their sum
("biases") and the interaction p_u . q_i (this user's taste for this item), and each part's AUC on
the test rows is printed: a model reading the soft tokens gets each bias from one coordinate of one
token (the user's or the item's) and the interaction only by multiplying the two tokens. The same
AUCs on the training rows show how far in-sample a training row's CF vectors are (the leak that
``cf.cross_fit`` removes).

When the run has scored its valid and test rows (`predictions_valid.jsonl`, written by `ckf eval
--run RUN_DIR --split valid`, and `predictions.jsonl`), the same stacking with the run's own ctr
score (its log-odds) on the rows both files share: the model alone, the model + the CF score, and
all five features. What the model + CF regression adds to the CF score alone is what the model
knows that its CF backbone does not. With MF tables and the test predictions alone, the rank
correlation (Spearman) of the model's score with MF's score and with each part: which of them the
model reproduces.

Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ckf_dist.cf.baselines import CFBaseline, Popularity
from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.cf.tables import CFTables
from ckf_dist.data.samples import history_ratings
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


def mf_parts(tables: CFTables, samples: list[dict]) -> dict[str, np.ndarray]:
    """MF's ctr score of each row split into its parts: "user bias" b_u, "item bias" b_i and
    "interaction" p_u . q_i (the score is the global bias plus their sum), users without a trained
    row folded in exactly as the CF baseline scores them."""
    items = np.asarray([s["items"][0] for s in samples], dtype=np.int64)
    vec, user_bias = tables.fold_in([s["user"] for s in samples], [s["history"] for s in samples],
                                    history_ratings(samples))
    return {"user bias": user_bias, "item bias": tables.item_bias[items].astype(np.float64),
            "interaction": (vec * tables.item_emb[items]).sum(-1)}


def _fit_auc(x_fit: np.ndarray, y_fit: list, x_test: np.ndarray, y_test: list) -> float:
    model = LogisticRegression(max_iter=1000).fit(x_fit, y_fit)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--train-rows", type=int, default=30000)
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    cfg = run.cfg
    sd = SplitData.load(run.split_dir)
    pop = Popularity(sd)
    label_of = {(u, i): p for u, i, p in zip(sd.inter["u"], sd.inter["i"], sd.inter["pos"])}
    prior = float(sd.part("train")["pos"].mean())
    rows = {split: [s for s in read_split(run.shards_dir, split) if s["task"] == "ctr"] for split in ("train", "valid", "test")}
    rows["train"] = rows["train"][: args.train_rows]
    labels = {split: [s["label"] for s in r] for split, r in rows.items()}
    x = {split: features(r, pop, label_of, prior) for split, r in rows.items()}
    auc = _fit_auc(x["train"], labels["train"], x["test"], labels["test"])
    print(f"ctr AUC of item rate + history liked share + history length (logistic regression): {auc:.4f} "
          f"on {len(rows['test'])} test rows")

    cf = CFBaseline(cfg.cf.model, load_cf_tables(run.cf_table(cfg.cf.model)))
    cf_score = {split: np.asarray(cf.predict("ctr", rows[split]))[:, None] for split in ("valid", "test")}
    cf_auc = float(roc_auc_score(labels["test"], cf_score["test"][:, 0]))
    stacked = _fit_auc(np.hstack([x["valid"], cf_score["valid"]]), labels["valid"],
                       np.hstack([x["test"], cf_score["test"]]), labels["test"])
    print(f"ctr AUC of {cf.name} alone: {cf_auc:.4f}; {cf.name} + the three statistics (logistic regression fitted on "
          f"{len(rows['valid'])} valid rows): {stacked:.4f} (headroom {stacked - cf_auc:+.4f})")
    parts = None
    if cf.tables.item_bias is not None and not cf.tables.sequential:
        parts = mf_parts(cf.tables, rows["test"])
        parts = {"biases": parts["user bias"] + parts["item bias"], **parts}
        print(f"ctr AUC of {cf.name}'s parts alone: " + ", ".join(
            f"{name} {roc_auc_score(labels['test'], v):.4f}" for name, v in parts.items()))
        train_parts = mf_parts(cf.tables, rows["train"])
        print(f"in-sample, on the first {len(rows['train'])} training ctr rows (the ratings {cf.name} was fit on): "
              f"{cf.name} {roc_auc_score(labels['train'], cf.predict('ctr', rows['train'])):.4f}, " + ", ".join(
                  f"{name} {roc_auc_score(labels['train'], v):.4f}" for name, v in train_parts.items()))
    if parts is not None and run.predictions_file("test").is_file():
        _correlate_with_parts(run, rows["test"], cf_score["test"][:, 0], parts, cf.name)
    if run.predictions_file("valid").is_file() and run.predictions_file("test").is_file():
        _stack_with_model(run, rows, x, cf_score, labels, cf.name)


def _model_log_odds(path) -> dict[str, float]:
    with open(path) as f:
        recs = [json.loads(line) for line in f]
    p = {r["key"]: float(np.clip(r["prediction"], 1e-6, 1 - 1e-6)) for r in recs if r["task"] == "ctr"}
    return {k: float(np.log(v / (1 - v))) for k, v in p.items()}


def _correlate_with_parts(run: Run, test_rows: list[dict], cf_score: np.ndarray, parts: dict[str, np.ndarray],
                          cf_name: str) -> None:
    """Rank correlation of the run's test ctr score with MF's score and with each of its parts."""
    model = _model_log_odds(run.predictions_file("test"))
    keep = [k for k, s in enumerate(test_rows) if s["key"] in model]
    own = np.asarray([model[test_rows[k]["key"]] for k in keep])
    print(f"on the {len(keep)} test rows the run scored, Spearman correlation of its ctr score with {cf_name}'s score "
          f"{spearmanr(own, cf_score[keep])[0]:.3f}, with its " + ", ".join(
              f"{name} {spearmanr(own, v[keep])[0]:.3f}" for name, v in parts.items()))


def _stack_with_model(run: Run, rows: dict, x: dict, cf_score: dict, labels: dict, cf_name: str) -> None:
    """The run's own ctr score stacked with the CF score and the statistics, on the rows it scored."""
    cols = {}
    for split, path in (("valid", run.predictions_file("valid")), ("test", run.predictions_file("test"))):
        model = _model_log_odds(path)
        keep = [k for k, s in enumerate(rows[split]) if s["key"] in model]
        own = np.asarray([model[rows[split][k]["key"]] for k in keep])[:, None]
        cols[split] = (np.hstack([x[split][keep], cf_score[split][keep], own]), [labels[split][k] for k in keep])
    (xv, yv), (xt, yt) = cols["valid"], cols["test"]
    alone, cf_alone = float(roc_auc_score(yt, xt[:, 4])), float(roc_auc_score(yt, xt[:, 3]))
    with_cf = _fit_auc(xv[:, 3:], yv, xt[:, 3:], yt)
    everything = _fit_auc(xv, yv, xt, yt)
    print(f"on the {len(yt)} test rows the run scored ({len(yv)} valid rows to fit): the run's model {alone:.4f}, "
          f"{cf_name} {cf_alone:.4f}; model + {cf_name} {with_cf:.4f} ({with_cf - cf_alone:+.4f} over {cf_name}); "
          f"model + {cf_name} + the three statistics {everything:.4f}")


if __name__ == "__main__":
    main()
