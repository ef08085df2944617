"""run.cache_dir: runs with the same inputs train the CF tables and pre-train the embedded LLM once and copy them."""

import json

import pytest

from ckf_dist import pipeline
from ckf_dist.config import load_config
from ckf_dist.fsutil import verify_manifest
from ckf_dist.run import Run

SMALL = [
    "data.synthetic.num_users=30", "data.synthetic.num_items=20", "data.samples_per_user=1",
    "data.topk_candidates=4", "data.history_len=4", "cf.dim=8",
    "tiny.pretrain_steps=3", "tiny.prompt_texts=20", "tiny.hidden_size=32", "tiny.intermediate_size=64",
    "tiny.num_layers=1", "tiny.vocab_size=600",
]


def _run(tmp_path, name: str, *extra: str) -> Run:
    cfg = load_config("configs/quickstart.yaml", [*SMALL, f"run.dir={tmp_path / name}",
                                                  f"run.cache_dir={tmp_path / 'cache'}", *extra])
    return Run(cfg)


def _entry(run: Run, stage: str = "llm"):
    return run.stage_cache_entry(run.llm_stage() if stage == "llm" else run.cf_stage())


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "stage.json"}


@pytest.fixture
def pretrainings(monkeypatch):
    """Count the pre-trainings ensure_tiny starts."""
    calls = []
    real = pipeline.init_tiny

    def counted(texts, cfg, out):
        calls.append(str(out))
        return real(texts, cfg, out)

    monkeypatch.setattr(pipeline, "init_tiny", counted)
    return calls


def test_second_run_copies_the_first_runs_pretraining(tmp_path, pretrainings):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    pipeline.ensure_tiny(a)
    entry = _entry(a)
    assert entry is not None and entry.parent.parent == tmp_path / "cache"
    assert verify_manifest(entry) is None
    pipeline.ensure_tiny(b)
    assert len(pretrainings) == 1  # b copied
    assert _entry(b) == entry
    assert _files(b.llm_dir) == _files(a.llm_dir) and _files(a.llm_dir)
    assert b.llm_stage().fresh() and b.llm_stage().output() == a.llm_stage().output()
    assert json.loads((b.llm_dir / "ckf_tiny.json").read_text())["steps"] == 3


def test_another_seed_or_tiny_setting_gets_its_own_entry(tmp_path, pretrainings):
    a = _run(tmp_path, "a")
    pipeline.ensure_tiny(a)
    for name, extra in (("s1", "seed=1"), ("steps", "tiny.pretrain_steps=2")):
        r = _run(tmp_path, name, extra)
        pipeline.ensure_tiny(r)
        assert _entry(r) != _entry(a)
    assert len(pretrainings) == 3
    assert len([p for p in (tmp_path / "cache" / "llm").iterdir() if p.is_dir()]) == 3


def test_a_damaged_entry_is_pretrained_again_and_repaired(tmp_path, pretrainings, caplog):
    a = _run(tmp_path, "a")
    pipeline.ensure_tiny(a)
    entry = _entry(a)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    c = _run(tmp_path, "c")
    with caplog.at_level("WARNING"):
        pipeline.ensure_tiny(c)
    assert len(pretrainings) == 2 and "model.safetensors" in caplog.text
    assert verify_manifest(entry) is None
    model = lambda d: {k: v for k, v in _files(d).items() if k != "ckf_tiny.json"}  # that one records seconds
    assert model(c.llm_dir) == model(a.llm_dir)  # the same seed and inputs give the same model


def test_without_cache_dir_nothing_is_shared(tmp_path, pretrainings):
    cfg = load_config("configs/quickstart.yaml", [*SMALL, f"run.dir={tmp_path / 'a'}"])
    r = Run(cfg)
    assert _entry(r) is None
    pipeline.ensure_tiny(r)
    assert len(pretrainings) == 1 and not (tmp_path / "cache").exists()


