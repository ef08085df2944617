"""Each evaluation protocol pinned on a tiny hand-made dataset: expected rows, labels, histories, groups."""

import numpy as np
import pytest

from ckf_dist.cf.baselines import run_baselines
from ckf_dist.cf.fit import train_cf
from ckf_dist.config import Config, ConfigError, load_config
from ckf_dist.data.generic_csv import load_csv
from ckf_dist.data.samples import build_samples, protocol_of
from ckf_dist.data.splits import global_time_split, split_dataset
from ckf_dist.data.table import RecData, interactions_frame, items_frame


def handmade() -> RecData:
    """Three users over time 1..10. u3 appears only at t=9 and 10 (after the cut), item z only at 10."""
    rows = [  # user, item, time, rating
        ("u1", "a", 1, 5), ("u1", "b", 2, 2), ("u2", "a", 3, 4), ("u1", "c", 4, 5), ("u2", "c", 5, 1),
        ("u2", "d", 6, 5), ("u1", "d", 7, 3), ("u2", "b", 8, 4), ("u3", "a", 9, 5), ("u3", "z", 10, 4),
    ]
    u, i, t, r = zip(*rows)
    items = ["a", "b", "c", "d", "z"] + [f"n{k}" for k in range(30)]  # unseen items for negatives
    inter = interactions_frame(list(u), list(i), list(t), rating=[float(x) for x in r])
    return RecData("handmade", inter, items_frame(items, [f"Title {x}" for x in items]))


def config(**data) -> Config:
    cfg = Config(tasks=["ctr", "topk", "rating"])
    cfg.data.topk_candidates = 3
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg.validate()


def test_global_time_split_cuts_once_in_time():
    assert list(global_time_split(np.array([5, 1, 3, 2, 4, 6, 7, 8, 9, 10]), [0.6, 0.2, 0.2])) == \
        ["train", "train", "train", "train", "train", "train", "valid", "valid", "test", "test"]
    # rows tied with the cut go to the later split: no held-out row is older than a training row
    assert list(global_time_split(np.array([1, 2, 2, 2, 3]), [0.4, 0.4, 0.2])) == ["train"] + ["valid"] * 3 + ["test"]


def test_global_time_protocol_rows_labels_histories_groups():
    cfg = config(split="global_time", split_fractions=[0.6, 0.2, 0.2])
    sd = split_dataset(handmade(), cfg.data, 0)
    raw = lambda s: (sd.user_ids[s["user"]], sd.item_ids[s["items"][0]])
    assert sd.protocol == "global_time"
    assert {x: g for x, g in zip(sd.user_ids, sd.user_groups())} == {"u1": "cold", "u2": "cold", "u3": "new"}
    samples = build_samples(sd, cfg)
    ctr = {split: sorted((raw(s), s["label"], [sd.item_ids[h] for h in s["history"]], s["group"])
                         for s in samples[split] if s["task"] == "ctr") for split in ("valid", "test")}
    assert ctr["valid"] == [(("u1", "d"), 0.0, ["a", "b", "c"], "cold"), (("u2", "b"), 1.0, ["a", "c", "d"], "cold")]
    # the test row of new user u3 at t=10 sees its t=9 test row; no synthetic negative anywhere
    assert ctr["test"] == [(("u3", "a"), 1.0, [], "new"), (("u3", "z"), 1.0, ["a"], "new")]
    # each history item comes with the rating given to it (the rating-aware fold-in's input)
    ratings = {raw(s): s["history_ratings"] for s in samples["valid"] + samples["test"] if s["task"] == "ctr"}
    assert ratings == {("u1", "d"): [5.0, 2.0, 5.0], ("u2", "b"): [4.0, 1.0, 5.0], ("u3", "a"): [], ("u3", "z"): [5.0]}
    assert sum(s["task"] == "ctr" for s in samples["train"]) == 6
    rating = [s for s in samples["test"] if s["task"] == "rating" and raw(s) == ("u3", "z")][0]
    assert rating["label"] == 4.0 and '"Title a", rating: 5' in rating["prompt"]
    topk = [s for s in samples["test"] if s["task"] == "topk"]
    assert sorted(raw({**s, "items": [s["candidates"][s["answer"]]]}) for s in topk) == [("u3", "a"), ("u3", "z")]
    p = protocol_of(cfg, sd)
    assert (p["split"], p["ctr_negatives"], p["split_fractions"]) == ("global_time", "explicit", [0.6, 0.2, 0.2])


