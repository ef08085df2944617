"""Every kind of bad input: one-line DataError naming file and line, or skipped and counted."""

import gzip
import json
import logging

import pytest

from ckf_dist.config import DataConfig
from ckf_dist.data.amazon import load_amazon_json
from ckf_dist.data.errors import DataError
from ckf_dist.data.generic_csv import load_csv
from ckf_dist.data.loaders import load_dataset
from ckf_dist.data.movielens import load_movielens_100k, load_movielens_1m
from ckf_dist.data.splits import split_dataset
from ckf_dist.data.table import RecData, interactions_frame, items_frame


def ml100k(folder, data_lines, n_items=3):
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("\n".join(data_lines) + "\n")
    genres = "|".join(["0"] * 18 + ["1"])
    items = [f"{k}|Movie {k} (199{k})|01-Jan-1995||http://x|{genres}" for k in range(1, n_items + 1)]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return folder


GOOD = ["1\t1\t5\t100", "1\t2\t3\t200", "2\t1\t4\t300", "2\t3\t1\t400"]


def raises_at(fn, *where):
    """Call fn, expect a DataError whose one-line message contains every piece of `where`."""
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for w in where:
        assert w in msg, msg
    return msg


def test_wrong_field_count(tmp_path):
    d = ml100k(tmp_path / "ml", GOOD[:2] + ["2\t1\t4"] + GOOD[3:])
    msg = raises_at(lambda: load_movielens_100k(d), "u.data:3:", "expected 4 tab-separated fields, got 3")
    assert str(d / "u.data") in msg
    data = load_movielens_100k(d, on_bad_record="skip")
    assert data.skipped == {"wrong_field_count": 1} and len(data.interactions) == 3


def test_non_numeric_and_out_of_range_rating(tmp_path):
    d = ml100k(tmp_path / "ml", ["1\t1\tfive\t100", "1\t2\t9\t200"] + GOOD[2:])
    raises_at(lambda: load_movielens_100k(d), "u.data:1:", "rating 'five' is not a number")
    data = load_movielens_100k(d, on_bad_record="skip")
    assert data.skipped == {"bad_rating": 2} and len(data.interactions) == 2


def test_bad_timestamp_and_unknown_item(tmp_path):
    d = ml100k(tmp_path / "ml", GOOD + ["3\t1\t4\tyesterday", "3\t99\t4\t500"])
    raises_at(lambda: load_movielens_100k(d), "u.data:5:", "timestamp")
    data = load_movielens_100k(d, on_bad_record="skip")
    assert data.skipped == {"bad_timestamp": 1, "unknown_item": 1}
    (d / "u.data").write_text("\n".join(GOOD + ["3\t99\t4\t500"]) + "\n")
    raises_at(lambda: load_movielens_100k(d), "u.data:5:", "item '99'")


def test_bad_item_file_line(tmp_path):
    d = ml100k(tmp_path / "ml", GOOD)
    with open(d / "u.item", "a", encoding="latin-1") as f:
        f.write("4|Broken\n")
    raises_at(lambda: load_movielens_100k(d), "u.item:4:", "expected 24 '|'-separated fields, got 2")
    assert load_movielens_100k(d, on_bad_record="skip").skipped == {"wrong_field_count": 1}


def test_missing_files(tmp_path):
    d = ml100k(tmp_path / "ml", GOOD)
    (d / "u.item").unlink()
    raises_at(lambda: load_movielens_100k(d), "u.item", "not found")
    raises_at(lambda: load_movielens_1m(d), "ratings.dat", "not found")
    raises_at(lambda: load_amazon_json(tmp_path / "nope.json"), "nope.json", "not found")
    raises_at(lambda: load_csv(tmp_path), "interactions.csv", "not found")
    cfg = DataConfig(format="movielens-100k", path=str(tmp_path / "absent"))
    raises_at(lambda: load_dataset(cfg, 0), "absent", "not found")


def test_empty_after_filtering(tmp_path, caplog):
    d = ml100k(tmp_path / "ml", ["1\t1\tx\t100", "1\t2\t3"])
    raises_at(lambda: load_movielens_100k(d, on_bad_record="skip"), "u.data", "no ratings left")
    (d / "u.data").write_text("")
    raises_at(lambda: load_movielens_100k(d, on_bad_record="skip"), "u.data", "no ratings left")


def test_skip_mode_logs_one_line_summary(tmp_path, caplog):
    d = ml100k(tmp_path / "ml", GOOD + ["1\t1", "2\t2\tbad\t9"])
    with caplog.at_level(logging.WARNING):
        load_movielens_100k(d, on_bad_record="skip")
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["movielens-100k: skipped 2 bad record(s) (bad_rating=1, wrong_field_count=1)"]


