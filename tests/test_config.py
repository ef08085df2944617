"""The typed config: YAML + overrides, strict keys and types, one-line errors, resolved copy."""

import re
from pathlib import Path

import pytest
import yaml

from ckf_dist.config import ALL_TASKS, Config, ConfigError, field_docs, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_contract_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "ml100k.yaml", "amazon-mi.yaml"} <= names
    assert any("7b" in n for n in names)


def test_overrides_apply_after_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ndata:\n  history_len: 7\n")
    cfg = load_config(f, ["data.history_len=5", "tasks=[ctr,rating]", "train.lr=2e-4", "model.path=null"])
    assert cfg.seed == 3 and cfg.data.history_len == 5
    assert cfg.tasks == ["ctr", "rating"] and cfg.train.lr == pytest.approx(2e-4)
    assert cfg.model.path is None


def test_int_promotes_to_float_but_not_reverse(tmp_path):
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"key 'train.steps': expected int"):
        load_config(None, ["train.steps=1.5"])


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("data:\n  histroy_len: 3\n", r"c\.yaml: unknown key 'data.histroy_len'"),
        ("data:\n  history_len: ten\n", r"c\.yaml: key 'data.history_len': expected int"),
        ("data:\n  format: feather\n", r"c\.yaml: key 'data.format': 'feather' is not one of"),
        ("tasks: [ctr, ranking]\n", r"c\.yaml: key 'tasks': unknown task 'ranking'"),
        ("model:\n  cf_fusion: 'yes'\n", r"c\.yaml: key 'model.cf_fusion': expected bool"),
        ("data: 3\n", r"c\.yaml: key 'data': expected a mapping"),
        ("data: [\n", r"c\.yaml:\d+: invalid YAML"),
    ],
)
def test_bad_file_is_one_line_error_naming_key_and_file(tmp_path, text, pattern):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(f)
    assert "\n" not in str(e.value)


def test_bad_override_names_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'cf.dimm'"):
        load_config(None, ["cf.dimm=8"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["cf.dim"])


def test_missing_file_and_missing_data_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"key 'data.path': required"):
        load_config(None, ["data.format=movielens-100k"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["seed=7", "lora.task.r=4", "dist.deepspeed_overrides={a: 1}"])
    p = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(p)
    assert again == cfg
    assert yaml.safe_load(p.read_text())["lora"]["task"]["r"] == 4


def test_fingerprint_tracks_sections():
    a, b = Config(), Config()
    b.train.lr = 0.5
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_every_field_documented():
    docs = field_docs()
    assert "data.history_len" in docs and "lora.shared.r" in docs and "dist.num_workers" in docs
    assert all(docs.values()), [k for k, v in docs.items() if not v]
    assert Config().tasks == list(ALL_TASKS)


def test_moved_keys_name_their_new_place(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("train:\n  data_workers: 2\n")
    with pytest.raises(ConfigError, match=r"old.yaml: key 'train.data_workers' is now 'loader.workers'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"command line: key 'train.length_group' is now 'loader.length_group'"):
        load_config(None, ["train.length_group=4"])
    assert load_config(None, ["loader.workers=3"]).loader.workers == 3


@pytest.mark.parametrize("override, key", [
    ("loader.workers=-1", "loader.workers"), ("loader.length_group=-2", "loader.length_group"),
    ("data.split_fractions=[0.5,0.5]", "data.split_fractions"), ("dist.zero_stage=4", "dist.zero_stage"),
    ("lora.task.r=0", "lora.task.r"), ("eval.task_caps={nope: 3}", "eval.task_caps.nope"),
    ("cf.baselines=[svd]", "cf.baselines"), ("cf.cross_fit=1", "cf.cross_fit"), ("cf.cross_fit=-2", "cf.cross_fit"),
    ("train.user_token_dropout=1.0", "train.user_token_dropout"), ("train.item_first_until=1.0", "train.item_first_until"),
])
def test_each_section_checks_its_fields(override, key):
    with pytest.raises(ConfigError, match=rf"command line: key '{re.escape(key)}': "):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("train.log_every=0", "train.log_every"), ("train.save_every=0", "train.save_every"),
    ("eval.batch_size=0", "eval.batch_size"), ("cf.batch_size=0", "cf.batch_size"),
    ("lora.shared.dropout=1.5", "lora.shared.dropout"), ("train.lr=.nan", "train.lr"), ("train.lr=.inf", "train.lr"),
    ("model.max_length=4", "model.max_length"), ("tiny.num_heads=3", "tiny.hidden_size"),
    ("task_mix={ctr: 0, topk: 0, rating: 0, review_rating: 0, explanation: 0}", "task_mix"),
    ("task_mix={ctr: -1}", "task_mix.ctr"), ("eval.ks=[0]", "eval.ks"), ("cf.weight_decays=[.nan]", "cf.weight_decays"),
])
def test_values_that_would_crash_later_fail_up_front(override, key):
    """Each of these used to pass validation and crash (or hang) after data, CF and LLM stages ran."""
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}'"):
        load_config(str(ROOT / "configs" / "quickstart.yaml"), [override])


