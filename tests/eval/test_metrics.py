"""Metric functions against hand-computed values; the arithmetic is written next to each."""

import math

import numpy as np
import pytest

from ckf_dist.eval.metrics import (
    auc,
    bleu4,
    grouped,
    hit_rate_at_k,
    mae,
    metric_names,
    ndcg_at_k,
    rmse,
    rouge_l,
    rouge_n,
    sample_groups,
    task_metrics,
    tokenize,
    uauc,
)

L2_3 = math.log2(3)


# -- AUC / UAUC ------------------------------------------------------------------------------


def test_auc_pairs():
    # positives 0.9, 0.4; negatives 0.1, 0.6 -> pairs (0.9>0.1) (0.9>0.6) (0.4>0.1) (0.4<0.6) = 3/4
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6]) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # positives 0.5, 0.8; negatives 0.5, 0.2 -> (0.5=0.5: 1/2) (0.5>0.2) (0.8>0.5) (0.8>0.2) = 3.5/4
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]) == pytest.approx(0.875)
    # a constant scorer is exactly chance
    assert auc([1, 0, 0, 1, 0], [3.0] * 5) == pytest.approx(0.5)
    # ties inside one class do not matter: positives 0.7, 0.7 over negative 0.1 -> 1
    assert auc([1, 1, 0], [0.7, 0.7, 0.1]) == pytest.approx(1.0)


def test_auc_undefined():
    assert auc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert auc([0, 0], [0.1, 0.2]) is None
    assert auc([], []) is None
    with pytest.raises(ValueError):
        auc([1, 0], [0.5, float("nan")])


def test_uauc_skips_single_label_users():
    users = [1, 1, 1, 2, 2, 3, 3]
    labels = [1, 0, 0, 1, 0, 0, 0]
    scores = [0.3, 0.5, 0.1, 0.9, 0.2, 0.4, 0.8]
    # user 1: positive 0.3 vs negatives 0.5 (lose), 0.1 (win) -> 1/2
    # user 2: 0.9 > 0.2 -> 1;  user 3: negatives only -> skipped
    value, n_users = uauc(users, labels, scores)
    assert value == pytest.approx((0.5 + 1.0) / 2)
    assert n_users == 2
    # interleaved user order gives the same answer
    order = [6, 0, 3, 1, 5, 4, 2]
    value2, _ = uauc([users[j] for j in order], [labels[j] for j in order], [scores[j] for j in order])
    assert value2 == pytest.approx(value)
    assert uauc([1, 2], [1, 0], [0.3, 0.2]) == (None, 0)
    assert uauc([], [], []) == (None, 0)


# -- HR@k / NDCG@k -----------------------------------------------------------------------------

# s1: answer scored highest -> rank 1
# s2: one candidate (0.8) above the answer (0.6) -> rank 2
# s3: one above (0.9), two tied with the answer (0.4) -> rank uniform on {2, 3, 4}
SCORES = [[0.1, 0.9, 0.5], [0.8, 0.3, 0.6, 0.2], [0.4, 0.4, 0.4, 0.9]]
ANSWERS = [1, 2, 0]


def test_hit_rate_expected_over_ties():
    assert hit_rate_at_k(SCORES, ANSWERS, 1) == pytest.approx((1 + 0 + 0) / 3)
    assert hit_rate_at_k(SCORES, ANSWERS, 2) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert hit_rate_at_k(SCORES, ANSWERS, 3) == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert hit_rate_at_k(SCORES, ANSWERS, 4) == pytest.approx(1.0)
    # a constant scorer over 5 candidates: HR@2 = 2/5, not 1
    assert hit_rate_at_k([[1.0] * 5], [3], 2) == pytest.approx(0.4)
    assert hit_rate_at_k([], [], 5) is None


def test_ndcg_expected_over_ties():
    # @2: s1 -> 1; s2 -> 1/log2(3); s3 -> rank 2 with prob 1/3 -> (1/3)(1/log2 3)
    assert ndcg_at_k(SCORES, ANSWERS, 2) == pytest.approx((1 + 1 / L2_3 + 1 / (3 * L2_3)) / 3)
    # @3: s3 -> (1/3)(1/log2 3 + 1/log2 4)
    assert ndcg_at_k(SCORES, ANSWERS, 3) == pytest.approx((1 + 1 / L2_3 + (1 / L2_3 + 0.5) / 3) / 3)
    # @1 equals HR@1
    assert ndcg_at_k(SCORES, ANSWERS, 1) == pytest.approx(hit_rate_at_k(SCORES, ANSWERS, 1))
    with pytest.raises(ValueError):
        ndcg_at_k([[0.1, 0.2]], [2], 1)


