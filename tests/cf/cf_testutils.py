"""Test helpers for tests/cf: a small SplitData with planted low-rank structure, built by hand.

Users and items have hidden factors; a user picks items with probability rising with their
affinity (so *which* items are interacted with is learnable: BPR), and rates them by affinity
plus noise (so ratings are learnable: MSE). Each user's interactions are time-ordered; the last
`held_out` go to test, the `held_out` before them to valid. (A module with a unique name, not
conftest, so tests can import it whatever other conftest modules are loaded.)
"""

import numpy as np
import pandas as pd

from ckf_dist.data.table import SplitData


def planted_split(num_users=150, num_items=100, per_user=30, held_out=3, k=4, seed=0, cold_users=0) -> SplitData:
    """`cold_users` users (the first ones) get 3 training interactions instead of `per_user`."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(num_users, k))
    q = rng.normal(size=(num_items, k))
    aff = p @ q.T / np.sqrt(k)  # [U, I], about unit variance
    rows = []
    for u in range(num_users):
        n = 2 * held_out + (3 if u < cold_users else per_user)
        w = np.exp(1.5 * aff[u])
        items = rng.choice(num_items, size=n, replace=False, p=w / w.sum())
        r = np.clip(np.rint(3.0 + 1.2 * aff[u, items] + rng.normal(scale=0.5, size=n)), 1, 5)
        split = ["train"] * (n - 2 * held_out) + ["valid"] * held_out + ["test"] * held_out
        for t, (i, rating, s) in enumerate(zip(items, r, split)):
            rows.append((u, int(i), 1000 * u + t, float(rating), s))
    inter = pd.DataFrame(rows, columns=["u", "i", "timestamp", "rating", "split"])
    inter["label"] = np.nan
    inter["pos"] = (inter["rating"] >= 4).astype(float)
    inter["review"] = ""
    inter["summary"] = ""
    inter = inter[["u", "i", "timestamp", "rating", "label", "review", "summary", "split", "pos"]]
    return SplitData(
        name="planted",
        inter=inter,
        user_ids=[f"user{u}" for u in range(num_users)],
        item_ids=[f"item{i}" for i in range(num_items)],
        item_titles=[f"Item {i}" for i in range(num_items)],
        item_text=[""] * num_items,
        cold_threshold=5,
    )
