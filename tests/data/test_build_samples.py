"""build_samples: schema, negatives, history, placeholders, protocol per task, caps, seeds."""

import json
from collections import defaultdict

import numpy as np
import pytest

from ckf_dist.config import Config, SyntheticConfig
from ckf_dist.data.errors import DataError
from ckf_dist.data.generic_csv import load_csv
from ckf_dist.data.samples import SAMPLE_KEYS, build_samples, check_sample, count_placeholders
from ckf_dist.data.splits import split_dataset
from ckf_dist.data.synthetic import generate_synthetic
from ckf_dist.tasks import available_tasks


def make_cfg(**data) -> Config:
    cfg = Config()
    cfg.data.synthetic = SyntheticConfig(num_users=60, num_items=50, interactions_per_user=14)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


@pytest.fixture(scope="module")
def built():
    cfg = make_cfg(valid_per_user=2, history_len=5)
    sd = split_dataset(generate_synthetic(cfg.data.synthetic, 1), cfg.data, 1)
    counts: dict = {}
    return cfg, sd, build_samples(sd, cfg, counts), counts


def user_rows(sd):
    """u -> list of (i, split, timestamp, pos, rating) in time order."""
    rows = defaultdict(list)
    for r in sd.inter.itertuples():
        rows[r.u].append((r.i, r.split, r.timestamp, r.pos, r.rating))
    return rows


def all_samples(samples):
    return [s for split in ("train", "valid", "test") for s in samples[split]]


def test_schema_json_keys_and_placeholders(built):
    cfg, sd, samples, _ = built
    ph = cfg.model.placeholder_token
    keys = set()
    for s in all_samples(samples):
        assert tuple(s) == SAMPLE_KEYS
        check_sample(s, ph)
        assert count_placeholders(s["prompt"], ph) == 1 + len(s["items"])
        assert ph not in s["prompt_text"] and "encoded" not in s["prompt_text"]
        assert s["user_id"] == sd.user_ids[s["user"]]
        assert s["key"] == f"{s['split']}/{s['task']}/{s['user']}/{s['key'].rsplit('/', 1)[1]}"
        keys.add(s["key"])
        json.loads(json.dumps(s))
    assert len(keys) == sum(len(v) for v in samples.values())
    assert {s["task"] for s in samples["test"]} == set(cfg.tasks)


def test_custom_placeholder_token(built):
    cfg, sd, _, _ = built
    cfg2 = make_cfg(valid_per_user=2, history_len=5)
    cfg2.model.placeholder_token = "[[CF]]"
    cfg2.tasks = ["topk", "ctr"]
    for s in build_samples(sd, cfg2)["test"]:
        assert count_placeholders(s["prompt"], "[[CF]]") == 1 + len(s["items"])
        assert "<|cf|>" not in s["prompt"]


def test_negatives_exclude_everything_the_user_touched(built):
    _, sd, samples, _ = built
    seen = defaultdict(set)
    for r in sd.inter.itertuples():
        seen[r.u].add(r.i)
    held = {(r.u, r.i): r.pos for r in sd.inter.itertuples()}
    for s in all_samples(samples):
        if s["task"] == "ctr":
            item = s["items"][0]
            if item in seen[s["user"]]:
                assert s["label"] == held[(s["user"], item)]  # the observed interaction, labelled by pos
            else:
                assert s["label"] == 0.0 and s["target"] == "No"  # a sampled unseen negative
        if s["task"] == "topk":
            negs = [c for k, c in enumerate(s["candidates"]) if k != s["answer"]]
            assert not set(negs) & seen[s["user"]]


def test_history_is_known_and_strictly_before_target(built):
    """History = the last history_len interactions strictly earlier in time that a row of this
    split may see (train < valid < test), restricted per task (liked / rated / all)."""
    cfg, sd, samples, _ = built
    rows = user_rows(sd)
    level = {"train": 0, "valid": 1, "test": 2}
    checked = 0
    for s in all_samples(samples):
        target = s["candidates"][s["answer"]] if s["task"] == "topk" else s["items"][0]
        mine = rows[s["user"]]
        at = [k for k, r in enumerate(mine) if r[0] == target]
        assert at and mine[at[0]][1] == s["split"]  # explicit ctr: every row is an observed interaction
        ts = mine[at[0]][2]
        known = [r for r in mine if r[2] < ts and level[r[1]] <= level[s["split"]]]
        if s["task"] == "topk":
            known = [r for r in known if r[3] == 1.0]
        elif s["task"] == "rating":
            known = [r for r in known if not np.isnan(r[4])]
        assert s["history"] == [r[0] for r in known][-cfg.data.history_len:]
        checked += 1
    assert checked > 500