def test_movielens_1m_format(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::x::978301968\n")
    (d / "movies.dat").write_bytes("10::Am\xe9lie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n".encode("latin-1"))
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    raises_at(lambda: load_movielens_1m(d), "ratings.dat:3:", "rating 'x' is not a number")
    data = load_movielens_1m(d, on_bad_record="skip")
    assert data.skipped == {"bad_rating": 1}
    assert dict(zip(data.items["item"], data.items["title"]))["10"] == "Amélie (2001)"
    assert data.items["description"].tolist()[0] == "Comedy, Romance"
    (d / "ratings.dat").write_text("1::10::5\n")
    raises_at(lambda: load_movielens_1m(d), "ratings.dat:1:", "expected 4 '::'-separated fields, got 3")


def review(user, item, rating=5.0, t=1, **extra):
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": t,
                       "reviewText": "fine strings", "summary": "ok", **extra})


def test_amazon_bad_json_missing_field_and_rating(tmp_path):
    f = tmp_path / "Reviews_5.json"
    f.write_text("\n".join([review("u1", "i1"), '{"reviewerID": "u1", "asin"', review("u1", "i2", rating="great"),
                            json.dumps({"reviewerID": "u2", "asin": "i1", "unixReviewTime": 5}), review("u2", "i2")]) + "\n")
    raises_at(lambda: load_amazon_json(f), "Reviews_5.json:2:", "invalid JSON")
    data = load_amazon_json(f, on_bad_record="skip")
    assert data.skipped == {"bad_json": 1, "bad_rating": 1, "missing_field": 1}
    assert len(data.interactions) == 2
    f.write_text(review("u1", "i1") + "\n" + json.dumps({"reviewerID": "u2", "asin": "i1", "unixReviewTime": 5}) + "\n")
    raises_at(lambda: load_amazon_json(f), "Reviews_5.json:2:", "missing field 'overall'")


def test_amazon_2018_fields_gzip_and_python_literal_metadata(tmp_path):
    lines = [json.dumps({"reviewerID": "u1", "asin": "B01", "overall": 4.0, "unixReviewTime": 10, "vote": "2"}),
             review("u1", "B02", t=20), review("u2", "B01", t=30)]
    f = tmp_path / "Music_5.json.gz"
    with gzip.open(f, "wt") as g:
        g.write("\n".join(lines) + "\n")
    meta = tmp_path / "meta_Music.json"
    meta.write_text("{'asin': 'B01', 'title': 'Blue &amp; Gold Strings', 'price': 3.5}\n"
                    + json.dumps({"asin": "B02"}) + "\n" + "{'asin': 'B03', 'title': \n")
    raises_at(lambda: load_amazon_json(f, meta), "meta_Music.json:3:", "invalid JSON")
    data = load_amazon_json(f, meta, on_bad_record="skip")
    assert data.skipped == {"bad_json": 1}
    inter = data.interactions.sort_values("timestamp")
    assert inter["review"].tolist()[0] == "" and inter["summary"].tolist()[0] == ""
    titles = dict(zip(data.items["item"], data.items["title"]))
    assert titles == {"B01": "Blue & Gold Strings", "B02": ""}


def write_csv(folder, rows, header="user_id,item_id,timestamp,rating,label,review,summary,split",
              items="item_id,title\ni1,Alpha\ni2,Beta\ni3,Gamma\n"):
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text(items)
    return folder


def test_csv_line_numbers_count_multiline_fields(tmp_path):
    rows = ['u1,i1,1,5,,"a review\nover two lines",s,', "u1,i2,2,4,,,,", "u1,i3,3,x,,,,"]
    d = write_csv(tmp_path / "c", rows)
    raises_at(lambda: load_csv(d), "interactions.csv:5:", "rating 'x' is not a number")


@pytest.mark.parametrize(
    "bad_row, where, problem, reason",
    [
        ("u2,i1,5,4,,,", "interactions.csv:3:", "expected 8 comma-separated fields, got 7", "wrong_field_count"),
        ("u2,i1,5,4,2,,,", "interactions.csv:3:", "label '2' is not 0 or 1", "bad_label"),
        ("u2,i9,5,4,,,,", "interactions.csv:3:", "item 'i9' is not in items.csv", "unknown_item"),
        ("u2,i1,5,,,,,", "interactions.csv:3:", "neither rating nor label", "missing_rating"),
        ("u2,i1,soon,4,,,,", "interactions.csv:3:", "timestamp 'soon'", "bad_timestamp"),
    ],
)
def test_csv_bad_records(tmp_path, bad_row, where, problem, reason):
    d = write_csv(tmp_path / "c", ["u1,i1,1,5,,,,", bad_row, "u2,i2,6,3,,,,"])
    raises_at(lambda: load_csv(d), where, problem)
    data = load_csv(d, on_bad_record="skip")
    assert data.skipped == {reason: 1} and len(data.interactions) == 2