# -- regression --------------------------------------------------------------------------------


def test_mae_rmse():
    # errors 1, 0, 2 -> MAE 3/3 = 1, RMSE sqrt(5/3)
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3))
    assert mae([], []) is None and rmse([], []) is None


# -- text ----------------------------------------------------------------------------------------

REF = "The cat sat on the mat."
HYP = "the cat sat on a MAT"


def test_tokenize():
    assert tokenize("Don't STOP, believing!") == ["don", "t", "stop", "believing"]
    assert tokenize("  ") == []


def test_bleu4_single_pair():
    # unigrams: the cat sat on [a] mat -> 5/6
    # bigrams: the-cat cat-sat sat-on match, on-a a-mat do not: 3 of 5 -> smoothed (3+1)/(5+1)
    # trigrams: the-cat-sat cat-sat-on match: 2 of 4 -> (2+1)/(4+1)
    # 4-grams: the-cat-sat-on: 1 of 3 -> (1+1)/(3+1);  c = r = 6 -> BP = 1
    expected = (5 / 6 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert bleu4([REF], [HYP]) == pytest.approx(expected)
    assert bleu4([REF], [REF]) == pytest.approx(1.0)


def test_bleu4_brevity_penalty_and_corpus():
    # "the cat" vs a 6-token reference: p1 = 2/2, p2 = (1+1)/(1+1); no trigram or 4-gram in the
    # hypothesis, but (as in NLTK) it still counts 1 in those denominators: p3 = p4 = (0+1)/(1+1);
    # c = 2 < r = 6 -> BP = exp(1 - 6/2)
    assert bleu4([REF], ["the cat"]) == pytest.approx(math.exp(-2) * 0.5 ** 0.5)
    # corpus: counts are summed before dividing: p1 = (5+2)/(6+2), p2 = (3+1+1)/(5+1+1),
    # p3 = (2+0+1)/(4+1+1), p4 = (1+0+1)/(3+1+1); c = 8, r = 12 -> BP = exp(1 - 12/8)
    expected = math.exp(-0.5) * (7 / 8 * 5 / 7 * 3 / 6 * 2 / 5) ** 0.25
    assert bleu4([REF, REF], [HYP, "the cat"]) == pytest.approx(expected)
    # an empty hypothesis adds 1 to every denominator and 0 to c: "the cat" / "" vs "the cat" /
    # "a dog": p1 = 2/(2+1), p2 = (1+1)/(1+1+1), p3 = p4 = (0+1)/(1+1+1); c = 2, r = 4
    expected = math.exp(1 - 4 / 2) * (2 / 3 * 2 / 3 * 1 / 3 * 1 / 3) ** 0.25
    assert bleu4(["the cat", "a dog"], ["the cat", ""]) == pytest.approx(expected)


def test_bleu4_degenerate():
    assert bleu4(["the cat"], ["dog"]) == 0.0
    assert bleu4(["the cat"], [""]) == 0.0
    assert bleu4([], []) is None


def test_rouge():
    refs = [REF, "a b c d"]
    hyps = [HYP, "d c b a"]
    # sample 1: unigram overlap 5 of 6 each side -> F1 5/6; bigram overlap 3 of 5 -> 3/5;
    #           LCS "the cat sat on mat" = 5 -> 5/6
    # sample 2: unigrams 4/4 -> 1; no bigram in common -> 0; LCS = 1 -> P = R = 1/4 -> 1/4
    assert rouge_n(refs, hyps, 1) == pytest.approx((5 / 6 + 1.0) / 2)
    assert rouge_n(refs, hyps, 2) == pytest.approx((3 / 5 + 0.0) / 2)
    assert rouge_l(refs, hyps) == pytest.approx((5 / 6 + 1 / 4) / 2)
    # P != R: hyp "the cat" vs REF: P = 2/2, R = 2/6 -> F1 = 2 * 1 * (1/3) / (4/3) = 1/2
    assert rouge_n([REF], ["the cat"], 1) == pytest.approx(0.5)
    # no bigram on one side -> 0
    assert rouge_n(["cat"], ["cat"], 2) == 0.0
    assert rouge_l([], []) is None


# -- breakdown and task entry point ------------------------------------------------------------


def test_grouped_writes_empty_group_as_null():
    out = grouped(lambda y, s: {"auc": auc(y, s)}, [True, True, True], np.array([1, 0, 1]), np.array([0.9, 0.2, 0.1]))
    # all: positives 0.9, 0.1 vs negative 0.2 -> 1/2; bool flags: True = warm, False = cold, no new
    assert out == {
        "auc": pytest.approx(0.5), "n": 3, "warm": {"auc": pytest.approx(0.5), "n": 3},
        "cold": {"auc": None, "n": 0}, "new": {"auc": None, "n": 0},
    }
    # a non-empty group whose metric is undefined keeps its n
    out = grouped(lambda y, s: {"auc": auc(y, s)}, [True, False, False], np.array([1, 0, 1]), [0.9, 0.2, 0.1])
    assert out["warm"] == {"auc": None, "n": 1}
    assert out["cold"] == {"auc": pytest.approx(0.0), "n": 2}  # 0.1 < 0.2
    assert out["new"] == {"auc": None, "n": 0}


def test_grouped_by_group_names():
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.2, 0.1, 0.3, 0.8, 0.7])
    out = grouped(lambda y, s: {"auc": auc(y, s)}, ["warm", "warm", "cold", "cold", "new", "new"], y, s)
    assert list(out) == ["auc", "n", "warm", "cold", "new"]
    assert out["warm"] == {"auc": pytest.approx(1.0), "n": 2}  # 0.9 > 0.2
    assert out["cold"] == {"auc": pytest.approx(0.0), "n": 2}  # 0.1 < 0.3
    assert out["new"] == {"auc": pytest.approx(1.0), "n": 2}   # 0.8 > 0.7
    # all: positives 0.9, 0.1, 0.8 vs negatives 0.2, 0.3, 0.7: wins 3 + 0 + 3 = 6 of 9
    assert out["auc"] == pytest.approx(6 / 9) and out["n"] == 6
    with pytest.raises(ValueError, match="unknown user group"):
        grouped(lambda y, s: {"auc": auc(y, s)}, ["warm", "hot"], y[:2], s[:2])
    with pytest.raises(ValueError):
        grouped(lambda y, s: {"auc": auc(y, s)}, ["warm"], y, s)