def test_history_sees_earlier_held_out_rows_never_later_ones(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    rows = ["u1,i1,1,5,train", "u1,i2,2,5,valid", "u1,i3,3,5,test", "u1,i4,9,5,train", "u1,i5,0,5,train"]
    rows += [f"u2,i{k},{k},4,train" for k in range(6, 30)]  # other items, so u1 has unseen negatives
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating,split\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},T{k}\n" for k in range(1, 30)))
    cfg = make_cfg()
    cfg.tasks = ["ctr", "topk", "rating"]
    sd = split_dataset(load_csv(folder), cfg.data, 0)
    assert sd.protocol == "column"  # chosen automatically: the source has a split column
    samples = build_samples(sd, cfg)
    i = {raw: k for k, raw in enumerate(sd.item_ids)}
    test = [s for s in samples["test"] if i["i3"] in s["items"]]
    assert len(test) == 3
    for s in test:
        assert s["history"] == [i["i5"], i["i1"], i["i2"]]  # the earlier valid row is known; i4 is later
    valid = [s for s in samples["valid"] if i["i2"] in s["items"]]
    assert valid and all(s["history"] == [i["i5"], i["i1"]] for s in valid)  # the test row is not
    train_i4 = [s for s in samples["train"] if s["task"] == "ctr" and s["items"] == [i["i4"]]]
    assert train_i4[0]["history"] == [i["i5"], i["i1"]]  # a train row never sees held-out rows


def test_ctr_explicit_protocol_every_row_no_negatives(built):
    _, sd, samples, _ = built
    for split in ("train", "valid", "test"):
        held = sd.part(split)
        ctr = [s for s in samples[split] if s["task"] == "ctr"]
        assert len(ctr) == len(held)
        assert sorted((s["user"], s["items"][0], s["label"]) for s in ctr) == sorted(
            zip(held["u"].tolist(), held["i"].tolist(), held["pos"].tolist()))
        assert all(s["target"] == ("Yes" if s["label"] == 1.0 else "No") for s in ctr)
        assert all(("disliked" in s["prompt"]) == any(sd.inter.loc[(sd.inter["u"] == s["user"]) & (sd.inter["i"] == h), "pos"].iloc[0] == 0.0
                                                       for h in s["history"]) for s in ctr[:200])


def test_ctr_sampled_protocol_both_labels_per_user():
    cfg = make_cfg(valid_per_user=2, history_len=5, ctr_negatives="sampled")
    cfg.tasks = ["ctr"]
    sd = split_dataset(generate_synthetic(cfg.data.synthetic, 1), cfg.data, 1)
    samples = build_samples(sd, cfg)
    for split in ("valid", "test"):
        held = sd.part(split)
        ctr = [s for s in samples[split] if s["task"] == "ctr"]
        assert len(ctr) == 2 * len(held)
        assert sum(s["label"] == 0.0 for s in ctr) >= len(held)
        by_user = defaultdict(set)
        for s in ctr:
            by_user[s["user"]].add(s["label"])
        liked = set(held.loc[held["pos"] == 1.0, "u"])
        assert liked and all(by_user[u] == {0.0, 1.0} for u in liked)
        assert all(s["target"] == ("Yes" if s["label"] == 1.0 else "No") for s in ctr)
        assert all("disliked" not in s["prompt"] for s in ctr)


def test_topk_protocol(built):
    cfg, sd, samples, _ = built
    answers = []
    for split in ("valid", "test"):
        topk = [s for s in samples[split] if s["task"] == "topk"]
        assert len(topk) == int((sd.part(split)["pos"] == 1.0).sum())
        for s in topk:
            cands = s["candidates"]
            assert len(cands) == cfg.data.topk_candidates == len(set(cands))
            assert len({sd.item_titles[c] for c in cands}) == len(cands)
            assert s["target"] == sd.item_titles[cands[s["answer"]]] and s["label"] is None
            assert f'"{s["target"]}"' in s["prompt"]
            answers.append(s["answer"])
    assert len(set(answers)) > cfg.data.topk_candidates // 2  # shuffled, not always slot 0


