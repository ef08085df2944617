"""The local training recipe and `ckf train` end to end, on a small synthetic run.

One module-scoped `ckf train` run (reduced budget) serves several assertions; the resume and
failure tests reuse its data, CF tables and tiny LLM through symlinks into fresh run dirs.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from ckf_dist.cli import main
from dist_testutils import clone_run
from ckf_dist.config import ConfigError, load_config

pytestmark = pytest.mark.integration

QUICK = [
    "data.synthetic.num_users=60", "data.synthetic.num_items=40", "data.samples_per_user=1",
    "data.topk_candidates=4", "data.history_len=4",
    "cf.epochs=5", "cf.weight_decays=[0.0001]", "cf.baselines=[mf]",
    "tiny.pretrain_steps=4", "tiny.hidden_size=64", "tiny.intermediate_size=128", "tiny.num_layers=1", "tiny.vocab_size=800",
    "model.max_length=320", "model.meta_hidden=16", "cf.dim=8",
    "lora.shared.r=4", "lora.task.r=4",
    "train.steps=4", "train.micro_batch_size=4", "train.log_every=1", "train.save_every=2", "loader.workers=0",
    "eval.max_samples_per_task=8", "eval.batch_size=8", "eval.max_new_tokens=4",
    "dist.launcher=local", "dist.num_workers=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("quick")
    rc = main(["train", "--config", "configs/quickstart.yaml", f"run.dir={d}", *QUICK])
    assert rc == 0
    return d


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "train" / "tb" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            out[rec["step"]] = rec["train/loss"]
    return out


def test_train_end_to_end_writes_all_five_tasks(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"ctr", "topk", "rating", "review_rating", "explanation", "protocol", "training"}
    assert metrics["protocol"]["split"] == "leave_last" and metrics["protocol"]["ctr_negatives"] == "explicit"
    training = metrics["training"]
    assert training["samples_seen"] > 0 and training["epochs"] == round(training["samples_seen"] / training["samples_per_epoch"], 4)
    auc = metrics["ctr"]["auc"]
    assert metrics["ctr"]["n"] == 8 and (auc is None or 0.0 <= auc <= 1.0)
    assert set(metrics["rating"]) >= {"mae", "rmse", "mae_greedy", "warm", "cold", "new", "n"}
    assert (run / "train" / "final" / "trainable.safetensors").is_file()
    assert (run / "config.yaml").is_file() and (run / "metrics.md").is_file()
    # TensorBoard events exist next to the JSON-lines twin, with per-task losses and throughput
    assert list((run / "train" / "tb").glob("events.out.tfevents.*"))
    recs = [json.loads(x) for x in (run / "train" / "tb" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*recs)
    assert {"perf/tokens_per_s", "perf/data_wait_frac", "train/lr"} <= keys
    # per-task losses for the tasks the (length-grouped, mixed) batches held
    task_keys = {k for k in keys if k.startswith("train/") and k.endswith("/loss") and k != "train/loss"}
    assert task_keys and task_keys <= {f"train/{t}/loss" for t in metrics}
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())


MODES = {"binllm": ["model.mapping=binllm"], "cora": ["model.mapping=cora"], "allmrec": ["model.mapping=allmrec"],
         "sasrec": ["cf.model=sasrec", "cf.baselines=[mf,sasrec]"], "din": ["cf.model=din", "cf.baselines=[mf,din]"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_baseline_mode_trains_and_evaluates_under_the_local_launcher(run, tmp_path, mode):
    """The baseline modes and the sequential backbones through `ckf train`: the mode stage (BinLLM's
    codes, A-LLMRec's alignment) or the backbone's CF stage, a few training steps, the evaluation."""
    backbone = mode in ("sasrec", "din")
    d = clone_run(run, tmp_path / mode, share=("data", "llm") if backbone else ("data", "cf", "llm"))
    # QUICK's data, CF and eval keys: the shared cf/ (and the other tests' run) stays as it is
    overrides = [*QUICK, "train.steps=2", "train.save_every=2", *MODES[mode]]
    assert main(["train", "--config", "configs/quickstart.yaml", f"run.dir={d}", *overrides]) == 0
    losses = _losses(d)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    metrics = json.loads((d / "metrics.json").read_text())
    assert {"ctr", "topk", "rating"} <= set(metrics)
    mode_file = d / "mode" / f"{mode}.safetensors"
    assert mode_file.is_file() == (mode in ("binllm", "allmrec"))
    assert (d / "train" / "final" / "peft").is_dir() == (mode in ("binllm", "sasrec", "din"))  # a frozen LLM has no LoRA
    if backbone:  # trained on the same splits, in the baseline table, the CF source of the run
        baselines = json.loads((d / "cf" / "baselines.json").read_text())["results"]["test"]
        assert mode in baselines and baselines[mode]["ctr"]["n"] == baselines["popularity"]["ctr"]["n"]
        assert (d / "cf" / f"{mode}.safetensors").is_file()


def test_second_train_is_cached(run, caplog):
    stamp = (run / "train" / "stage.json").stat().st_mtime
    with caplog.at_level("INFO", logger="ckf_dist.run"):
        assert main(["train", "--config", "configs/quickstart.yaml", f"run.dir={run}", *QUICK]) == 0
    assert (run / "train" / "stage.json").stat().st_mtime == stamp
    assert "stage train: up to date" in caplog.text


def test_corrupted_shard_during_training_is_skipped_counted_or_fatal(run, tmp_path):
    import shutil

    from ckf_dist.data.shards import shard_urls
    from ckf_dist.train.recipe import CKFRecipe

    d = tmp_path / "corrupt"
    d.mkdir()
    shutil.copytree(run / "data", d / "data")  # a copy: the shards of `run` stay intact
    for sub in ("cf", "llm"):
        os.symlink(run / sub, d / sub)
    with open(shard_urls(d / "data" / "shards", "train")[0], "r+b") as f:
        f.truncate(1500)  # cut mid-member, as an interrupted copy would
    # a DataLoader worker reads the shards: the count travels with the batches
    r = CKFRecipe(load_config("configs/quickstart.yaml", [f"run.dir={d}", *QUICK, "loader.workers=1"]))
    r.setup()
    r.train()
    r.cleanup()
    recs = [json.loads(x) for x in (d / "train" / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert max(x.get("data/bad_shards", 0) for x in recs) >= 1
    assert sorted(_losses(d)) == [1, 2, 3, 4]
    # dist.on_bad_shard=error: the run stops, naming the shard
    shutil.rmtree(d / "train")
    r = CKFRecipe(load_config("configs/quickstart.yaml", [f"run.dir={d}", *QUICK, "dist.on_bad_shard=error"]))
    r.setup()
    with pytest.raises(Exception, match=r"train-\d+\.tar"):
        r.train()
    r.cleanup()


def _recipe(run_dir: Path, *extra: str):
    from ckf_dist.train.recipe import CKFRecipe

    cfg = load_config("configs/quickstart.yaml", [f"run.dir={run_dir}", *QUICK, *extra])
    return CKFRecipe(cfg)


def test_first_steps_deterministic_and_resume_gives_same_next_losses(run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    clone_run(run, a)
    clone_run(run, b)
    r = _recipe(a)
    r.setup()
    r.train()
    r.cleanup()
    full = _losses(a)
    assert full == pytest.approx(_losses(run), rel=1e-6)  # same config, same seed: same first losses

    # b: train 2 steps (checkpoint at 2), then a new process-equivalent recipe resumes to 4
    r = _recipe(b)
    r.setup()
    r.train(stop_at=2)
    r.cleanup()
    r2 = _recipe(b)
    ckpt = r2.latest_checkpoint()
    assert ckpt is not None and ckpt.name == "step-000002"
    r2.setup(resume_from=ckpt)
    assert r2.step == 2
    r2.train()
    r2.cleanup()
    resumed = _losses(b)
    assert resumed[3] == pytest.approx(full[3], rel=1e-5)
    assert resumed[4] == pytest.approx(full[4], rel=1e-5)


def test_non_finite_loss_stops_naming_step_and_keeps_checkpoint(run, tmp_path):
    from ckf_dist.train.recipe import TrainingError

    d = tmp_path / "nan"
    clone_run(run, d)
    r = _recipe(d)
    r.setup()
    with torch.no_grad():
        next(iter(r.model.trainable_parameters())).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss at step 0 \(tasks \[.*\], samples \["):
        r.train()
    r.cleanup()


def test_non_finite_gradient_norm_stops_before_a_nan_checkpoint(run, tmp_path):
    """A finite loss with a non-finite gradient norm (the update it applies is NaN): training stops
    naming the step, and the last checkpoint is the one before, with finite weights."""
    from safetensors.torch import load_file

    from ckf_dist.train.recipe import TrainingError

    d = tmp_path / "nan_grad"
    clone_run(run, d)
    r = _recipe(d, "train.save_every=1", "train.log_every=1")
    r.setup()
    step = r.engine.step

    def poisoned():
        norm = step()
        if r.step == 1:  # the update of step 1: wreck the weights as a NaN gradient would
            with torch.no_grad():
                for p in r.model.trainable_parameters():
                    p.fill_(float("nan"))
            return float("inf")
        return norm

    r.engine.step = poisoned
    with pytest.raises(TrainingError, match=r"non-finite gradient norm at step 1 .*last good checkpoint: .*step-000001"):
        r.train()
    r.cleanup()
    ckpt = r.latest_checkpoint()
    assert ckpt is not None and ckpt.name == "step-000001"
    weights = load_file(str(ckpt / "trainable.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())


def test_tasks_missing_from_shards_fail_before_training(run, tmp_path):
    d = tmp_path / "bad"
    clone_run(run, d)
    from ckf_dist.train.recipe import CKFRecipe

    cfg = load_config("configs/quickstart.yaml", [f"run.dir={d}", *QUICK])
    # the shards hold all five tasks; a table that is too small must be refused
    from ckf_dist.cf.tables import load_cf_tables, save_cf_tables

    t = load_cf_tables(d / "cf" / "mf.safetensors")
    os.unlink(d / "cf")
    (d / "cf").mkdir()
    save_cf_tables(d / "cf" / "mf.safetensors", t.user_emb[:5], t.item_emb[:5], t.user_ids[:5], t.item_ids[:5])
    with pytest.raises(ConfigError, match=r"cf: .*mf\.safetensors: 5 user rows, the split has \d+ users; rerun `ckf cf train`"):
        CKFRecipe(cfg).setup()


def test_recommend_scores_equal_candidate_likelihoods(run):
    from ckf_dist.data.collate import batch_to
    from ckf_dist.eval.serve import load_trained, recommend
    from ckf_dist.run import Run

    cfg = Run.open(str(run))
    user = json.loads((run / "data" / "split" / "meta.json").read_text())["user_ids"][3]
    res = recommend(cfg, user, k=3, candidates=8)
    assert len(res["items"]) == 3 and "explanation" in res
    scores = [it["score"] for it in res["items"]]
    assert scores == sorted(scores, reverse=True)
    # recompute the best item's likelihood independently: its request row with its title as target
    ev = load_trained(cfg)
    titles = json.loads((run / "data" / "split" / "meta.json").read_text())["item_titles"]
    best = res["items"][0]
    item_ids = json.loads((run / "data" / "split" / "meta.json").read_text())["item_ids"]
    i = item_ids.index(best["item"])
    req = next(r for r in res["requests"] if i in r["candidates"])
    batch = batch_to(ev.collator([{**req, "target": titles[i]}]), "cpu")
    n_tokens = int((batch["labels"] != -100).sum())  # title tokens + EOS
    power = cfg.cfg.eval.candidate_length_power  # the score: total log-prob / n ** power
    assert float(ev.model.sequence_logprob(batch)[0]) / n_tokens**power == pytest.approx(best["score"], rel=1e-4)


def test_triton_backend_trains_like_torch(run, tmp_path):
    """kernels.backend=triton (the Triton interpreter on CPU) gives the torch backend's losses over
    three optimizer steps of the real recipe, and its kernels really ran."""
    from ckf_dist.kernels.multi_lora import launch_count

    losses = {}
    for backend in ("torch", "triton"):
        d = tmp_path / backend
        clone_run(run, d)
        r = _recipe(d, f"kernels.backend={backend}", "train.curriculum=false")
        r.setup()
        before = launch_count()
        r.train(stop_at=3)
        r.cleanup()
        launched = launch_count() - before
        assert (launched > 0) == (backend == "triton")
        losses[backend] = _losses(d)
    assert sorted(losses["triton"]) == [1, 2, 3]
    for step, v in losses["torch"].items():
        assert losses["triton"][step] == pytest.approx(v, rel=1e-4)


def test_local_engine_trains_in_train_dtype(run, tmp_path):
    d = tmp_path / "bf16"
    clone_run(run, d)
    r = _recipe(d, "train.dtype=bf16")
    r.setup()
    assert {p.dtype for p in r.model.llm.parameters()} == {torch.bfloat16}
    r.train()
    r.cleanup()
    assert sorted(_losses(d)) == [1, 2, 3, 4] and all(math.isfinite(v) for v in _losses(d).values())


@pytest.mark.parametrize("mode", ["sample", "mix"])
def test_micro_steps_read_nothing_from_the_device_until_a_log_step(run, tmp_path, mode):
    from test_host_sync import SyncCounter

    d = tmp_path / f"sync-{mode}"
    clone_run(run, d)
    r = _recipe(d, "train.grad_accum=2", "train.log_every=2", "train.save_every=100", f"train.curriculum_mode={mode}")
    r.setup()
    micro, checks = [], []

    def counted(fn, into):
        def wrapped(*a, **k):
            with SyncCounter() as c:
                out = fn(*a, **k)
            into.append(c.calls)
            return out
        return wrapped

    r._micro_step = counted(r._micro_step, micro)
    r._check_finite = counted(r._check_finite, checks)
    r.train()
    r.cleanup()
    assert len(micro) == 4 * 2 and all(c == [] for c in micro), micro
    # the losses are read at the two log steps (the final checkpoint's check finds nothing new)
    assert [bool(c) for c in checks] == [True, True, False], checks
    losses = _losses(d)
    assert sorted(losses) == [2, 4] and all(math.isfinite(v) for v in losses.values())


def test_tiny_llm_corpus_is_training_prompts_and_answer_words(run):
    """The embedded LLM reads the language of its prompts: training prompts (text twins), each with an
    answer drawn from its task's answer set (not its label), are in its corpus; nothing from valid/test."""
    from ckf_dist.data.shards import read_split
    from ckf_dist.pipeline import pretraining_texts
    from ckf_dist.run import Run

    r = Run.open(run)
    texts = pretraining_texts(r)
    samples = read_split(r.shards_dir, "train")
    train = {s["prompt_text"]: s for s in samples}
    held_out = {s["prompt_text"] for split in ("valid", "test") for s in read_split(r.shards_dir, split)} - set(train)
    with_prompt = [t for t in texts if any(t.startswith(p) for p in train)]
    assert len(with_prompt) == min(r.cfg.tiny.prompt_texts, len(samples))
    assert not any(t.startswith(p) for t in texts for p in held_out)
    ctr = [(t[len(p):], s) for t in with_prompt for p, s in train.items() if s["task"] == "ctr" and t.startswith(p)]
    assert ctr and all(answer in ("Yes", "No") for answer, _ in ctr)
    # the appended answer is drawn, not the label: some ctr prompts carry the other answer
    assert any(answer != s["target"] for answer, s in ctr)
