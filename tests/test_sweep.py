"""`ckf sweep`: grid parsing and validation, aggregation (mean ± sd), the tables, TensorBoard runs
and HParams, the validation plot, resources, and (integration) a real smoke grid with resume."""

import json
import math
from pathlib import Path

import pytest

from ckf_dist.cli import main
from ckf_dist.config import ConfigError, load_config, save_config
from ckf_dist.run import Run
from ckf_dist.sweep.grid import GridError, load_grid
from ckf_dist.sweep.report import aggregate, format_cell, mean_sd, results_markdown

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/sweeps/quickstart-smoke.yaml"


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # grids name configs relative to the project root


def _grid(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = "config: configs/quickstart.yaml\nseeds: [0, 1]\n"


# ------------------------------------------------------------------------------------ grids


def test_smoke_grid_trials_and_commands():
    g = load_grid(SMOKE, out="/tmp/x")
    assert list(g.variants) == ["ckf", "collm"]
    trials = g.trials()
    assert [t.name for t in trials] == ["ckf-s0", "ckf-s1", "collm-s0", "collm-s1"]
    t = trials[2]
    assert t.overrides[: len(g.overrides)] == g.overrides  # global first, then the variant's
    assert t.overrides[-4:] == ["model.mapping=collm", "run.cache_dir=/tmp/x/cache", "seed=0", "run.dir=/tmp/x/collm-s0"]
    cfg = g.resolve(t)
    assert cfg.model.mapping == "collm" and cfg.seed == 0 and cfg.dist.launcher == "local" and str(cfg.run_dir) == "/tmp/x/collm-s0"
    assert g.trials(["dist.use_gpu=true"])[0].overrides[0] == "dist.use_gpu=true"


def test_modes_grid():
    g = load_grid("configs/sweeps/ml100k-modes.yaml")
    assert g.config == "configs/ml100k-quality.yaml"
    got = {n: (v.overrides, len(v.seeds)) for n, v in g.variants.items()}
    assert {n: s for n, (_, s) in got.items()} == {"binllm": 1, "cora": 1, "allmrec": 1, "ckf-sasrec": 1, "ckf-din": 1}
    cfgs = {t.variant: g.resolve(t) for t in g.trials()}
    assert [cfgs[m].model.mapping for m in ("binllm", "cora", "allmrec")] == ["binllm", "cora", "allmrec"]
    assert cfgs["binllm"].model.binllm_compress  # 21 codes per topk prompt must fit model.max_length
    for v in ("sasrec", "din"):
        c = cfgs[f"ckf-{v}"]
        assert c.model.mapping == "ckf" and c.cf.model == v and v in c.cf.baselines
    assert len(g.trials()) == 5 and all(c.dist.launcher == "local" for c in cfgs.values())
    # the same budget and rows as the quality grid, so the two tables read side by side
    quality = load_grid("configs/sweeps/ml100k-quality.yaml")
    ckf = quality.resolve(quality.trials()[0])
    for c in cfgs.values():
        assert (c.train.steps, c.train.micro_batch_size, c.eval.max_samples_per_task) == (
            ckf.train.steps, ckf.train.micro_batch_size, ckf.eval.max_samples_per_task)


@pytest.mark.parametrize("name", ["ml100k-quality", "amazon-mi-quality"])
def test_quality_grids(name):
    g = load_grid(f"configs/sweeps/{name}.yaml")
    assert g.config == f"configs/{name}.yaml"
    want = {"ckf": ([], 3), "text_only": (["model.cf_fusion=false"], 3), "collm": (["model.mapping=collm"], 3),
            "no_meta": (["model.meta_net=false"], 1), "shared_lora": (["lora.task_specific=false"], 1)}
    assert {n: (v.overrides, len(v.seeds)) for n, v in g.variants.items()} == want
    assert len(g.trials()) == 11
    assert g.resolve(g.trials()[0]).dist.launcher == "local"


@pytest.mark.parametrize("text, fragment", [
    (BASE + "variant: {}\n", "unknown key 'variant'"),
    (BASE + "variants:\n  ckf: {overide: [a=1]}\n", "variants.ckf.overide"),
    (BASE + "variants:\n  ckf: {overrides: [model.nope=1]}\n", "variants.ckf.overrides[0]"),
    (BASE + "variants:\n  ckf: {overrides: [model.nope=1]}\n", "model.nope"),
    (BASE + "variants:\n  ckf: {overrides: [train.steps=many]}\n", "train.steps"),
    (BASE + "variants:\n  ckf: {overrides: [model.cf_fusion]}\n", "variants.ckf.overrides[0]"),
    (BASE + "variants:\n  ckf: {overrides: [seed=3]}\n", "'seed' is set per trial"),
    (BASE + "variants:\n  ckf: {seeds: []}\n", "variants.ckf.seeds"),
    (BASE + "variants:\n  'a/b': {}\n", "variants.a/b"),
    (BASE + "overrides: [model.mapping=nope]\nvariants:\n  ckf: {}\n", "overrides[0]"),
    (BASE + "variants: {}\n", "'variants'"),
    ("config: configs/quickstart.yaml\nseeds: [a]\nvariants:\n  ckf: {}\n", "'seeds'"),
    ("config: configs/nope.yaml\nseeds: [0]\nvariants:\n  ckf: {}\n", "'config'"),
    (BASE + "metrics: [ctr_auc]\nvariants:\n  ckf: {}\n", "metrics[0]"),
])
def test_grid_errors_are_one_line_naming_the_key(tmp_path, text, fragment):
    p = _grid(tmp_path, text)
    with pytest.raises(GridError) as e:
        load_grid(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and fragment in msg, msg


def test_cli_bad_grid_exits_2_with_one_line(tmp_path, capsys):
    p = _grid(tmp_path, BASE + "variants:\n  ckf: {overrides: [lora.nope=1]}\n")
    assert main(["sweep", "--grid", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "lora.nope" in err and len(err.splitlines()) == 1


def test_dry_run_lists_trials_and_runs_nothing(tmp_path, capsys):
    assert main(["sweep", "--grid", SMOKE, "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out and "0 done, 4 to run" in out and "collm-s1" in out
    assert f"model.mapping=collm run.cache_dir={tmp_path / 's' / 'cache'} seed=1" in out
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ aggregation


def _m(auc=None, rmse=None, warm=None, new=None):
    m = {"ctr": {"auc": auc, "uauc": None, "n": 10}, "rating": {"rmse": rmse, "mae": None, "n": 10}}
    if warm is not None:
        m["ctr"]["warm"] = {"auc": warm, "n": 5}
        m["ctr"]["cold"] = {"auc": None, "n": 0}
    if new is not None:
        m["ctr"]["new"] = {"auc": new, "n": 3}
    return m


def _results():
    def trial(variant, seed, metrics, baselines, status="done"):
        return {"name": f"{variant}-s{seed}", "variant": variant, "seed": seed, "status": status, "metrics": metrics, "baselines": baselines}

    return {
        "metrics": ["ctr/auc", "ctr/uauc", "rating/rmse"],
        "labels": {"ckf": "CKF", "text_only": "text-only"},
        "trials": [
            trial("ckf", 0, _m(0.7, 1.0, warm=0.6, new=0.5), {"popularity": _m(0.6, 1.3), "mf": _m(0.65, 1.1)}),
            trial("ckf", 1, _m(0.8, 1.2, warm=0.7), {"popularity": _m(0.7, 1.3), "mf": _m(0.75, 1.1)}),
            trial("ckf", 2, _m(0.9, float("nan"), warm=0.8), {"popularity": _m(0.8, 1.3)}),
            trial("text_only", 0, _m(0.5, 1.4), {"popularity": _m(0.99, 9.9)}),  # seed 0's baselines come from ckf-s0
            trial("collm", 0, None, None, status="failed"),
        ],
    }


def test_mean_sd_hand_computed():
    assert mean_sd([0.7, 0.8, 0.9]) == pytest.approx((0.8, 0.1, 3))
    m, sd, n = mean_sd([1.0, None, 1.2, float("nan")])
    assert (m, n) == (pytest.approx(1.1), 2) and sd == pytest.approx(math.sqrt(0.02))
    assert mean_sd([0.5]) == (0.5, None, 1) and mean_sd([None, float("nan")]) is None
    assert format_cell(mean_sd([0.7, 0.8, 0.9])) == "0.8000 ± 0.1000 (3 seeds)"
    assert format_cell(mean_sd([0.5])) == "0.5000 (1 seed)"
    assert format_cell(None) == "–"


def test_aggregate_variants_then_baselines_over_seeds():
    rows = aggregate(_results())
    assert [r["name"] for r in rows] == ["CKF", "text-only", "popularity (baseline)", "mf (baseline)"]  # failed collm: no row
    ckf, text, pop, mf = rows
    assert ckf["seeds"] == [0, 1, 2] and ckf["values"]["ctr/auc"] == [0.7, 0.8, 0.9]
    assert mean_sd(ckf["values"]["rating/rmse"]) == pytest.approx((1.1, math.sqrt(0.02), 2))
    assert pop["seeds"] == [0, 1, 2] and mean_sd(pop["values"]["ctr/auc"]) == pytest.approx((0.7, 0.1, 3))  # not text_only-s0's 0.99
    assert mf["seeds"] == [0, 1] and mean_sd(mf["values"]["ctr/auc"]) == pytest.approx((0.7, math.sqrt(0.005), 2))
    assert mean_sd(ckf["values"]["ctr/warm/auc"]) == pytest.approx((0.7, 0.1, 3))
    assert mean_sd(ckf["values"]["ctr/new/auc"]) == (0.5, None, 1)


def test_a_later_trials_extra_baseline_joins_its_seed():
    """A variant with another CF backbone (cf.model=sasrec) reports that backbone too: it joins the
    baselines of its seed, while the models every trial reports still come from the first trial."""
    res = _results()
    res["trials"].append({"name": "sasrec-s0", "variant": "sasrec", "seed": 0, "status": "done", "metrics": _m(0.6, 1.0),
                          "baselines": {"popularity": _m(0.11, 9.0), "sasrec": _m(0.66, None)}})
    rows = {r["name"]: r for r in aggregate(res)}
    assert rows["sasrec (baseline)"]["seeds"] == [0] and rows["sasrec (baseline)"]["values"]["ctr/auc"] == [0.66]
    assert rows["popularity (baseline)"]["values"]["ctr/auc"] == [0.6, 0.7, 0.8]  # seed 0 still from ckf-s0


def test_results_markdown_table_with_baselines_and_groups():
    md = results_markdown(_results())
    lines = md.splitlines()
    assert lines[0] == "| model | ctr auc | rating rmse |"  # ctr uauc: no value anywhere, no column
    assert "| CKF | 0.8000 ± 0.1000 (3 seeds) | 1.1000 ± 0.1414 (2 seeds) |" in lines
    assert "| text-only | 0.5000 (1 seed) | 1.4000 (1 seed) |" in lines
    assert "| popularity (baseline) | 0.7000 ± 0.1000 (3 seeds) | 1.3000 ± 0.0000 (3 seeds) |" in lines
    assert "| mf (baseline) | 0.7000 ± 0.0707 (2 seeds) | 1.1000 ± 0.0000 (2 seeds) |" in lines
    i = lines.index("ctr AUC by user group:")
    assert lines[i + 2] == "| model | all | warm | new |"  # cold has no value: no column
    assert "| CKF | 0.8000 ± 0.1000 (3 seeds) | 0.7000 ± 0.1000 (3 seeds) | 0.5000 (1 seed) |" in lines
    assert "| text-only | 0.5000 (1 seed) | – | – |" in lines


# ------------------------------------------------------------- outputs on hand-made run dirs


def _fake_run(grid, trial, auc, with_eval=True):
    cfg = grid.resolve(trial)
    rd = Path(trial.run_dir)
    save_config(cfg, rd / "config.yaml")
    (rd / "metrics.json").write_text(json.dumps({"ctr": {"auc": auc, "n": 4, "warm": {"auc": auc, "n": 2}}, "protocol": {"split": "x"}}))
    (rd / "cf").mkdir()
    (rd / "cf" / "baselines.json").write_text(json.dumps({"results": {"test": {"popularity": {"ctr": {"auc": 0.5, "n": 4}}}}}))
    recs = [{"step": 0, "model/trainable_params": 10.0}, {"step": 1, "train/loss": 2.0, "data/bad_shards": 0.0},
            {"step": 2, "train/loss": 1.5, "ckpt/save_s": 0.1}]
    if with_eval:
        recs += [{"step": 1, "eval/ctr/auc": auc - 0.1}, {"step": 2, "eval/ctr/auc": auc}]
    (rd / "train" / "tb").mkdir(parents=True)
    (rd / "train" / "tb" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return cfg


@pytest.mark.parametrize("with_eval", [True, False])
def test_outputs_tensorboard_runs_hparams_and_plot(tmp_path, with_eval):
    from tensorboard.backend.event_processing import event_multiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    from ckf_dist.sweep.run import write_outputs

    p = _grid(tmp_path, "config: configs/quickstart.yaml\nseeds: [0, 1]\noverrides: [train.steps=2]\n"
                        "variants:\n  ckf: {}\n  collm: {overrides: [model.mapping=collm], seeds: [0]}\n")
    grid = load_grid(p, out=tmp_path / "sweep")
    trials = grid.trials()
    configs = {t.name: _fake_run(grid, t, 0.6 + 0.1 * i, with_eval) for i, t in enumerate(trials)}
    statuses = {t.name: "done" for t in trials}
    res = write_outputs(grid, trials, statuses, {}, configs)
    out = tmp_path / "sweep"
    saved = json.loads((out / "results.json").read_text())
    assert [t["name"] for t in saved["trials"]] == ["ckf-s0", "ckf-s1", "collm-s0"]
    assert saved["trials"][0]["baselines"]["popularity"]["ctr"]["auc"] == 0.5
    md = (out / "results.md").read_text()
    assert "| ckf | 0.6500 ± 0.0707 (2 seeds) |" in md and "| popularity (baseline) | 0.5000 ± 0.0000 (2 seeds) |" in md
    assert (out / "validation.png").is_file() == with_eval and (res["plot"] is not None) == with_eval
    if not with_eval:
        assert "No validation curve" in md

    mux = event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(out / "tb"))
    mux.Reload()
    assert sorted(mux.Runs()) == ["ckf-s0", "ckf-s1", "collm-s0"]  # named by variant and seed, not "."
    tags = set(mux.Runs()["collm-s0"]["scalars"])
    assert {"test/ctr/auc", "test/ctr/warm/auc", "train/loss", "perf/ckpt_save_s", "train/bad_shards"} <= tags
    assert not any(t.split("/")[0] in ("ckpt", "data", "dist", "model", "mem") for t in tags)
    assert {t.split("/")[0] for t in tags} <= {"eval", "perf", "train", "test"}
    assert mux.Scalars("collm-s0", "test/ctr/auc")[-1].value == pytest.approx(0.8)
    hp = mux.PluginRunToTagToContent("hparams")["collm-s0"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hp)
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["variant"].string_value == "collm" and start.hparams["seed"].number_value == 0
    assert start.hparams["model.mapping"].string_value == "collm" and start.hparams["train.steps"].number_value == 2
    exp = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert "test/ctr/auc" in [m.name.tag for m in exp.metric_infos]

    # a rerun rewrites the runs instead of appending duplicates
    write_outputs(grid, trials, statuses, {}, configs)
    assert len(list((out / "tb" / "ckf-s0").glob("events.out.tfevents.*"))) == 1


def test_logger_files_housekeeping_groups_after_train_eval_perf(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    from ckf_dist.telemetry.logger import MetricsLogger, tb_tag

    assert tb_tag("ckpt/save_s") == "perf/ckpt_save_s" and tb_tag("train/loss") == "train/loss"
    assert tb_tag("model/trainable_params").startswith("train/") and tb_tag("eval/ctr/auc") == "eval/ctr/auc"
    lg = MetricsLogger(tmp_path)
    lg.log(1, {"train/loss": 1.0, "ckpt/save_s": 0.2, "data/bad_shards": 0, "mem/peak_gib": 1.0, "dist/world_size": 1, "eval/ctr/auc": 0.5})
    lg.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {t.split("/")[0] for t in acc.Tags()["scalars"]} == {"train", "perf", "eval"}
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "ckpt/save_s" in rec and "data/bad_shards" in rec  # the JSON-lines twin keeps the logged names


# -------------------------------------------------------------------------------- resources


def test_plan_resources():
    from ckf_dist.sweep.run import plan_resources

    g = load_grid(SMOKE)
    cfgs = [g.resolve(t) for t in g.trials()]
    r = plan_resources(g, cfgs, 4, None, None, None, cores=2, n_gpus=0)
    assert (r.cpus_per_trial, r.gpus_per_trial, r.max_concurrent) == (1.0, 0.0, 2)
    r = plan_resources(g, cfgs, 4, None, None, None, cores=16, n_gpus=1)
    assert (r.gpus_per_trial, r.max_concurrent) == (1.0, 1)
    r = plan_resources(g, cfgs, 4, None, 0.25, None, cores=16, n_gpus=1)
    assert r.max_concurrent == 4
    assert plan_resources(g, cfgs, 4, 2, 0, 3, cores=2, n_gpus=0).max_concurrent == 3  # --max-concurrent wins
    assert plan_resources(g, cfgs, 1, None, None, None, cores=8, n_gpus=0).max_concurrent == 1  # no more than the trials
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        plan_resources(g, cfgs, 4, None, 1, None, cores=2, n_gpus=0)


# ------------------------------------------------------------------------------ integration


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_sweep_runs_on_ray_tune_and_resumes(tmp_path, capsys, monkeypatch):
    """The smoke grid end to end (2 variants x 2 seeds as Ray Tune trials), then a rerun after
    one trial lost its evaluation: only that trial is launched again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", SMOKE, "--out", str(out), "--max-concurrent", "2"]) == 0
    first = capsys.readouterr().out
    assert first.count("[sweep] done") == 4, first
    res = json.loads((out / "results.json").read_text())
    assert [t["status"] for t in res["trials"]] == ["done"] * 4
    assert all(t["metrics"]["ctr"]["n"] > 0 and "popularity" in t["baselines"] for t in res["trials"])
    md = (out / "results.md").read_text()
    assert "| CKF |" in md and "| CoLLM-style |" in md and "| popularity (baseline) |" in md and "| lightgcn (baseline) |" in md
    assert (out / "validation.png").is_file()  # train.eval_every=2 in the smoke grid
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["ckf-s0", "ckf-s1", "collm-s0", "collm-s1"]
    assert (out / "tune").is_dir() and not list((out / "tune").rglob("events.out.tfevents.*"))  # no Tune TB files

    logs = {p.parent.name: p.read_text() for p in out.glob("*/sweep-trial.log")}
    assert len(logs) == 4
    # collm-s1 "was interrupted" during its evaluation
    for name in ("metrics.json", "metrics.md"):
        (out / "collm-s1" / name).unlink()
    import shutil

    shutil.rmtree(out / "collm-s1" / "eval")
    assert main(["sweep", "--grid", SMOKE, "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "3 done, 1 to run" in second and second.count("[sweep] start") == 1 and "start  collm-s1" in second
    for name, text in logs.items():
        now = (out / name / "sweep-trial.log").read_text()
        assert (now == text) == (name != "collm-s1"), name  # finished trials were not relaunched
    assert (out / "collm-s1" / "metrics.json").is_file()
    assert [t["status"] for t in json.loads((out / "results.json").read_text())["trials"]] == ["done"] * 4

    assert main(["sweep", "--grid", SMOKE, "--out", str(out), "--dry-run"]) == 0
    assert "4 done, 0 to run" in capsys.readouterr().out

    # ckf-s0's evaluation stage goes stale (as after a code change): still reported, marked, and due a rerun
    stage = Run(load_config(out / "ckf-s0" / "config.yaml")).eval_stage()
    rec = json.loads(stage.record.read_text())
    stage.record.write_text(json.dumps({**rec, "key": "0" * len(str(rec["key"]))}))
    before = json.loads((out / "results.json").read_text())
    assert main(["sweep", "--grid", SMOKE, "--out", str(out), "--report-only"]) == 0
    assert "3 done, 1 to run" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert [t["status"] for t in res["trials"]] == ["stale", "done", "done", "done"]
    assert res["table"] == before["table"]  # the stale trial's metrics still count
    assert "Stale: ckf-s0 finished with this config" in (out / "results.md").read_text()


def test_select_seeds_and_variants():
    g = load_grid(SMOKE, out="/tmp/x").select(seeds=[3, 4], variants=["collm"])
    assert [t.name for t in g.trials()] == ["collm-s3", "collm-s4"]
    assert g.trials()[0].overrides[-2:] == ["seed=3", "run.dir=/tmp/x/collm-s3"]
    assert [t.name for t in load_grid(SMOKE, out="/tmp/x").select(seeds=[5]).trials()] == ["ckf-s5", "collm-s5"]
    with pytest.raises(GridError, match="unknown variant 'nope'.*ckf, collm"):
        load_grid(SMOKE).select(variants=["nope"])
    with pytest.raises(GridError, match="--seeds"):
        load_grid(SMOKE).select(seeds=[1, 1])


def test_cli_seeds_and_variants_flags(tmp_path, capsys):
    assert main(["sweep", "--grid", SMOKE, "--out", str(tmp_path / "s"), "--seeds", "7,8", "--variants", "ckf", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out and "ckf-s7" in out and "ckf-s8" in out and "collm" not in out.split("folder")[1]
    assert main(["sweep", "--grid", SMOKE, "--seeds", "a,b", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--seeds" in err and len(err.splitlines()) == 1


def test_trial_status_ignores_the_cache_folder_but_not_a_real_change(tmp_path):
    """A trial finished before the sweep set run.cache_dir stays done; another train.steps is a change."""
    from ckf_dist.sweep.grid import trial_status

    old = load_config("configs/quickstart.yaml", [f"run.dir={tmp_path / 't'}"])
    save_config(old, Run(old).config_file)
    assert trial_status(old, check_stages=False) == "partial"
    Run(old).metrics_file().write_text("{}")
    with_cache = load_config("configs/quickstart.yaml", [f"run.dir={tmp_path / 't'}", f"run.cache_dir={tmp_path / 'c'}"])
    assert trial_status(with_cache, check_stages=False) == "done"
    other = load_config("configs/quickstart.yaml", [f"run.dir={tmp_path / 't'}", "train.steps=7"])
    assert trial_status(other, check_stages=False) == "changed"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_grid_resolves(path):
    """Every trial of every shipped grid is a valid config (a grid that sets a key its base config's
    other settings refuse fails here, not hours into a sweep)."""
    g = load_grid(str(path))
    for t in g.trials():
        g.resolve(t)
