"""The loaders on the real shared data sets: counts match the published statistics."""

import pandas as pd
import pytest

from ckf_dist.config import Config
from ckf_dist.data import movielens
from ckf_dist.data.loaders import load_dataset
from ckf_dist.data.samples import build_samples, check_sample
from ckf_dist.data.splits import split_dataset
from ckf_dist.tasks import available_tasks


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    cfg = Config()
    cfg.data.format, cfg.data.path = "movielens-100k", str(ml100k_dir)
    return cfg, load_dataset(cfg.data, seed=0)


@pytest.fixture(scope="module")
def amazon(amazon_mi_file):
    cfg = Config()
    cfg.data.format, cfg.data.path = "amazon-json", str(amazon_mi_file)
    return cfg, load_dataset(cfg.data, seed=0)


def test_ml100k_stats(ml100k):
    _, d = ml100k
    inter = d.interactions
    assert (len(inter), inter["user"].nunique(), inter["item"].nunique()) == (100_000, 943, 1_682)
    assert d.has_rating and not d.has_label and not d.has_text
    assert inter["label"].isna().all() and set(inter["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(d.items) == 1_682 and (d.items["title"].str.len() > 0).all()
    title = dict(zip(d.items["item"], d.items["title"]))
    assert title["1"] == "Toy Story (1995)"
    assert d.users is not None and len(d.users) == 943
    assert d.skipped == {}


def test_ml100k_fast_path_matches_line_reader(ml100k, monkeypatch):
    cfg, fast = ml100k
    monkeypatch.setattr(movielens, "_fast_ratings", lambda *a: None)
    slow = load_dataset(cfg.data, seed=0)
    pd.testing.assert_frame_equal(fast.interactions, slow.interactions)


def test_ml100k_split_and_tasks(ml100k):
    cfg, d = ml100k
    sd = split_dataset(d, cfg.data, seed=0)
    assert sd.part("test").groupby("u").size().eq(1).all() and len(sd.part("test")) == 943
    assert len(sd.part("valid")) == 943
    assert available_tasks(sd) == ["ctr", "topk", "rating"]


def test_amazon_mi_stats(amazon):
    _, d = amazon
    inter = d.interactions
    assert (len(inter), inter["user"].nunique(), inter["item"].nunique()) == (10_261, 1_429, 900)
    assert d.has_rating and d.has_text
    assert (inter["summary"].str.len() > 0).all()
    assert (d.items["title"] == "").all()  # no metadata: pseudo-titles come at split time


def test_amazon_mi_all_tasks_and_pseudo_titles(amazon):
    cfg, d = amazon
    sd = split_dataset(d, cfg.data, seed=0)
    assert available_tasks(sd) == ["ctr", "topk", "rating", "review_rating", "explanation"]
    assert len(set(sd.item_titles)) == sd.num_items
    for title, raw in zip(sd.item_titles, sd.item_ids):
        assert title and raw.lower() not in title.lower() and not any(c.isdigit() for c in title)
    cfg.data.samples_per_user = 1
    cfg.tasks = ["explanation", "topk"]
    samples = build_samples(sd, cfg)
    assert len([s for s in samples["test"] if s["task"] == "explanation"]) == 1_429
    for s in samples["test"][:200]:
        check_sample(s, cfg.model.placeholder_token)
