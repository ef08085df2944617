"""The synthetic generator: deterministic, fast, readable titles, text tied to latent factors."""

import time

import numpy as np
import pandas as pd

from ckf_dist.config import SyntheticConfig
from ckf_dist.data.synthetic import build_world, generate_synthetic, topic


def test_same_seed_identical_different_seed_differs():
    cfg = SyntheticConfig(num_users=60, num_items=50)
    a, b, c = generate_synthetic(cfg, 3), generate_synthetic(cfg, 3), generate_synthetic(cfg, 4)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert not a.interactions.equals(c.interactions)
    assert a.items["title"].tolist() != c.items["title"].tolist()


def test_defaults_fast_and_well_formed():
    cfg = SyntheticConfig()
    t = time.perf_counter()
    d = generate_synthetic(cfg, 0)
    assert time.perf_counter() - t < 1.0
    inter = d.interactions
    assert inter["user"].nunique() == cfg.num_users
    sizes = inter.groupby("user").size()
    assert sizes.min() >= 4
    # a share of users is short-history (cold after the split), the rest have at least 8
    short = (sizes < 8).mean()
    assert 0.1 < short < 0.3 and (sizes[sizes >= 8] >= 8).all()
    assert not inter.duplicated(["user", "item"]).any()
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and inter["rating"].nunique() == 5
    assert d.items["title"].is_unique and (d.items["title"].str.split().str.len() >= 3).all()
    assert (inter["review"].str.len() > 0).all() and (inter["summary"].str.len() > 0).all()
    assert inter["label"].isna().all() and (inter["split"] == "").all()


def test_titles_and_reviews_follow_latent_factors():
    cfg = SyntheticConfig(num_users=80, num_items=60)
    world = build_world(cfg, 5)
    d = generate_synthetic(cfg, 5)
    title = dict(zip(d.items["item"], d.items["title"]))
    for item, t in title.items():
        d1 = int(world.item_topics[int(item[4:]), 0])
        assert t.split()[1] in topic(d1)[1], (t, d1)  # the noun names the dominant factor
    hits = 0
    for item, review in zip(d.interactions["item"], d.interactions["review"]):
        d1 = int(world.item_topics[int(item[4:]), 0])
        hits += any(w in review.split() for w in topic(d1)[3])
    assert hits == len(d.interactions)  # every review names a word of the item's dominant factor


def test_ratings_and_sentiment_follow_affinity():
    cfg = SyntheticConfig(num_users=150, num_items=80)
    world = build_world(cfg, 1)
    d = generate_synthetic(cfg, 1)
    u = d.interactions["user"].str[4:].astype(int).to_numpy()
    i = d.interactions["item"].str[4:].astype(int).to_numpy()
    aff = (world.user_factors[u] * world.item_factors[i]).sum(1)
    assert np.corrcoef(aff, d.interactions["rating"])[0, 1] > 0.5
    good = d.interactions[d.interactions["rating"] == 5]["summary"].str.split().str[0]
    bad = d.interactions[d.interactions["rating"] == 1]["summary"].str.split().str[0]
    assert set(good) & set(bad) == set()
