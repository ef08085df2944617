"""Every bad input a user can hand the CLI ends in one line `error: ...` naming the config key or
the file and line, exit status 2, and nothing written downstream (no stage record, no shards,
no CF tables). Data-file problems use data.on_bad_record=error (the default); their skip-mode
counts are tested beside the loaders (tests/data/test_bad_input.py)."""

import json

import pytest

from ckf_dist.cli import main

QUICK = ["dist.launcher=local", "data.synthetic.num_users=20", "data.synthetic.num_items=20", "cf.epochs=1"]

CONFIG_PROBES = [
    ("seed=-1", "key 'seed': invalid value -1"),
    ("task_mix={ctr: 0, topk: 0, rating: 0, review_rating: 0, explanation: 0}", "key 'task_mix': every task"),
    ("train.log_every=0", "key 'train.log_every': invalid value 0"),
    ("train.save_every=0", "key 'train.save_every': invalid value 0"),
    ("eval.batch_size=0", "key 'eval.batch_size': invalid value 0"),
    ("cf.batch_size=0", "key 'cf.batch_size': invalid value 0"),
    ("lora.shared.dropout=1.5", "key 'lora.shared.dropout': invalid value 1.5"),
    ("train.lr=.nan", "key 'train.lr': invalid value nan"),
    ("train.lr=-1", "key 'train.lr': invalid value -1.0"),
    ("train.lr=0", "key 'train.lr': invalid value 0.0"),
    ("model.max_length=4", "key 'model.max_length': invalid value 4"),
    ("eval.ks=[0,-1]", "key 'eval.ks': invalid value [0, -1]"),
    ("train.warmup_frac=5", "key 'train.warmup_frac': invalid value 5.0"),
    ("cf.epochs=0", "key 'cf.epochs': invalid value 0"),
]


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _nothing_downstream(run_dir) -> None:
    assert not (run_dir / "data" / "stage.json").exists()
    assert not (run_dir / "data" / "shards" / "manifest.json").exists()
    assert not (run_dir / "cf").exists() and not (run_dir / "train").exists()