def _s(task, user, warm, **kw):
    base = {"task": task, "user": user, "warm": warm, "label": None, "target": "", "answer": -1, "candidates": []}
    return {**base, **kw}


def test_task_metrics_ctr_shape_and_values():
    samples = [
        _s("ctr", 1, True, label=1.0), _s("ctr", 1, True, label=0.0),   # user 1: 0.8 > 0.3 -> 1
        _s("ctr", 2, True, label=1.0), _s("ctr", 2, True, label=0.0),   # user 2: 0.2 < 0.6 -> 0
        _s("ctr", 3, False, label=1.0), _s("ctr", 3, False, label=1.0),  # user 3 (cold): positives only
    ]
    preds = [0.8, 0.3, 0.2, 0.6, 0.9, 0.1]
    out = task_metrics("ctr", samples, preds)
    # all: positives 0.8, 0.2, 0.9, 0.1 vs negatives 0.3, 0.6: wins 0.8 (2), 0.2 (0), 0.9 (2), 0.1 (0) -> 4/8
    assert out["auc"] == pytest.approx(0.5)
    assert out["uauc"] == pytest.approx(0.5) and out["uauc_users"] == 2
    assert out["n"] == 6
    # warm: positives 0.8, 0.2 vs negatives 0.3, 0.6 -> 2/4
    assert out["warm"] == {"auc": pytest.approx(0.5), "uauc": pytest.approx(0.5), "uauc_users": 2, "n": 4}
    assert out["cold"] == {"auc": None, "uauc": None, "uauc_users": 0, "n": 2}
    # no sample has "group": new is empty, written like any empty group (every metric null)
    assert out["new"] == {"auc": None, "uauc": None, "uauc_users": None, "n": 0}
    assert set(out) == set(metric_names("ctr")) | {"n", "warm", "cold", "new"}


