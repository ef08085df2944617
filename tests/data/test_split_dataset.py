"""split_dataset: chronological per-user split, source splits, seeded ids, pos, pseudo-titles."""

import numpy as np
import pandas as pd
import pytest

from ckf_dist.config import DataConfig, SyntheticConfig
from ckf_dist.data.generic_csv import load_csv
from ckf_dist.data.splits import FALLBACK_TITLE, pseudo_titles, split_dataset
from ckf_dist.data.synthetic import generate_synthetic
from ckf_dist.data.table import RecData, SplitData, interactions_frame, items_frame


@pytest.fixture(scope="module")
def shuffled_synthetic():
    """Synthetic data with its rows shuffled: the split must follow time, not file order."""
    d = generate_synthetic(SyntheticConfig(num_users=50, num_items=40), 2)
    d.interactions = d.interactions.sample(frac=1.0, random_state=0).reset_index(drop=True)
    return d


def raw_rows(sd: SplitData) -> pd.DataFrame:
    return sd.inter.assign(user=[sd.user_ids[u] for u in sd.inter["u"]], item=[sd.item_ids[i] for i in sd.inter["i"]])


def test_chronological_per_user(shuffled_synthetic):
    cfg = DataConfig(valid_per_user=2, test_per_user=1)
    sd = split_dataset(shuffled_synthetic, cfg, seed=0)
    for _, g in sd.inter.groupby("u"):
        counts = g["split"].value_counts()
        assert (counts["test"], counts["valid"]) == (1, 2)
        ts = {s: g.loc[g["split"] == s, "timestamp"] for s in ("train", "valid", "test")}
        assert ts["train"].max() <= ts["valid"].min() and ts["valid"].max() <= ts["test"].min()
    # sorted by (u, timestamp)
    key = sd.inter["u"].to_numpy() * 10**10 + sd.inter["timestamp"].to_numpy()
    assert (np.diff(key) >= 0).all()


def test_ties_keep_file_order_and_short_users_keep_train():
    inter = interactions_frame(["a"] * 3 + ["b"] * 2 + ["c"], ["x", "y", "z", "x", "y", "x"], [5, 5, 5, 1, 2, 9],
                               rating=[4.0] * 6)
    sd = split_dataset(RecData("t", inter, items_frame(["x", "y", "z"], ["X", "Y", "Z"])), DataConfig(), 0)
    rows = raw_rows(sd)
    a = rows[rows["user"] == "a"]
    assert a["item"].tolist() == ["x", "y", "z"] and a["split"].tolist() == ["train", "valid", "test"]
    assert rows[rows["user"] == "b"]["split"].tolist() == ["train", "test"]  # valid gives way first
    assert rows[rows["user"] == "c"]["split"].tolist() == ["train"]


def write_csv(folder, rows, header="user_id,item_id,timestamp,rating,label,review,summary,split", items=None):
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text(items or "item_id,title,description\n" + "".join(
        f"i{k},,\n" for k in range(1, 10)))
    return folder


def test_source_split_honoured_exactly(tmp_path):
    rows = ["u1,i1,50,5,,good,,test", "u1,i2,10,4,,nice,,train", "u1,i3,99,2,,meh,,train",
            "u2,i1,1,3,,ok,,train", "u2,i2,2,4,,fine,,valid", "u2,i3,3,5,,wow,,train"]
    d = load_csv(write_csv(tmp_path / "c", rows))
    sd = split_dataset(d, DataConfig(valid_per_user=0, test_per_user=1), 0)
    got = {(r.user, r.item): r.split for r in raw_rows(sd).itertuples()}
    assert got == {("u1", "i1"): "test", ("u1", "i2"): "train", ("u1", "i3"): "train",
                   ("u2", "i1"): "train", ("u2", "i2"): "valid", ("u2", "i3"): "train"}


def test_ids_are_a_seeded_permutation_not_file_order(shuffled_synthetic):
    cfg = DataConfig()
    a, b, c = (split_dataset(shuffled_synthetic, cfg, s) for s in (0, 0, 1))
    users = shuffled_synthetic.interactions["user"]
    items = shuffled_synthetic.interactions["item"]
    assert sorted(a.user_ids) == sorted(users.unique()) and sorted(a.item_ids) == sorted(items.unique())
    assert a.user_ids != list(users.unique()) and a.user_ids != sorted(users.unique())
    assert a.item_ids != list(items.unique()) and a.item_ids != sorted(items.unique())
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert a.user_ids != c.user_ids and a.item_ids != c.item_ids
    assert set(a.inter["u"]) == set(range(a.num_users)) and set(a.inter["i"]) == set(range(a.num_items))
    # the mapping is consistent: raw ids of each row survive the remap
    rows = raw_rows(a).sort_values(["user", "timestamp"])
    src = shuffled_synthetic.interactions.sort_values(["user", "timestamp"])
    assert rows["item"].tolist() == src["item"].tolist()