def test_csv_held_out_user_without_train_is_kept(tmp_path):
    rows = ["u1,i1,1,5,,,,train", "u1,i2,2,4,,,,test", "u2,i3,3,4,,,,valid", "u2,i1,4,2,,,,test"]
    data = load_csv(write_csv(tmp_path / "c", rows))
    assert data.skipped == {} and data.interactions["user"].tolist() == ["u1", "u1", "u2", "u2"]


def test_csv_partial_or_bad_split_column(tmp_path):
    d = write_csv(tmp_path / "c", ["u1,i1,1,5,,,,train", "u1,i2,2,4,,,,", "u1,i3,3,4,,,,holdout"])
    raises_at(lambda: load_csv(d), "interactions.csv:4:", "split 'holdout'")
    data = load_csv(d, on_bad_record="skip")
    assert data.skipped == {"bad_split": 1, "missing_split": 1}


def test_csv_header_and_items_problems(tmp_path):
    d = write_csv(tmp_path / "c", ["u1,i1,1"], header="user_id,item_id,timestamp")
    raises_at(lambda: load_csv(d), "interactions.csv:1:", "needs a 'rating' or a 'label' column")
    d = write_csv(tmp_path / "c2", ["u1,i1,5"], header="user_id,item_id,rating")
    raises_at(lambda: load_csv(d), "interactions.csv:1:", "missing column 'timestamp'")
    d = write_csv(tmp_path / "c3", ["u1,i1,1,5,,,,"], items="item_id,title\ni1,A\ni1,B\n")
    raises_at(lambda: load_csv(d), "items.csv:3:", "item 'i1' listed twice")
    d = write_csv(tmp_path / "c4", ["u1,i2,1,x,,,,"])
    raises_at(lambda: load_csv(d, on_bad_record="skip"), "interactions.csv", "no interactions left")


def test_split_keeps_users_without_train_as_new(tmp_path):
    """A held-out user with no training row is kept (group 'new'), never refused or dropped."""
    inter = interactions_frame(["a", "a", "b"], ["x", "y", "x"], [1, 2, 3], rating=[5.0, 4.0, 3.0],
                               split=["train", "test", "test"])
    data = RecData("handmade", inter, items_frame(["x", "y"], ["X", "Y"]))
    sd = split_dataset(data, DataConfig(), 0)
    assert sorted(sd.user_ids) == ["a", "b"] and sd.skipped == {}
    groups = dict(zip(sd.user_ids, sd.user_groups()))
    assert groups == {"a": "cold", "b": "new"}
    only_held_out = RecData("handmade", inter.iloc[2:], items_frame(["x"], ["X"]))
    raises_at(lambda: split_dataset(only_held_out, DataConfig(), 0), "handmade", "left no training interaction")


def test_csv_timestamp_out_of_int64_range_is_a_bad_record(tmp_path):
    d = write_csv(tmp_path / "c", ["u1,i1,1,5,,,,", "u1,i2,12345678901234567890,4,,,,", "u1,i3,3,4,,,,"])
    raises_at(lambda: load_csv(d), "interactions.csv:3:", "timestamp '12345678901234567890' is out of range")
    data = load_csv(d, on_bad_record="skip")
    assert data.skipped == {"bad_timestamp": 1} and len(data.interactions) == 2


def test_csv_non_utf8_byte_names_file_and_line(tmp_path):
    d = write_csv(tmp_path / "c", ["u1,i1,1,5,,,,", "u1,i2,2,4,,,,"])
    p = d / "interactions.csv"
    p.write_bytes(p.read_bytes().replace(b"u1,i2", b"u\xff1,i2"))
    raises_at(lambda: load_csv(d), "interactions.csv:3:", "byte 0xff at column 2 is not UTF-8")