def test_task_metrics_topk_scores_and_greedy_choice():
    samples = [_s("topk", u, u != 2, answer=a, candidates=list(range(len(sc)))) for u, (sc, a) in enumerate(zip(SCORES, ANSWERS))]
    out = task_metrics("topk", samples, SCORES, ks=[2, 3])
    assert list(k for k in out if k not in ("n", "warm", "cold", "new")) == ["hr@1", "hr@2", "ndcg@2", "hr@3", "ndcg@3"]
    assert out["hr@2"] == pytest.approx(hit_rate_at_k(SCORES, ANSWERS, 2))
    assert out["ndcg@3"] == pytest.approx(ndcg_at_k(SCORES, ANSWERS, 3))
    assert out["cold"]["n"] == 1 and out["cold"]["hr@1"] == pytest.approx(0.0)  # s3: rank >= 2
    # greedy choices override hr@1 (exact match): choices 1 (right), 0 (wrong), -1 (no match) -> 1/3
    preds = [{"scores": sc, "choice": c} for sc, c in zip(SCORES, [1, 0, -1])]
    out = task_metrics("topk", samples, preds, ks=[1, 2])
    assert out["hr@1"] == pytest.approx(1 / 3)
    assert out["ndcg@2"] == pytest.approx(ndcg_at_k(SCORES, ANSWERS, 2))


def test_task_metrics_rating_and_explanation():
    samples = [_s("rating", 0, True, label=1.0), _s("rating", 1, True, label=2.0), _s("rating", 2, False, label=None, target="3")]
    out = task_metrics("rating", samples, [2.0, 2.0, 5.0])  # errors 1, 0, 2 (label None -> the target digit)
    assert out["mae"] == pytest.approx(1.0) and out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["cold"] == {"mae": pytest.approx(2.0), "rmse": pytest.approx(2.0), "n": 1}
    samples = [_s("explanation", 0, True, target=REF), _s("explanation", 1, True, target="a b c d")]
    out = task_metrics("explanation", samples, [HYP, "d c b a"])
    assert out["rouge2"] == pytest.approx(0.3)
    assert out["bleu4"] == pytest.approx(bleu4([REF, "a b c d"], [HYP, "d c b a"]))
    assert out["cold"] == {"bleu4": None, "rouge1": None, "rouge2": None, "rougeL": None, "n": 0}


def test_task_metrics_group_key_wins_over_warm_flag():
    # "group" decides when present; a sample without it falls back to its warm flag
    samples = [
        _s("rating", 0, True, label=1.0, group="warm"),   # error 1
        _s("rating", 1, False, label=2.0, group="cold"),  # error 0
        _s("rating", 2, False, label=3.0, group="new"),   # error 2
        _s("rating", 3, False, label=4.0, group="new"),   # error 1
        _s("rating", 4, True, label=5.0),                 # no group, warm -> warm; error 3
        _s("rating", 5, False, label=1.0, group=None),    # group None, cold -> cold; error 4
    ]
    out = task_metrics("rating", samples, [2.0, 2.0, 5.0, 3.0, 2.0, 5.0])
    assert out["n"] == 6 and out["mae"] == pytest.approx((1 + 0 + 2 + 1 + 3 + 4) / 6)
    assert out["warm"] == {"mae": pytest.approx(2.0), "rmse": pytest.approx(math.sqrt(5)), "n": 2}
    assert out["cold"] == {"mae": pytest.approx(2.0), "rmse": pytest.approx(math.sqrt(8)), "n": 2}
    assert out["new"] == {"mae": pytest.approx(1.5), "rmse": pytest.approx(math.sqrt(2.5)), "n": 2}
    assert sample_groups(samples) == ["warm", "cold", "new", "new", "warm", "cold"]
    # groups of every task: the n add up
    for task, preds in (("ctr", [0.1] * 6), ("explanation", ["a"] * 6)):
        ss = [{**s, "task": task, "label": float(j % 2), "target": "a b"} for j, s in enumerate(samples)]
        out = task_metrics(task, ss, preds)
        assert [out[g]["n"] for g in ("warm", "cold", "new")] == [2, 2, 2]
    with pytest.raises(ValueError, match="unknown user group"):
        task_metrics("rating", [_s("rating", 0, True, label=1.0, group="tepid")], [1.0])


def test_task_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        task_metrics("ctr", [_s("ctr", 0, True, label=1.0)], [])
    with pytest.raises(ValueError):
        task_metrics("nope", [], [])
    with pytest.raises(ValueError):
        task_metrics("rating", [_s("rating", 0, True, label=1.0)], [float("nan")])