def test_pos_from_label_else_rating(tmp_path):
    rows = ["u1,i1,1,5,0,,,", "u1,i2,2,2,1,,,", "u1,i3,3,4,,,,", "u1,i4,4,3.5,,,,"]
    sd = split_dataset(load_csv(write_csv(tmp_path / "c", rows)), DataConfig(like_threshold=4.0), 0)
    got = dict(zip(raw_rows(sd)["item"], sd.inter["pos"]))
    assert got == {"i1": 0.0, "i2": 1.0, "i3": 1.0, "i4": 0.0}


def test_pseudo_titles_use_training_reviews_only(tmp_path):
    rows = []
    for u in range(1, 5):
        rows += [f"u{u},i1,{10 * u + 1},5,,lovely warm mellow tone,tone,train",
                 f"u{u},i2,{10 * u + 2},4,,bright crisp snappy attack,bright,train",
                 f"u{u},i3,{10 * u + 3},3,,sturdy stand holds steady,stand,train"]
        # other users review i1 in test (one (user, item) pair each); u5's review has a word found nowhere else
        text = "zanzibarish tone tone tone,zanzibarish" if u == 1 else "warm tone,tone"
        rows += [f"u{u + 4},i2,{10 * u + 4},4,,bright crisp snappy attack,bright,train",
                 f"u{u + 4},i1,{10 * u + 5},5,,{text},test"]
    cfg = DataConfig(title_words=3, valid_per_user=0, test_per_user=1)
    sd = split_dataset(load_csv(write_csv(tmp_path / "c", rows)), cfg, 0)
    assert raw_rows(sd).query("item == 'i1' and split == 'test'")["review"].str.contains("zanzibarish").any()
    titles = dict(zip(sd.item_ids, sd.item_titles))
    assert all("zanzibarish" not in t.lower() for t in titles.values())
    assert all(len(t.split()) == 3 for t in titles.values()) and len(set(titles.values())) == 3
    assert "Tone" in titles["i1"].split() and "Bright" in titles["i2"].split()
    for item, t in titles.items():
        assert item not in t.lower() and not any(ch.isdigit() for ch in t)


def test_pseudo_titles_dedupe_and_fallback():
    docs = [["red guitar strap"], ["red guitar strap leather"], ["red guitar strap"], []]
    titles = pseudo_titles(docs, n_words=2, banned={"strap"}, taken={"Drum Kit"})
    assert len(set(titles)) == 4 and all("Strap" not in t for t in titles)
    assert "Leather" in titles[1]
    assert titles[3] == FALLBACK_TITLE
    assert pseudo_titles([["drum kit"]], 2, taken={"Drum Kit"}) == ["Drum Kit II"]


def test_cold_items_get_ids_and_titles(tmp_path):
    rows = ["u1,i1,1,5,,warm tone amp,,train", "u1,i2,2,4,,crisp pick,,train", "u1,i5,3,5,,secret word,,test",
            "u2,i1,1,4,,warm amp,,train", "u2,i6,5,2,,hidden thing,,valid"]
    items = "item_id,title,description\ni1,,\ni2,Named Pick,\ni5,,\ni6,,bass practice amplifier\n"
    sd = split_dataset(load_csv(write_csv(tmp_path / "c", rows, items=items)), DataConfig(), 0)
    titles = dict(zip(sd.item_ids, sd.item_titles))
    assert set(titles) == {"i1", "i2", "i5", "i6"}
    assert titles["i2"] == "Named Pick"  # source titles are kept
    assert titles["i5"] == FALLBACK_TITLE  # test-only, no description: no test words leak
    assert "secret" not in titles["i5"].lower()
    assert set(titles["i6"].lower().split()) <= {"bass", "practice", "amplifier"}  # from its description
    text = dict(zip(sd.item_ids, sd.item_text))
    assert text["i6"] == "bass practice amplifier"
    # data.title_description: the description follows the title; items without one keep the title
    named = split_dataset(load_csv(write_csv(tmp_path / "c", rows, items=items)), DataConfig(title_description=True), 0)
    names = dict(zip(named.item_ids, named.item_titles))
    assert names["i6"] == titles["i6"] + ", bass practice amplifier"
    assert names["i2"] == "Named Pick" and names["i5"] == FALLBACK_TITLE


def test_split_data_round_trip(tmp_path, shuffled_synthetic):
    sd = split_dataset(shuffled_synthetic, DataConfig(), 0)
    sd.save(tmp_path / "sd")
    back = SplitData.load(tmp_path / "sd")
    pd.testing.assert_frame_equal(back.inter, sd.inter)
    assert back.item_titles == sd.item_titles and back.user_ids == sd.user_ids
