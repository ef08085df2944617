"""How the candidate score's length normalisation changes a trained run's topk ranking.

    python benchmarks/topk_scoring_probe.py RUN_DIR [--split valid|test] [--alphas 0 0.5 1]

Every candidate title is scored by its total log-probability as the answer (title tokens and
EOS) divided by n ** alpha, n its token count (`eval.candidate_length_power`): alpha 1 is the
mean per token, alpha 0 the sum (which favours short titles). Prints HR@1 / NDCG@10 of each alpha and
of the popularity baseline on the same rows (the evaluation's seeded draw of the split's topk
rows), so a normalisation is chosen on `valid`, never on `test`.
"""

from __future__ import annotations

import argparse

import numpy as np

from ckf_dist.cf.baselines import Popularity
from ckf_dist.data.shards import read_split
from ckf_dist.data.table import SplitData
from ckf_dist.eval.loop import eval_rows, length_normalised
from ckf_dist.eval.metrics import task_metrics
from ckf_dist.eval.serve import load_trained
from ckf_dist.run import Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--split", choices=["valid", "test"], default="valid")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    ev = load_trained(run)
    samples = [s for s in read_split(run.shards_dir, args.split) if s["task"] == "topk"]
    rows = eval_rows(samples, run.cfg)["topk"]
    raw = ev.candidate_logprobs(rows)
    pop = Popularity(SplitData.load(run.split_dir))
    print(f"{run.dir}, {args.split}: {len(rows)} topk rows")
    for a in args.alphas:
        preds = [{"scores": row, "choice": -1} for row in length_normalised(raw, a)]
        m = task_metrics("topk", rows, preds)
        print(f"  alpha {a:<5} hr@1(ranking) {m['ndcg@1']:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    m = task_metrics("topk", rows, [{"scores": list(p), "choice": -1} for p in pop.predict("topk", rows)])
    print(f"  popularity  hr@1 {m['ndcg@1']:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    lens = np.array([[n for _, n in r] for r in raw if r])
    print(f"  title tokens per candidate: mean {lens.mean():.1f}, min {lens.min()}, max {lens.max()}")


if __name__ == "__main__":
    main()