def test_a_run_built_before_the_cache_was_set_shares_its_model(tmp_path, pretrainings):
    cfg = load_config("configs/quickstart.yaml", [*SMALL, f"run.dir={tmp_path / 'a'}"])
    pipeline.ensure_tiny(Run(cfg))
    a = _run(tmp_path, "a")  # the same run dir, now with run.cache_dir
    pipeline.ensure_tiny(a)
    assert len(pretrainings) == 1 and verify_manifest(_entry(a)) is None
    b = _run(tmp_path, "b")
    pipeline.ensure_tiny(b)
    assert len(pretrainings) == 1 and _files(b.llm_dir) == _files(a.llm_dir)


_RACER = """
import sys
from ckf_dist import pipeline
from ckf_dist.config import load_config
from ckf_dist.run import Run
calls = []
real = pipeline.init_tiny
pipeline.init_tiny = lambda *a: (calls.append(1), real(*a))[1]
pipeline.ensure_tiny(Run(load_config("configs/quickstart.yaml", sys.argv[1:])))
print("PRETRAINED", len(calls))
"""


def test_concurrent_runs_pretrain_once(tmp_path):
    """Two processes with the same inputs start together: one pre-trains, the other waits on the
    entry's lock and copies."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, *SMALL, f"run.dir={tmp_path / n}",
                               f"run.cache_dir={tmp_path / 'cache'}"], stdout=subprocess.PIPE, text=True, env=env)
             for n in ("a", "b")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    counts = sorted(int(line.split()[1]) for o in outs for line in o.splitlines() if line.startswith("PRETRAINED"))
    assert counts == [0, 1], outs
    assert _files(tmp_path / "a" / "llm") == _files(tmp_path / "b" / "llm")


# ------------------------------------------------------------------------------------------------ CF


@pytest.fixture
def cf_trainings(monkeypatch):
    """Count the CF models the CF stage trains."""
    calls = []
    real = pipeline.train_cf

    def counted(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_cf", counted)
    return calls


CF = ["cf.baselines=[mf,sasrec]", "cf.epochs=2"]


def test_cf_tables_are_trained_once_and_copied(tmp_path, cf_trainings):
    a, b = _run(tmp_path, "a", *CF), _run(tmp_path, "b", *CF)
    summary_a = pipeline.train_cf_stage(a)
    entry = _entry(a, "cf")
    assert entry is not None and entry.parent == tmp_path / "cache" / "cf" and verify_manifest(entry) is None
    summary_b = pipeline.train_cf_stage(b)
    assert cf_trainings == ["mf", "sasrec"]  # b copied both
    assert _entry(b, "cf") == entry
    assert _files(b.cf_dir) == _files(a.cf_dir) and (b.cf_dir / "sasrec.safetensors").is_file()
    assert b.cf_stage().output() == a.cf_stage().output() and b.cf_stage().fresh()
    assert summary_b["table"] == summary_a["table"] and "mf" in summary_b["table"]
    assert summary_b["backbone"] == str(b.cf_table())  # the run's own path, not the builder's
    pipeline.train_cf_stage(_run(tmp_path, "s1", *CF, "seed=1"))
    assert cf_trainings == ["mf", "sasrec"] * 2  # another seed: another entry


def test_cf_lineage_is_the_same_for_two_independent_builds(tmp_path):
    """Without a cache: equal inputs give byte-equal tables (no timings in them, the sequential
    model's dropout seeded), so the stages downstream see the same lineage."""
    runs = [Run(load_config("configs/quickstart.yaml", [*SMALL, *CF, f"run.dir={tmp_path / n}"])) for n in "ab"]
    for r in runs:
        pipeline.train_cf_stage(r)
    a, b = runs
    assert a.cf_stage().output() == b.cf_stage().output()
    assert all(_files(a.cf_dir)[n] == _files(b.cf_dir)[n] for n in ("mf.safetensors", "sasrec.safetensors"))