def test_leave_last_is_per_user():
    cfg = config(split="leave_last", valid_per_user=1, test_per_user=1)
    sd = split_dataset(handmade(), cfg.data, 0)
    last = sd.inter.groupby("u").tail(1)
    assert set(last["split"]) == {"test"}
    assert (sd.user_groups() != "new").all()


def test_sampled_ctr_pairs_each_row_with_an_unseen_negative():
    cfg = config(split="global_time", split_fractions=[0.6, 0.2, 0.2], ctr_negatives="sampled")
    sd = split_dataset(handmade(), cfg.data, 0)
    test = [s for s in build_samples(sd, cfg)["test"] if s["task"] == "ctr"]
    assert len(test) == 4 and sum(s["label"] == 0.0 for s in test) == 2
    seen = set(sd.inter.loc[sd.inter["u"] == test[0]["user"], "i"])
    assert all(s["items"][0] not in seen for s in test if s["label"] == 0.0)


def test_bad_split_fractions_are_one_line_errors():
    with pytest.raises(ConfigError, match="data.split_fractions"):
        load_config(None, ["data.split_fractions=[0.5,0.1,0.1]"])
    with pytest.raises(ConfigError, match="eval.task_caps.bogus"):
        load_config(None, ["eval.task_caps={bogus: 3}"])


