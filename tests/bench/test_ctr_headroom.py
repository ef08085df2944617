"""benchmarks/ctr_headroom.py: MF's ctr score split into its bias and interaction parts."""

import numpy as np

from ckf_dist.cf.baselines import CFBaseline
from ckf_dist.cf.tables import CFTables


def _row(user, item, history, ratings):
    return {"task": "ctr", "split": "test", "user": user, "items": [item], "history": history,
            "history_ratings": ratings, "candidates": [], "label": 1.0}


def test_mf_parts_by_hand_and_they_sum_to_the_cf_baseline_score(benchmark_script):
    rng = np.random.default_rng(0)
    users = rng.normal(size=(2, 3)).astype(np.float32)
    users[1] = 0.0  # no training row: folded in from its history
    items = rng.normal(size=(4, 3)).astype(np.float32)
    t = CFTables(users, items, ["a", "b"], list("wxyz"), user_bias=np.array([0.5, 0.0], np.float32),
                 item_bias=np.array([0.1, -0.3, 0.2, 0.0], np.float32), global_bias=3.5)
    rows = [_row(0, 2, [1], [4.0]), _row(1, 3, [0, 2], [5.0, 2.0])]
    parts = benchmark_script("ctr_headroom").mf_parts(t, rows)
    assert list(parts) == ["user bias", "item bias", "interaction"]
    # the trained user: its own bias and row, whatever its history
    np.testing.assert_allclose(parts["user bias"][0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(parts["item bias"], [0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(parts["interaction"][0], float(users[0] @ items[2]), rtol=1e-5)
    # the folded-in user: the global bias plus the parts is the score the CF baseline gives the row
    np.testing.assert_allclose(3.5 + sum(parts.values()), CFBaseline("mf", t).predict("ctr", rows), rtol=1e-5)
    assert abs(parts["interaction"][1]) > 1e-6 and abs(parts["user bias"][1]) > 1e-6  # a fold-in: a vector and a bias