@pytest.mark.parametrize("overrides, says", [
    (["cf.cross_fit=3", "cf.model=sasrec"], "sasrec encodes histories"),
    (["cf.cross_fit=3", "model.mapping=binllm"], "model.mapping=binllm reads the full model"),
    (["cf.cross_fit=3", "model.mapping=allmrec"], "model.mapping=allmrec reads the full model"),
])
def test_cross_fit_refuses_what_has_no_out_of_fold_tables(overrides, says):
    with pytest.raises(ConfigError, match=rf"key 'cf.cross_fit': .*{re.escape(says)}"):
        load_config(None, overrides)
    assert load_config(None, ["cf.cross_fit=3", "model.mapping=collm"]).cf.cross_fit == 3


def test_run_dir_on_a_file_fails_up_front(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    for d in (f, f / "sub"):
        with pytest.raises(ConfigError, match=rf"key 'run.dir': {re.escape(str(f))} is a file"):
            load_config(str(ROOT / "configs" / "quickstart.yaml"), [f"run.dir={d}"])


@pytest.mark.parametrize("overrides, pattern", [
    (["model.mapping=cora", "model.cf_fusion=false"], r"key 'model.cf_fusion': false is the text-only baseline, which has no cora"),
    (["model.binllm_bits=0"], r"key 'model.binllm_bits': invalid value 0"),
    (["model.allmrec_dim=0"], r"key 'model.allmrec_dim'"),
    (["cf.model=gru4rec"], r"key 'cf.model': 'gru4rec' is not one of mf, lightgcn, sasrec, din"),
    (["cf.baselines=[mf,gru4rec]"], r"key 'cf.baselines': unknown model 'gru4rec' \(mf, lightgcn, sasrec, din\)"),
    (["cf.dim=10", "cf.sasrec_heads=4"], r"key 'cf.sasrec_heads': invalid value 4"),
    (["cf.seq_dropout=1.0"], r"key 'cf.seq_dropout'"),
])
def test_mode_and_backbone_keys_are_checked(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


@pytest.mark.parametrize("mapping, prompt, adapters, curriculum", [
    ("ckf", "cf", "multi", True), ("collm", "cf", "shared", True), ("binllm", "codes", "shared", True),
    ("cora", "text", "row", False), ("allmrec", "cf", "none", False)])
def test_what_each_mapping_reads_and_trains(mapping, prompt, adapters, curriculum):
    cfg = load_config(None, [f"model.mapping={mapping}"])
    assert (cfg.model.prompt_kind(), cfg.model.adapter_kind(), cfg.curriculum_on()) == (prompt, adapters, curriculum)
    assert cfg.model.needs_mode_stage() == (mapping in ("binllm", "allmrec"))
    assert load_config(None, ["model.cf_fusion=false"]).model.prompt_kind() == "text"


def test_a_dotted_override_changes_one_entry_of_a_mapping_field():
    """`task_mix.topk=1.5` keeps the config file's other weights; `task_mix={...}` replaces them all."""
    cfg = load_config("configs/ml100k-quality.yaml", ["task_mix.topk=1.5", "eval.task_caps.ctr=7"])
    assert cfg.task_mix == {"ctr": 2.0, "rating": 1.5, "topk": 1.5}
    assert cfg.eval.task_caps == {"topk": 300, "ctr": 7}
    assert load_config("configs/ml100k-quality.yaml", ["task_mix={topk: 1.5}"]).task_mix == {"topk": 1.5}
    with pytest.raises(ConfigError, match="task_mix.topk"):
        load_config("configs/ml100k-quality.yaml", ["task_mix.topk=-1"])