def test_csv_split_column_with_new_users_and_items_reports_the_new_group(tmp_path):
    """Valid/test hold users and items absent from train: they are kept, CF folds users in from their
    history, and every table reports the `new` group."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        for t, i in enumerate(rng.choice(40, size=8, replace=False)):
            rows.append(f"u{u},i{i},{100 * u + t},{int(rng.integers(1, 6))},train")
    for u in range(30, 36):  # new users, with a new item among their rows
        for t, i in enumerate(list(rng.choice(40, size=5, replace=False)) + [40 + u]):
            rows.append(f"u{u},i{i},{5000 + 10 * u + t},{int(rng.integers(1, 6))},{'valid' if u < 33 else 'test'}")
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating,split\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(80)))
    cfg = config()  # the defaults: data.split=auto picks the column
    cfg.data.topk_candidates = 5
    sd = split_dataset(load_csv(folder), cfg.data, 0)
    assert sd.protocol == "column"
    samples = build_samples(sd, cfg)
    test = [s for s in samples["test"] if s["task"] == "ctr"]
    assert len(test) == 18 and {s["group"] for s in test} == {"new"}
    cfg.cf.weight_decays, cfg.cf.baselines = [1e-4], ["mf"]
    tables, _ = train_cf(sd, cfg.cf, 0, "mf", progress=False)
    res = run_baselines(sd, samples, cfg, 0, split="test", tables={"mf": tables})
    assert res["mf"]["ctr"]["new"]["n"] == 18 and res["mf"]["ctr"]["warm"]["n"] == 0
    # new users are scored from their folded-in history, not as one constant
    mf_scores = {round(float(tables.score_with_history([s["user"]], [s["history"]], np.array([s["items"][0]]))[0]), 6)
                 for s in test}
    assert len(mf_scores) > 6
    # with the ratings of their histories, new users who rated their history higher score higher
    folded = tables.score_with_history([s["user"] for s in test], [s["history"] for s in test],
                                       np.array([s["items"][0] for s in test]), [s["history_ratings"] for s in test])
    _, bias = tables.fold_in([s["user"] for s in test], [s["history"] for s in test], [s["history_ratings"] for s in test])
    rated = [k for k, s in enumerate(test) if s["history_ratings"]]
    assert len(rated) >= 12
    assert np.corrcoef([np.mean(test[k]["history_ratings"]) for k in rated], bias[rated])[0, 1] > 0.8 and not np.allclose(folded, [
        tables.score_with_history([s["user"]], [s["history"]], np.array([s["items"][0]]))[0] for s in test])


def test_item_rating_stats_leave_the_rows_own_rating_out():
    """data.item_rating_stats: a held-out row reads its item's training ratings; a training row the
    same numbers less its own rating; an item without training ratings says so."""
    cfg = config(split="global_time", split_fractions=[0.6, 0.2, 0.2], item_rating_stats=True)
    sd = split_dataset(handmade(), cfg.data, 0)
    samples = build_samples(sd, cfg)
    raw = lambda s: (s["split"], sd.user_ids[s["user"]], sd.item_ids[s["items"][0]])
    # training rows t1..t6: a rated 5 (u1) and 4 (u2); b 2; c 5 and 1; d 5
    expected = {
        ("train", "u1", "a"): "average rating 4.0 from 1 rating", ("train", "u2", "a"): "average rating 5.0 from 1 rating",
        ("train", "u1", "b"): "no ratings yet", ("train", "u1", "c"): "average rating 1.0 from 1 rating",
        ("train", "u2", "c"): "average rating 5.0 from 1 rating", ("train", "u2", "d"): "no ratings yet",
        ("valid", "u1", "d"): "average rating 5.0 from 1 rating", ("valid", "u2", "b"): "average rating 2.0 from 1 rating",
        ("test", "u3", "a"): "average rating 4.5 from 2 ratings", ("test", "u3", "z"): "no ratings yet",
    }
    for task in ("ctr", "rating"):
        rows = [s for split in ("train", "valid", "test") for s in samples[split] if s["task"] == task]
        assert len(rows) == len(expected)
        for s in rows:
            title = sd.item_titles[s["items"][0]]
            for prompt in (s["prompt"], s["prompt_text"]):
                assert f'the item titled "{title}" ({expected[raw(s)]})' in prompt, (task, raw(s), prompt)
    # other tasks, and the option off, keep their prompts
    assert not any("average rating" in s["prompt"] for s in samples["test"] if s["task"] == "topk")
    plain = build_samples(sd, config(split="global_time", split_fractions=[0.6, 0.2, 0.2]))
    assert not any("average rating" in s["prompt"] or "no ratings yet" in s["prompt"] for s in plain["test"])


def test_item_rating_stats_on_sampled_negatives_too():
    """With sampled ctr a negative's prompt carries its item's training numbers as well (none left
    out: the user never rated it), so the clause cannot tell a sampled negative from a positive."""
    cfg = config(split="global_time", split_fractions=[0.6, 0.2, 0.2], ctr_negatives="sampled", item_rating_stats=True)
    sd = split_dataset(handmade(), cfg.data, 0)
    full = {"a": "average rating 4.5 from 2 ratings", "b": "average rating 2.0 from 1 rating",
            "c": "average rating 3.0 from 2 ratings", "d": "average rating 5.0 from 1 rating"}
    negatives = 0
    for split in ("train", "test"):
        for s in build_samples(sd, cfg)[split]:
            item = sd.item_ids[s["items"][0]]
            seen = set(sd.inter.loc[sd.inter["u"] == s["user"], "i"])
            if s["task"] == "ctr" and s["items"][0] not in seen:
                negatives += 1
                assert f'"{sd.item_titles[s["items"][0]]}" ({full.get(item, "no ratings yet")})' in s["prompt"]
    assert negatives == 8


def test_features_first_moves_the_item_feature_beside_the_users():
    """data.features_first: the one-item prompts open with the user's and the target item's soft
    tokens (placeholder order unchanged: user first, then the item); the item's title no longer
    carries it; topk and every text-only twin are unchanged."""
    cfg = Config(tasks=["ctr", "topk", "rating"])
    cfg.data.topk_candidates = 3
    cfg.data.split, cfg.data.split_fractions, cfg.data.features_first = "global_time", [0.6, 0.2, 0.2], True
    cfg.validate()
    sd = split_dataset(handmade(), cfg.data, 0)
    moved = build_samples(sd, cfg)
    plain = build_samples(sd, config(split="global_time", split_fractions=[0.6, 0.2, 0.2]))
    ph = cfg.model.placeholder_token
    opening = f"The user's preferences are encoded in {ph}. The item's feature is encoded in {ph}. "
    for split in ("train", "test"):
        assert [s["key"] for s in moved[split]] == [s["key"] for s in plain[split]]
        for s, p in zip(moved[split], plain[split]):
            assert s["prompt_text"] == p["prompt_text"] and s["items"] == p["items"]
            assert s["prompt"].count(ph) == p["prompt"].count(ph) == 1 + len(s["items"])
            if s["task"] == "topk":
                assert s["prompt"] == p["prompt"]
                continue
            title = f'the item titled "{sd.item_titles[s["items"][0]]}"'
            assert s["prompt"].startswith(opening) and f"{title}?" in s["prompt"], s["prompt"]
            assert p["prompt"].startswith(f"The user's preferences are encoded in {ph}. The user ")
            assert f"{title} with encoded feature {ph}?" in p["prompt"]
