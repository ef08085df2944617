"""Popularity and CF baselines, scored through task_metrics on sample dicts."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from cf_testutils import planted_split
from ckf_dist.cf.baselines import Popularity, baseline_table_markdown, run_baselines
from ckf_dist.config import Config
from ckf_dist.data.samples import build_samples
from ckf_dist.data.table import SplitData


def _tiny() -> SplitData:
    # train: item 0 rated 5, 4, 2 (pos 1, 1, 0); item 1 rated 1 (pos 0); item 2 only held out
    rows = [
        (0, 0, 1, 5.0, "train"), (0, 1, 2, 1.0, "train"), (0, 2, 3, 4.0, "test"),
        (1, 0, 1, 4.0, "train"), (1, 0, 3, 2.0, "test"),
        (2, 0, 1, 2.0, "train"),
    ]
    inter = pd.DataFrame(rows, columns=["u", "i", "timestamp", "rating", "split"])
    inter = inter.assign(label=np.nan, review="", summary="", pos=(inter["rating"] >= 4).astype(float))
    return SplitData("tiny", inter, ["a", "b", "c"], ["x", "y", "z"], ["X", "Y", "Z"], ["", "", ""])


def _sample(task, user, items, **kw):
    return {"task": task, "split": "test", "user": user, "items": items, "warm": False, "label": None,
            "target": "", "candidates": [], "answer": -1, **kw}


def test_popularity_statistics_by_hand():
    pop = Popularity(_tiny())
    # global positive rate g = 2/4, global mean mu = (5+1+4+2)/4 = 3, prior a = 5
    # item 0: (2 + 5 * 0.5) / (3 + 5);  item 1: (0 + 2.5) / (1 + 5);  item 2 unseen: g
    np.testing.assert_allclose(pop.pos_rate, [4.5 / 8, 2.5 / 6, 0.5])
    # item 0: (11 + 5 * 3) / 8;  item 1: (1 + 15) / 6;  item 2: mu
    np.testing.assert_allclose(pop.mean_rating, [26 / 8, 16 / 6, 3.0])
    np.testing.assert_array_equal(pop.count, [3, 1, 0])


def test_run_baselines_popularity_by_hand():
    cfg = Config()
    cfg.cf.baselines = []
    cfg.eval.ks = [1, 5]
    samples = [
        _sample("ctr", 0, [0], label=1.0), _sample("ctr", 0, [2], label=0.0),
        _sample("ctr", 1, [1], label=1.0), _sample("ctr", 1, [0], label=0.0),
        _sample("topk", 0, [0, 1, 2], candidates=[0, 1, 2], answer=1),
        _sample("rating", 0, [2], label=4.0), _sample("rating", 1, [0], label=2.0),
    ]
    res = run_baselines(_tiny(), {"test": samples}, cfg, seed=0)
    assert list(res) == ["popularity"] and list(res["popularity"]) == ["ctr", "topk", "rating"]
    ctr, topk, rating = (res["popularity"][t] for t in ("ctr", "topk", "rating"))
    # positives 0.5625, 0.4167 vs negatives 0.5, 0.5625: 1 + 1/2 + 0 + 0 of 4 pairs
    assert ctr["auc"] == pytest.approx(0.375)
    assert ctr["uauc"] == pytest.approx((1.0 + 0.0) / 2)  # user 0 wins, user 1 loses
    # counts 3, 1, 0 -> the answer (item 1) ranks 2nd
    assert topk["hr@1"] == 0.0 and topk["hr@5"] == 1.0 and topk["ndcg@5"] == pytest.approx(1 / math.log2(3))
    # predictions mu = 3 for item 2 (true 4) and 3.25 for item 0 (true 2): errors 1, 1.25
    assert rating["mae"] == pytest.approx(1.125) and rating["rmse"] == pytest.approx(math.sqrt((1 + 1.5625) / 2))
    assert rating["warm"] == {"mae": None, "rmse": None, "n": 0}


def test_run_baselines_on_built_samples():
    sd = planted_split(cold_users=20, seed=1)
    cfg = Config(tasks=["ctr", "topk", "rating"])
    cfg.cf = dataclasses.replace(cfg.cf, dim=16, epochs=40, patience=3, lr=0.02, batch_size=256, weight_decays=[1e-4, 1e-3])
    samples = build_samples(sd, cfg)
    res = run_baselines(sd, samples, cfg, seed=0, split="test")
    assert {m: list(r) for m, r in res.items()} == {
        "popularity": ["ctr", "topk", "rating"],
        "mf": ["ctr", "topk", "rating"],
        "lightgcn": ["ctr", "topk"],  # BPR: no rating predictions
    }
    assert res["mf"]["rating"]["rmse"] < res["popularity"]["rating"]["rmse"]
    assert res["lightgcn"]["topk"]["ndcg@10"] > res["popularity"]["topk"]["ndcg@10"]
    for r in res.values():
        assert r["ctr"]["n"] == r["ctr"]["warm"]["n"] + r["ctr"]["cold"]["n"] and r["ctr"]["cold"]["n"] > 0
    table = baseline_table_markdown(res)
    lines = table.splitlines()
    assert lines[0].startswith("| model | ctr auc | ctr uauc | topk hr@1 |") and lines[0].endswith("rating mae | rating rmse |")
    assert [ln.split(" | ")[0] for ln in lines[2:5]] == ["| popularity", "| mf", "| lightgcn"]
    assert lines[4].endswith("| – | – |")  # lightgcn has no rating metrics
    assert "cold" not in table and baseline_table_markdown(res, "cold").count("|") == table.count("|")


def test_cf_baseline_topk_rows_of_any_candidate_count_score_as_alone():
    """CFBaseline scores topk rows in one call per candidate count; each row's scores equal its
    own score_with_history (fold-in from its history and ratings), in the rows' order."""
    from ckf_dist.cf.baselines import CFBaseline
    from ckf_dist.cf.tables import CFTables

    rng = np.random.default_rng(3)
    users = rng.normal(size=(3, 4)).astype(np.float32)
    users[2] = 0.0  # folds in
    t = CFTables(users, rng.normal(size=(8, 4)).astype(np.float32), list("abc"), list("01234567"),
                 user_bias=np.array([0.1, -0.2, 0.0], np.float32), item_bias=rng.normal(size=8).astype(np.float32),
                 global_bias=3.0)
    rows = [_sample("topk", 0, [1], candidates=[1, 2, 3], history=[4], history_ratings=[5.0]),
            _sample("topk", 2, [5], candidates=[5, 6], history=[1, 2], history_ratings=[1.0, 4.0]),
            _sample("topk", 2, [7], candidates=[7, 0, 3], history=[6], history_ratings=[2.0]),
            _sample("topk", 1, [0], candidates=[0, 4], history=[], history_ratings=[])]
    got = CFBaseline("mf", t).predict("topk", rows)
    assert [len(g) for g in got] == [3, 2, 3, 2]
    for g, s in zip(got, rows):
        alone = t.score_with_history([s["user"]], [s["history"]], np.asarray([s["candidates"]]), [s["history_ratings"]])[0]
        np.testing.assert_allclose(g, alone, rtol=1e-6)
    assert not np.allclose(got[1], t.score_with_history([0], [[1, 2]], np.asarray([[5, 6]]))[0])  # row 1 was folded in