def test_rating_review_rating_and_explanation_targets(built):
    cfg, sd, samples, _ = built
    for s in samples["test"]:
        if s["task"] in ("rating", "review_rating"):
            assert s["target"] == str(int(s["label"])) and s["target"] in "12345"
        if s["task"] == "rating" and s["history"]:
            assert ", rating: " in s["prompt"]
        if s["task"] == "explanation":
            assert s["target"] and s["label"] is None


def test_review_is_cut_and_empty_summaries_counted(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    long_review = " ".join(f"w{k}" for k in range(50))
    rows = [f"u1,i1,1,5,{long_review},nice", "u1,i2,2,4,short one,", "u1,i3,3,2,meh,", "u2,i1,1,3,ok,fine",
            "u2,i3,2,1,bad,", "u2,i2,3,5,grand,great"]
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating,review,summary\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},T{k}\n" for k in range(1, 20)))
    cfg = make_cfg(review_words=10, valid_per_user=0)
    cfg.tasks = ["review_rating", "explanation"]
    sd = split_dataset(load_csv(folder), cfg.data, 0)
    counts: dict = {}
    samples = build_samples(sd, cfg, counts)
    rr = [s for s in samples["train"] if s["task"] == "review_rating" and sd.user_ids[s["user"]] == "u1"]
    first = [s for s in rr if sd.item_ids[s["items"][0]] == "i1"][0]
    assert '"w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"' in first["prompt"] and "w10" not in first["prompt"]
    assert counts == {"explanation/train/empty_summary": 2, "explanation/test/empty_summary": 1}
    assert [s["target"] for s in samples["test"] if s["task"] == "explanation"] == ["great"]


def test_train_uses_every_interaction_by_default_and_caps_on_request(built):
    cfg, sd, samples, _ = built
    assert cfg.data.samples_per_user == 0
    train = sd.part("train")
    assert sum(s["task"] == "ctr" for s in samples["train"]) == len(train)
    assert sum(s["task"] == "rating" for s in samples["train"]) == int(train["rating"].notna().sum())
    capped_cfg = make_cfg(valid_per_user=2, history_len=5, samples_per_user=4)
    per = defaultdict(int)
    for s in build_samples(sd, capped_cfg)["train"]:
        per[(s["user"], s["task"])] += 1
    assert max(per.values()) == 4
    assert {t for _, t in per} == set(capped_cfg.tasks)


def test_warm_flag_and_group(built):
    _, sd, samples, _ = built
    warm = sd.warm_mask()
    n = sd.train_counts()
    for s in all_samples(samples):
        assert s["warm"] == bool(warm[s["user"]])
        assert s["group"] == ("new" if n[s["user"]] == 0 else "warm" if warm[s["user"]] else "cold")


def test_seeded(built):
    cfg, sd, samples, _ = built
    again = build_samples(sd, cfg)
    assert again == samples
    cfg2 = make_cfg(valid_per_user=2, history_len=5)
    cfg2.seed = cfg.seed + 1
    assert build_samples(sd, cfg2) != samples
    cfg3 = make_cfg(valid_per_user=2, history_len=5)
    cfg3.tasks = ["topk"]
    only = build_samples(sd, cfg3)["test"]
    assert only == [s for s in samples["test"] if s["task"] == "topk"]  # per-task seed streams


def label_only_csv(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i},{t},{int(rng.random() < 0.5)}" for u in range(8) for t, i in
            enumerate(rng.choice(30, size=6, replace=False))]
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,label\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Title {k}\n" for k in range(30)))
    return folder


def test_label_only_data_builds_ctr_and_topk_only(tmp_path):
    cfg = make_cfg(topk_candidates=5)
    sd = split_dataset(load_csv(label_only_csv(tmp_path / "c")), cfg.data, 0)
    assert available_tasks(sd) == ["ctr", "topk"]
    cfg.tasks = ["ctr", "topk"]
    samples = build_samples(sd, cfg)
    assert {s["task"] for s in samples["train"]} == {"ctr", "topk"}
    cfg.tasks = ["ctr", "rating"]
    with pytest.raises(DataError, match=r"task 'rating' needs ratings, which dataset 'c' lacks"):
        build_samples(sd, cfg)


def test_check_sample_catches_broken_samples(built):
    cfg, _, samples, _ = built
    s = dict(samples["test"][0])
    s["prompt"] = s["prompt"] + " " + cfg.model.placeholder_token
    with pytest.raises(ValueError, match="placeholders"):
        check_sample(s, cfg.model.placeholder_token)
