"""Helpers of the CKF model tests: hand-built samples, configs (the fixtures are in conftest.py).

A module of its own name, not conftest: ``from conftest import ...`` resolves to whichever
directory's conftest pytest imported last, and fails when several test folders are collected.

Samples are built by hand here (the schema of ckf_dist/data/samples.py) so these tests depend on
the model code only. Placeholders: first = user, then the items in order.
"""

import random

from ckf_dist.config import Config

PH = "<|cf|>"
WORDS = ("guitar string bright warm cable pedal tuner strap amp loud quiet cheap great solid noisy "
         "classic story toy matrix love hate sound tone neck fret wood metal drum piano song").split()
NUM_USERS, NUM_ITEMS, CF_DIM = 12, 30, 8


def title(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]}"


def corpus() -> list[str]:
    rng = random.Random(0)
    texts = [title(i) for i in range(NUM_ITEMS)]
    texts += [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(60)]
    texts += ["The user liked these items. Will the user enjoy the item titled? Answer Yes or No. "
              "Which of these candidate items will the user choose next? rating from 1 to 5."] * 5
    return texts


def small_config(**model_kw) -> Config:
    cfg = Config()
    cfg.tiny.vocab_size = 400
    cfg.tiny.hidden_size = 32
    cfg.tiny.num_layers = 2
    cfg.tiny.num_heads = 4
    cfg.tiny.intermediate_size = 48
    cfg.tiny.pretrain_steps = 3
    cfg.tiny.pretrain_batch_size = 4
    cfg.model.meta_hidden = 12
    cfg.model.max_length = 256
    for k, v in model_kw.items():
        setattr(cfg.model, k, v)
    cfg.lora.shared.r, cfg.lora.shared.alpha, cfg.lora.shared.dropout = 4, 8.0, 0.0
    cfg.lora.task.r, cfg.lora.task.alpha, cfg.lora.task.dropout = 2, 4.0, 0.0
    cfg.kernels.backend = "torch"
    return cfg


def _quoted(ids):
    return ", ".join(f'"{title(i)}"' for i in ids)


def make_sample(task: str, user: int, n: int = 0, ncand: int = 4, key=None) -> dict:
    """One schema-conformant sample of `task`; n varies history length and items."""
    rng = random.Random(1000 * user + n + len(task))
    history = [rng.randrange(NUM_ITEMS) for _ in range(2 + n % 4)]
    user_cf = f"The user's preferences are encoded in {PH}. "
    hist = f"The user liked these items: {_quoted(history)}. "
    item = rng.randrange(NUM_ITEMS)
    label = None
    candidates, answer = [], -1
    if task == "ctr":
        items = [item]
        body = lambda ph: f'Will the user enjoy the item titled "{title(item)}"{ph}? Answer Yes or No.'
        label = float(n % 2)
        target = "Yes" if label else "No"
    elif task == "topk":
        items = candidates = [(item + 7 * k) % NUM_ITEMS for k in range(ncand)]
        answer = n % ncand
        body = lambda ph: ("Which of these candidate items will the user choose next? Candidates: "
                           + "; ".join(f'"{title(c)}"' + ph for c in items) + ". Answer with the title of one candidate.")
        target = title(items[answer])
    elif task in ("rating", "review_rating"):
        items = [item]
        label = float(1 + n % 5)
        body = lambda ph: f'How would the user rate the item titled "{title(item)}"{ph}? Answer with one digit from 1 to 5.'
        target = str(int(label))
    elif task == "explanation":
        items = [item]
        body = lambda ph: f'In one short sentence, explain what the user thinks of the item titled "{title(item)}"{ph}.'
        target = " ".join(rng.choice(WORDS) for _ in range(3 + n % 3))
    else:
        raise ValueError(task)
    feat = f" with encoded feature {PH}"
    if task == "topk":
        prompt = user_cf + hist + body(f" with encoded feature {PH}")
        prompt_text = hist + body("")
    else:
        prompt = user_cf + hist + body(feat)
        prompt_text = hist + body("")
    return {
        "key": key or f"train/{task}/{user}/{n}", "task": task, "split": "train", "user": user,
        "user_id": f"u{user}", "items": items, "history": history, "prompt": prompt,
        "prompt_text": prompt_text, "target": target, "label": label, "candidates": candidates,
        "answer": answer, "warm": True,
    }


def mixed_samples() -> list[dict]:
    """All five tasks, different lengths, topk with 4 candidate slots."""
    tasks = ["ctr", "topk", "rating", "review_rating", "explanation", "ctr", "topk"]
    return [make_sample(t, user=i % NUM_USERS, n=i) for i, t in enumerate(tasks)]