def test_amazon_non_utf8_ids_are_bad_records_never_merged(tmp_path):
    f = tmp_path / "Reviews_5.json"
    lines = [review("u1", "i1").encode(), review("AXX-Z", "i1").encode().replace(b"AXX-Z", b"AXX\xffZ"),
             review("AXX-Z", "i2").encode().replace(b"AXX-Z", b"AXX\xfeZ"), review("u1", "i2").encode()]
    f.write_bytes(b"\n".join(lines) + b"\n")
    raises_at(lambda: load_amazon_json(f), "Reviews_5.json:2:", "byte 0xff at column", "is not UTF-8")
    data = load_amazon_json(f, on_bad_record="skip")
    assert data.skipped == {"bad_encoding": 2} and sorted(set(data.interactions["user"])) == ["u1"]


def test_amazon_deeply_nested_json_is_a_bad_record(tmp_path):
    f = tmp_path / "Reviews_5.json"
    f.write_text(review("u1", "i1") + "\n" + "[" * 100000 + "]" * 100000 + "\n" + review("u1", "i2") + "\n")
    raises_at(lambda: load_amazon_json(f), "Reviews_5.json:2:", "nested too deeply")
    assert load_amazon_json(f, on_bad_record="skip").skipped == {"bad_json": 1}


def test_duplicate_interactions_keep_the_last_and_are_counted(tmp_path):
    """The documented rule: one (user, item) pair once, its latest interaction (ties: later in the
    file); the dropped rows are counted under `duplicate`, so a pair never sits in train and test."""
    rows = ["u1,i1,1,5,,,,", "u1,i2,2,4,,,,", "u1,i1,9,2,,,,", "u1,i3,3,3,,,,", "u2,i1,4,4,,,,", "u2,i1,4,1,,,,",
            "u2,i2,5,5,,,,"]
    data = load_csv(write_csv(tmp_path / "c", rows))
    assert data.skipped == {} and len(data.interactions) == 7  # the loader keeps them; the split applies the rule
    sd = split_dataset(data, DataConfig(valid_per_user=0), 0)
    assert sd.skipped == {"duplicate": 2}
    inter = sd.inter.assign(user=[sd.user_ids[u] for u in sd.inter["u"]], item=[sd.item_ids[i] for i in sd.inter["i"]])
    kept = {(r.user, r.item): (r.timestamp, r.rating) for r in inter.itertuples()}
    assert kept == {("u1", "i1"): (9, 2.0), ("u1", "i2"): (2, 4.0), ("u1", "i3"): (3, 3.0),
                    ("u2", "i1"): (4, 1.0), ("u2", "i2"): (5, 5.0)}
    assert not inter.duplicated(["user", "item"]).any()
    assert inter.loc[(inter.user == "u1") & (inter.item == "i1"), "split"].tolist() == ["test"]  # the last is held out


def test_csv_stray_quote_reports_the_swallowed_lines_in_both_modes(tmp_path):
    rows = ["u1,i1,1,5,,,,", 'u1,"i2,2,4,,,,', "u1,i3,3,4,,,,", "u2,i1,4,4,,,,"]
    d = write_csv(tmp_path / "c", rows)
    for mode in ("error", "skip"):
        raises_at(lambda: load_csv(d, on_bad_record=mode), "interactions.csv:3:",
                  "a quoted field opened on this line runs to line 5, swallowing 2 line(s)")
    # a line break inside a quoted review is fine; inside an id it is the same quoting failure
    ok = write_csv(tmp_path / "ok", ['u1,i1,1,5,,"two\nlines",,', "u1,i2,2,4,,,,"])
    assert len(load_csv(ok).interactions) == 2
    bad = write_csv(tmp_path / "bad", ['u1,"i1\nx",1,5,,,,', "u1,i2,2,4,,,,"])
    raises_at(lambda: load_csv(bad, on_bad_record="skip"), "interactions.csv:2:", "runs to line 3")


def test_movielens_latest_stray_quote_is_refused_in_both_modes(tmp_path):
    from ckf_dist.data.movielens import load_movielens_latest

    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "movies.csv").write_text('movieId,title,genres\n1,"Heat, The (1995)",Action\n2,Up (2009),Comedy\n')
    ratings = ["userId,movieId,rating,timestamp"] + [f"{u},{i},4.5,{100 * u + i}" for u in (1, 2, 3) for i in (1, 2)]
    ratings.insert(3, '7,"2,3.5,881250949')  # line 4: the quote runs to the end of the file
    (d / "ratings.csv").write_text("\n".join(ratings) + "\n")
    for mode in ("error", "skip"):
        raises_at(lambda: load_movielens_latest(d, on_bad_record=mode), "ratings.csv:4:",
                  "a quoted field opened on this line runs to line 8, swallowing 4 line(s)")
