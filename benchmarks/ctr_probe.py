"""Where along a trained run's path MF's two biases survive: linear probes on its test ctr rows.

    python benchmarks/ctr_probe.py RUN_DIR [--folds 5]

Why: MF's ctr ranking on Amazon MI is the sum of the user's and the item's bias (see
`ctr_headroom.py`), and a run that reads one of them only cannot reach MF. Each bias is one
coordinate of one CF vector; this says where the other is lost. For every test ctr row it takes
the user's and the item's soft token (the mapping's output, what is spliced into the prompt), the
LLM's last hidden state at the answer position, and the run's ctr log-odds, and fits a ridge
regression from each onto MF's user bias b_u and item bias b_i (users without a trained row folded
in, as the CF baseline scores them). It prints the cross-validated R² of each probe: a bias that
the token carries (high R² from the token) but the answer position does not has not been read by
the LLM's attention; one that the token already lacks was dropped by the mapping.

It also prints, per decoder layer, the attention weight the answer position gives the user's token
and the item's token (mean over heads and rows): whether the LLM looks at a token at all, beside
what it takes from it.

Needs scikit-learn (the dev extra) and a run trained with MF tables (`cf.model=mf`, `model.cf_biases`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_score

from ckf_dist.cf.tables import load_cf_tables
from ckf_dist.data.shards import read_split
from ckf_dist.eval.serve import load_trained
from ckf_dist.run import Run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctr_headroom import mf_parts  # noqa: E402  (a sibling script: MF's score split into its parts)


@torch.no_grad()
def probe_pass(ev, samples: list[dict], batch_size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One pass of the LLM over the rows' prompts, read two ways.

    Returns the representations per row (user token [D], item token [D], answer-position hidden
    state [D], ctr log-odds [1]) and the attention shares [layers, 2]: the mean attention weight
    (over heads and rows) from the answer position to the user's token and the item's token. The
    weights are read by forward hooks, so the pass runs with eager attention; the model's attention
    implementation is restored afterwards."""
    model = ev.model
    before = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    layers = model.llm.get_decoder().layers
    weights: list = []
    hooks = [layer.self_attn.register_forward_hook(lambda mod, args, out: weights.append(out[1])) for layer in layers]
    reps: dict[str, list] = {"user token": [], "item token": [], "answer hidden state": [], "ctr log-odds": []}
    total, rows_seen = np.zeros((len(layers), 2)), 0
    try:
        for start in range(0, len(samples), batch_size):
            batch = ev._batch(samples[start:start + batch_size])
            weights.clear()
            users, items = model.cf_vectors(batch)
            last = model.answer_hidden(batch)
            logits = model._lm_logits(last)  # log-odds of P(Yes) / (P(Yes) + P(No)), as the evaluator scores
            reps["user token"].append(users.float())
            reps["item token"].append(items.float())
            reps["answer hidden state"].append(last.float())
            reps["ctr log-odds"].append((logits[:, ev.yes_id] - logits[:, ev.no_id]).unsqueeze(-1))
            rows = torch.arange(batch["input_ids"].shape[0])
            answer = batch["prompt_lengths"] - 1
            cols = batch["cf_cols"].view(len(rows), -1)  # per row: the user's placeholder, then the item's
            for k, w in enumerate(weights):  # w [B, H, L, L]
                at = w.float().mean(1)[rows, answer]  # [B, L]: the answer position's attention
                total[k] += [float(at[rows, cols[:, 0]].sum()), float(at[rows, cols[:, 1]].sum())]
            rows_seen += len(rows)
    finally:
        for h in hooks:
            h.remove()
        model.llm.set_attn_implementation(before)
    arrays = {name: torch.cat(parts).numpy().astype(np.float64) for name, parts in reps.items()}
    return arrays, total / max(rows_seen, 1)


def probe_r2(x: np.ndarray, y: np.ndarray, folds: int) -> float:
    """Cross-validated R² of a ridge regression x -> y (its penalty chosen inside each fold)."""
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13))
    return float(np.mean(cross_val_score(ridge, x, y, cv=KFold(folds, shuffle=True, random_state=0), scoring="r2")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    run = Run.open(args.run_dir)
    tables = load_cf_tables(run.cf_table(run.cfg.cf.model))
    if tables.item_bias is None or tables.sequential:
        raise SystemExit(f"{run.cf_table(run.cfg.cf.model)}: no MF biases to probe for (cf.model=mf, model.cf_biases=true)")
    ev = load_trained(run)
    ev.model.eval()
    rows = [s for s in read_split(run.shards_dir, "test") if s["task"] == "ctr"]
    parts = mf_parts(tables, rows)
    reps, shares = probe_pass(ev, rows)
    print(f"{run.dir}: {len(rows)} test ctr rows; cross-validated R² ({args.folds} folds) of a ridge probe onto MF's biases")
    print(f"  {'representation':<22} {'b_u':>7} {'b_i':>7}")
    for name, x in reps.items():
        print(f"  {name:<22} " + " ".join(f"{probe_r2(x, parts[b], args.folds):7.3f}" for b in ("user bias", "item bias")))
    print("attention from the answer position (mean over heads and rows)")
    print(f"  {'layer':<8} {'user token':>11} {'item token':>11}")
    for k, (user, item) in enumerate(shares):
        print(f"  {k:<8} {user:11.3f} {item:11.3f}")


if __name__ == "__main__":
    main()