@pytest.mark.parametrize("override, expected", CONFIG_PROBES, ids=[p[0].split("=")[0] + "=" + p[0].split("=")[1][:12] for p in CONFIG_PROBES])
@pytest.mark.parametrize("verb", [["data", "prepare"], ["train"]])
def test_bad_config_value_is_one_line_exit_2_before_any_stage(tmp_path, capsys, verb, override, expected):
    run_dir = tmp_path / "run"
    assert main([*verb, "--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK, override]) == 2
    assert expected in _one_error_line(capsys)
    assert not run_dir.exists()  # nothing at all: not even the run directory


def test_run_dir_on_a_file(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert main(["data", "prepare", "--config", "configs/quickstart.yaml", f"run.dir={f}/run", *QUICK]) == 2
    assert f"key 'run.dir': {f} is a file, not a directory" in _one_error_line(capsys)
    assert f.read_text() == "x"


def test_duplicate_yaml_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  steps: 5\nseed: 1\ntrain:\n  lr: 0.01\n")
    run_dir = tmp_path / "run"
    assert main(["data", "prepare", "--config", str(cfg), f"run.dir={run_dir}"]) == 2
    assert f"{cfg}:4: invalid YAML (duplicate key 'train' (first at line 1))" in _one_error_line(capsys)
    assert not run_dir.exists()
    assert main(["data", "prepare", f"run.dir={run_dir}", "task_mix={ctr: 1, ctr: 2}"]) == 2
    assert "duplicate key 'ctr'" in _one_error_line(capsys)


def _csv_folder(tmp_path, rows: list[bytes]):
    d = tmp_path / "csv"
    d.mkdir()
    (d / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(1, 6)))
    (d / "interactions.csv").write_bytes(b"user_id,item_id,rating,timestamp\n" + b"".join(r + b"\n" for r in rows))
    return d


GOOD_ROWS = [f"u{u},i{i},{1 + (u + i) % 5},{100 * u + i}".encode() for u in range(1, 5) for i in range(1, 6)]

DATA_PROBES = [
    # a stray quote: the csv module would read on to the next quote, swallowing the rows between
    ("stray_quote", GOOD_ROWS[:2] + [b'u7,"i2,3,881250949'] + GOOD_ROWS[2:],
     "interactions.csv:4: a quoted field opened on this line runs to line 22, swallowing 18 line(s)"),
    ("stray_quote_closed_later", GOOD_ROWS[:2] + [b'u7,"i2,3,881250949'] + GOOD_ROWS[2:6] + [b'u9,i1",3,5'] + GOOD_ROWS[6:],
     "interactions.csv:4: a quoted field opened on this line runs to line 9, swallowing 5 line(s)"),
    ("timestamp_20_digits", GOOD_ROWS[:3] + [b"u9,i1,4,12345678901234567890"] + GOOD_ROWS[3:],
     "interactions.csv:5: timestamp '12345678901234567890' is out of range"),
    ("non_utf8_byte", GOOD_ROWS[:3] + [b"u\xff9,i1,4,100"] + GOOD_ROWS[3:],
     "interactions.csv:5: byte 0xff at column 2 is not UTF-8"),
]


@pytest.mark.parametrize("name, rows, expected", DATA_PROBES, ids=[p[0] for p in DATA_PROBES])
def test_bad_csv_is_one_line_exit_2_and_nothing_downstream(tmp_path, capsys, name, rows, expected):
    d = _csv_folder(tmp_path, rows)
    run_dir = tmp_path / "run"
    args = ["--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK, "data.format=csv", f"data.path={d}"]
    assert main(["train", *args]) == 2
    assert expected in _one_error_line(capsys)
    _nothing_downstream(run_dir)
    if name.startswith("stray_quote"):  # refused in skip mode too: skipping would drop the swallowed rows
        assert main(["data", "prepare", *args, "data.on_bad_record=skip"]) == 2
        assert expected in _one_error_line(capsys)
        _nothing_downstream(run_dir)


def test_deeply_nested_amazon_line_is_one_line(tmp_path, capsys):
    f = tmp_path / "Reviews_5.json"
    good = [json.dumps({"reviewerID": f"u{k}", "asin": "i1", "overall": 4.0, "unixReviewTime": k}) for k in range(3)]
    f.write_text("\n".join(good[:1] + ["[" * 100000 + "]" * 100000] + good[1:]) + "\n")
    run_dir = tmp_path / "run"
    assert main(["data", "prepare", "--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK,
                 "data.format=amazon-json", f"data.path={f}"]) == 2
    assert "Reviews_5.json:2: " in _one_error_line(capsys)
    _nothing_downstream(run_dir)


@pytest.mark.parametrize("flags, expected", [(["--k", "-3"], "--k: must be at least 1 (got -3)"),
                                             (["--k", "0"], "--k: must be at least 1 (got 0)"),
                                             (["--candidates", "-5"], "--candidates: must be at least 1 (got -5)")])
def test_recommend_refuses_non_positive_counts(tmp_path, capsys, flags, expected):
    assert main(["recommend", "--run", str(tmp_path), "--user", "u1", *flags]) == 2
    assert _one_error_line(capsys) == f"error: {expected}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_non_loopback_dashboard_host_warns_naming_the_exposure(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="ckf_dist.cli"):
        assert main(["data", "prepare", "--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK,
                     "dist.launcher=ray", "dist.dashboard_host=0.0.0.0"]) == 0
    assert ("dist.dashboard_host=0.0.0.0 is not a loopback address: the Ray dashboard and its job-submission API "
            "(which runs arbitrary code) will accept connections from the network") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ckf_dist.cli"):
        assert main(["data", "prepare", "--config", "configs/quickstart.yaml", f"run.dir={run_dir}", *QUICK,
                     "dist.launcher=ray", "dist.dashboard_host=127.0.0.1"]) == 0
    assert "dashboard_host" not in caplog.text
