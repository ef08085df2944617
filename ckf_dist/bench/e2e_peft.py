"""``ckf bench e2e`` baseline: what CKF's reference code does, plain HF + PEFT, one task adapter at a time.

For each task in turn a PEFT ``LoraConfig`` adapter (the union of ``lora.shared.targets`` and
``lora.task.targets``, the same ranks/alpha through ``rank_pattern``) on the same frozen LLM,
micro-batches of that task only, text prompts (``prompt_text`` + target), the plain HF loss.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional, Sequence

import torch

from ckf_dist.bench.common import batch_tokens, load_avg
from ckf_dist.config import Config, ConfigError, load_config
from ckf_dist.run import Run

def steps_per_task(counts: dict[str, int], keep_prob: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` steps over tasks in proportion to count x keep probability (largest remainder),
    at least one step per task with samples."""
    weights = {t: counts.get(t, 0) * keep_prob.get(t, 0.0) for t in keep_prob}
    weights = {t: w for t, w in weights.items() if w > 0}
    if not weights:
        raise ConfigError("bench e2e: no training samples for the configured tasks")
    total = max(total, len(weights))
    s = sum(weights.values())
    raw = {t: total * w / s for t, w in weights.items()}
    out = {t: max(1, int(math.floor(v))) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: raw[t] - math.floor(raw[t]), reverse=True):
        if sum(out.values()) >= total:
            break
        out[t] += 1
    while sum(out.values()) > total:
        t = max(out, key=lambda k: out[k])
        out[t] -= 1
    return out


def peft_config(cfg: Config):
    from peft import LoraConfig

    sh, tk = cfg.lora.shared, cfg.lora.task
    targets = list(dict.fromkeys([*sh.targets, *tk.targets]))
    only_task = [t for t in tk.targets if t not in sh.targets]
    return LoraConfig(
        r=sh.r, lora_alpha=sh.alpha, lora_dropout=sh.dropout, target_modules=targets,
        rank_pattern={t: tk.r for t in only_task}, alpha_pattern={t: tk.alpha for t in only_task},
        bias="none", task_type="CAUSAL_LM",
    )


def encode_text(tok, samples: Sequence[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + EOS) of each sample's text-only prompt; over-long prompts lose their
    oldest tokens after BOS (the history side)."""
    eos = int(tok.eos_token_id)
    p_ids = tok([s["prompt_text"] for s in samples], add_special_tokens=True)["input_ids"]
    t_ids = tok([str(s.get("target") or "") for s in samples], add_special_tokens=False)["input_ids"]
    rows = []
    for p, t in zip(p_ids, t_ids):
        p, t = list(p), list(t) + [eos]
        budget = max(1, max_len - len(t))
        if len(p) > budget:
            p = p[:1] + p[len(p) - budget + 1:]
        rows.append((p, t))
    return rows


def collate_text(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (-100 except on the target), as HF expects."""
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        ids[r, :n] = torch.tensor(p + t)
        mask[r, :n] = 1
        labels[r, len(p):n] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def measure_peft_per_task(cfg: Config, warmup_steps: int) -> dict[str, Any]:
    """The per-task HF + PEFT loop on the same shards and LLM; ``cfg.train.steps`` steps in all."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ckf_dist.data.shards import read_split
    from ckf_dist.train.engine import lr_lambda
    run = Run(cfg)
    torch.manual_seed(cfg.seed)
    mdir = run.model_dir
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(mdir, local_files_only=True, dtype=torch.float32)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    samples = [s for s in read_split(run.shards_dir, "train") if s["task"] in cfg.tasks]

    # Tokenize up front (datasets.map style): text prompt + target + EOS, loss on the target only.
    by_task: dict[str, list[tuple[list[int], list[int]]]] = {}
    for s, row in zip(samples, encode_text(tok, samples, int(cfg.model.max_length))):
        by_task.setdefault(s["task"], []).append(row)
    mix = {t: cfg.task_mix.get(t, 1.0) for t in cfg.tasks}
    top = max(mix.values()) if mix else 1.0
    plan = steps_per_task({t: len(v) for t, v in by_task.items()}, {t: w / top for t, w in mix.items()}, cfg.train.steps)
    mb = cfg.train.micro_batch_size
    rng = torch.Generator().manual_seed(cfg.seed)

    def batches(task: str):
        rows = by_task[task]
        while True:
            order = torch.randperm(len(rows), generator=rng).tolist()
            for i in range(0, len(order) - mb + 1 if len(order) >= mb else 1, mb):
                yield [rows[j] for j in order[i:i + mb]]

    def collate(rows):
        return collate_text(rows, pad)

    lcfg = peft_config(cfg)
    clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    peft_model = None
    step = 0
    tokens = samples_n = 0
    padded = 0
    t_start: Optional[float] = None
    switch_s = 0.0
    for task, n_steps in plan.items():
        t_sw = time.perf_counter()
        if peft_model is None:
            peft_model = get_peft_model(model, lcfg, adapter_name=task)
        else:
            peft_model.add_adapter(task, lcfg)
            peft_model.set_adapter(task)
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
        task_cfg = load_config(None, [f"train.steps={n_steps}", f"train.warmup_frac={cfg.train.warmup_frac}",
                                      f"train.schedule={cfg.train.schedule}"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(task_cfg))
        if t_start is not None:
            switch_s += time.perf_counter() - t_sw
        it = batches(task)
        for _ in range(n_steps):
            batch = collate(next(it))
            out = peft_model(**batch, use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            float(out.loss.detach())
            step += 1
            if step == warmup_steps:
                t_start = time.perf_counter()
            elif step > warmup_steps:
                nz, slots = batch_tokens(batch)
                tokens += nz
                samples_n += int(batch["input_ids"].shape[0])
                padded += slots
    wall = time.perf_counter() - (t_start if t_start is not None else time.perf_counter())
    if step <= warmup_steps or wall <= 0:
        raise ConfigError(f"bench e2e: train.steps={cfg.train.steps} leaves no baseline step after {warmup_steps} warm-up steps")
    return {
        "tokens_per_s": tokens / wall,
        "samples_per_s": samples_n / wall,
        "tokens_per_s_per_worker": tokens / wall,
        "data_wait_frac": None,
        "step_s": wall / (step - warmup_steps),
        "windows": step - warmup_steps,
        "steps_per_task": plan,
        "adapter_switch_s": round(switch_s, 4),
        "load_avg_1m": load_avg(),
        "pad_efficiency": tokens / max(1, padded),
    }


