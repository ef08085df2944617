"""Collator: label masking, right padding, index tensors, truncation, the text-only twin."""

import math

import pytest
import torch

from ckf_dist.config import ALL_TASKS
from ckf_dist.data.collate import Collator, target_token_ids
from ckf_dist.models.llm import load_llm

PH = "<|cf|>"


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_llm(tiny_dir, PH)[1]


def _collator(tok, cfg, **kw):
    return Collator(tok, cfg, tok.convert_tokens_to_ids(PH), **kw)


def test_layout_labels_and_padding(tok, config, samples):
    cfg = config()
    cfg.train.curriculum = False
    batch = _collator(tok, cfg)(samples)
    pid = tok.convert_tokens_to_ids(PH)
    b = len(samples)
    ids, mask, labels, plen = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["prompt_lengths"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == b
    assert "text_input_ids" not in batch
    for r, s in enumerate(samples):
        prompt = tok(s["prompt"])["input_ids"]
        target = target_token_ids(tok, s["target"]) + [tok.eos_token_id]
        n = len(prompt) + len(target)
        assert plen[r] == len(prompt)
        assert ids[r, :n].tolist() == prompt + target
        assert mask[r].tolist() == [1] * n + [0] * (ids.shape[1] - n)  # right padding
        assert labels[r].tolist() == [-100] * len(prompt) + target + [-100] * (ids.shape[1] - n)
        assert (ids[r, n:] == tok.pad_token_id).all()
        assert ids[r, : len(prompt)].tolist().count(pid) == 1 + len(s["items"])
    assert batch["task_ids"].tolist() == [ALL_TASKS.index(s["task"]) for s in samples]
    assert batch["user_ids"].tolist() == [s["user"] for s in samples]
    assert batch["item_ids"].tolist() == [i for s in samples for i in s["items"]]
    assert batch["item_rows"].tolist() == [r for r, s in enumerate(samples) for _ in s["items"]]
    assert batch["keys"] == [s["key"] for s in samples] and batch["truncated"] == 0
    h = max(len(s["history"]) for s in samples)
    assert batch["history_ids"].shape == batch["history_mask"].shape == (b, h)
    for r, s in enumerate(samples):
        k = len(s["history"])
        assert batch["history_ids"][r, :k].tolist() == s["history"] and batch["history_mask"][r].sum() == k
    for r, s in enumerate(samples):
        v = batch["label"][r].item()
        assert (math.isnan(v) and s["label"] is None) or v == s["label"]


def test_text_twin_and_text_only_baseline(tok, config, samples):
    cfg = config()
    assert cfg.train.curriculum
    batch = _collator(tok, cfg)(samples)
    pid = tok.convert_tokens_to_ids(PH)
    assert (batch["text_input_ids"] != pid).all()
    for r, s in enumerate(samples):
        p = tok(s["prompt_text"])["input_ids"]
        assert batch["text_prompt_lengths"][r] == len(p)
        assert batch["text_input_ids"][r, : len(p)].tolist() == p
    assert torch.equal(batch["labels"][batch["labels"] != -100], batch["text_labels"][batch["text_labels"] != -100])
    assert "text_input_ids" not in _collator(tok, cfg, text_twin=False)(samples)
    cfg.model.cf_fusion = False  # the baseline: main fields are the twin, no placeholders
    base = _collator(tok, cfg)(samples)
    assert "text_input_ids" not in base
    assert torch.equal(base["input_ids"], batch["text_input_ids"])


def test_truncation_keeps_target_and_placeholders(tok, config, sample):
    s = sample("topk", user=1, n=3)
    s["history"] = list(range(20))
    s["prompt"] = s["prompt"].replace("The user liked these items:", "The user liked these items: " + "guitar string " * 60)
    cfg = config()
    cfg.train.curriculum = False
    full = len(tok(s["prompt"])["input_ids"])
    target = target_token_ids(tok, s["target"]) + [tok.eos_token_id]
    cfg.model.max_length = full + len(target) - 50
    batch = _collator(tok, cfg)([s])
    assert batch["truncated"] == 1 and batch["input_ids"].shape[1] == cfg.model.max_length
    row = batch["input_ids"][0].tolist()
    pid = tok.convert_tokens_to_ids(PH)
    assert row.count(pid) == 1 + len(s["items"])
    assert row[-len(target):] == target and batch["labels"][0, -len(target):].tolist() == target
    assert row[0] == tok.bos_token_id
    prompt = tok(s["prompt"])["input_ids"]
    assert row[: batch["prompt_lengths"][0]][-40:] == prompt[-40:]  # the end of the prompt is kept
    text = tok.decode(row[: batch["prompt_lengths"][0]])
    assert "Which of these candidate items will the user choose next? Candidates:" in text  # the question too
    assert text.startswith("<s>The user's preferences are encoded in <|cf|>. The user liked")  # and the head
    assert text.count("guitar string") < 60  # the history text is what was cut
    cfg.model.max_length = 60  # cannot fit without cutting a placeholder
    with pytest.raises(ValueError, match=r"sample train/topk/1/3: .*max_length=60") as e:
        _collator(tok, cfg)([s])
    assert "\n" not in str(e.value)


def test_bad_samples_fail_clearly(tok, config, sample):
    cfg = config()
    s = sample("ctr", user=2)
    s["items"] = s["items"] + [5]
    with pytest.raises(ValueError, match=r"sample train/ctr/2/0: 2 placeholder tokens in the prompt, expected 3"):
        _collator(tok, cfg)([s])
    s = sample("ctr", user=2)
    s["prompt_text"] += PH
    with pytest.raises(ValueError, match="prompt_text contains the placeholder"):
        _collator(tok, cfg)([s])
    with pytest.raises(ValueError, match="encodes to"):
        Collator(tok, cfg, placeholder_id=tok.eos_token_id)


def test_cross_fit_points_each_row_at_the_fold_that_never_saw_its_answer(tok, config, samples):
    """With cf.cross_fit = K the training collator moves a row's user, item and history ids into block
    1 + f of the stacked tables (f: the fold of the row's target interaction); evaluation's does not."""
    from ckf_dist.data.folds import interaction_folds

    cfg = config()
    u_n = 1 + max(max([s["user"]] + s["history"] + s["items"]) for s in samples)
    i_n = u_n
    plain = _collator(tok, cfg, num_users=u_n, num_items=i_n)(samples)
    batch = _collator(tok, cfg, num_users=u_n, num_items=i_n, cross_fit=3)(samples)
    targets = [s["candidates"][s["answer"]] if s["task"] == "topk" else s["items"][0] for s in samples]
    block = interaction_folds([s["user"] for s in samples], targets, 3) + 1
    assert set(block.tolist()) != {1}  # the rows span several folds: the test tells folds apart
    assert batch["user_ids"].tolist() == [s["user"] + b * u_n for s, b in zip(samples, block)]
    assert batch["item_ids"].tolist() == [i + b * i_n for s, b in zip(samples, block) for i in s["items"]]
    for r, (s, b) in enumerate(zip(samples, block)):
        k = len(s["history"])
        assert batch["history_ids"][r, :k].tolist() == [h + b * i_n for h in s["history"]]
    # everything else is the plain batch
    for key in ("input_ids", "labels", "cf_slots", "history_mask", "item_rows"):
        assert torch.equal(batch[key], plain[key])
    with pytest.raises(ValueError, match="CF table sizes"):
        _collator(tok, cfg, cross_fit=3)
