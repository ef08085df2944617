"""``ckf bench e2e`` data side: the recipe's data pipeline alone, and the batching diagnosis.

``measure_data_pipeline``: TrainStream + Collator through the recipe's DataLoader, no model.
``diagnose_batching``: one step without the DataLoader on the same samples batched three ways,
for ckf_dist's model and for the PEFT step (separates the cost of mixed-batch padding from the
cost of the step itself).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ckf_dist.bench.common import batch_tokens, load_avg
from ckf_dist.bench.e2e_peft import collate_text, encode_text, peft_config
from ckf_dist.config import Config
from ckf_dist.run import Run

def measure_data_pipeline(cfg: Config, n_batches: int, workers: int, warmup: int = 3) -> dict[str, Any]:
    """The recipe's TrainStream + Collator through its DataLoader, without a model."""
    from ckf_dist.data.shards import load_manifest, shard_urls
    from ckf_dist.models.factory import make_collator
    from ckf_dist.models.llm import load_llm
    from ckf_dist.data.stream import TrainStream, train_loader

    run = Run(cfg)
    shard_dir = run.shards_dir
    _, tok = load_llm(run.model_dir, cfg.model.placeholder_token)
    collator = make_collator(cfg, tok)
    n_shards = len(load_manifest(shard_dir)["splits"]["train"]["shards"])
    workers = min(workers, max(1, n_shards)) if workers else 0
    stream = TrainStream(shard_urls(shard_dir, "train"), cfg, collator, 0, 1, workers)
    it = iter(train_loader(stream))
    for _ in range(warmup):
        next(it)
    tokens = samples = padded = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
        nz, slots = batch_tokens(b)
        tokens += nz
        padded += slots
        samples += len(b["keys"])
    wall = time.perf_counter() - t0
    # What one batch costs the consumer when the loader is ahead (the trainer's data wait when
    # the pipeline is not the bottleneck): main-thread CPU and wall time of next() after a pause.
    cpu_ms, wall_ms = [], []
    for _ in range(12):
        time.sleep(0.05)
        c, t = time.thread_time(), time.perf_counter()
        next(it)
        cpu_ms.append((time.thread_time() - c) * 1e3)
        wall_ms.append((time.perf_counter() - t) * 1e3)
    del it
    return {"tokens_per_s": tokens / wall, "samples_per_s": samples / wall, "tokens_per_s_per_worker": tokens / wall,
            "data_wait_frac": None, "step_s": wall / n_batches, "windows": n_batches, "loader_workers": workers,
            "pad_efficiency": tokens / max(1, padded), "load_avg_1m": load_avg(), "next_cpu_ms": statistics.median(cpu_ms),
            "next_wall_ms": statistics.median(wall_ms)}


# ------------------------------------------------------------------------------------------------
# Diagnosis: where the recipe's step loses to the per-task loop (padding of mixed batches)
# ------------------------------------------------------------------------------------------------


def diagnose_batching(cfg: Config, n_batches: int = 30, warmup: int = 3) -> list[dict]:
    """Step throughput without the DataLoader, on the same samples batched three ways.

    ckf_dist's model + LocalEngine (the recipe's step, twin included when configured) on: mixed
    batches in stream order (what the recipe trains on), single-task batches (what the per-task
    loop trains on) and mixed batches grouped by prompt length; and the PEFT single-adapter step on
    the single-task and the mixed text batches. Every variant batches the same pool of samples
    (single-task batching drops each task's last partial batch).
    """
    import random

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ckf_dist.data.shards import read_split
    from ckf_dist.models.factory import build_ckf_model
    from ckf_dist.data.stream import sample_length
    from ckf_dist.train.engine import LocalEngine

    run = Run(cfg)
    torch.manual_seed(cfg.seed)
    mb = cfg.train.micro_batch_size
    samples = [s for s in read_split(run.shards_dir, "train") if s["task"] in cfg.tasks]
    random.Random(cfg.seed).shuffle(samples)
    pool = samples[: (n_batches + warmup) * mb]

    def chunks(rows: list[dict]) -> list[list[dict]]:
        return [rows[i:i + mb] for i in range(0, len(rows) - mb + 1, mb)]

    by_task: dict[str, list[dict]] = {}
    for s in pool:
        by_task.setdefault(s["task"], []).append(s)
    groups = {
        "mixed (stream order)": chunks(pool),
        "single-task": [c for rows in by_task.values() for c in chunks(rows)],
        "mixed, length-grouped": chunks(sorted(pool, key=sample_length)),
    }
    random.Random(cfg.seed + 1).shuffle(groups["single-task"])
    random.Random(cfg.seed + 2).shuffle(groups["mixed, length-grouped"])

    def pad_eff(batches) -> float:
        counts = [batch_tokens(b) for b in batches]
        return sum(c[0] for c in counts) / max(1, sum(c[1] for c in counts))

    built = build_ckf_model(cfg, run.model_dir, run.cf_table(), mode_path=run.mode_file)
    model, tok, collator = built.model, built.tokenizer, built.collator
    engine = LocalEngine(model, cfg)
    model.train()
    total = cfg.train.steps

    def ckf_step(b):
        o = model(b, step=total // 2, total_steps=total)
        engine.backward(o.loss)
        engine.step()
        float(o.loss.detach())

    def ckf_tokens(b):
        return batch_tokens(b)[0]

    hf = AutoModelForCausalLM.from_pretrained(run.model_dir, local_files_only=True, dtype=torch.float32)
    peft_model = get_peft_model(hf, peft_config(cfg), adapter_name="bench")
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")

    def peft_step(b):
        o = peft_model(**b, use_cache=False)
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(o.loss.detach())

    def peft_tokens(b):
        return batch_tokens(b)[0]  # text batches: attention_mask only

    variants = [("ckf_dist step", name, ckf_step, ckf_tokens, [collator(c) for c in rows]) for name, rows in groups.items()]
    variants += [("HF + PEFT step", name, peft_step, peft_tokens,
                  [collate_text(encode_text(tok, c, int(cfg.model.max_length)), pad) for c in groups[name]])
                 for name in ("single-task", "mixed (stream order)")]
    # Interleaved step by step, so a change of machine load hits every variant alike.
    for _, _, step, _, batches in variants:
        for b in batches[:warmup]:
            step(b)
    acc = [[0.0, 0, 0, 0] for _ in variants]  # seconds, tokens, samples, steps
    for i in range(warmup, max(len(v[4]) for v in variants)):
        for k, (_, _, step, count, batches) in enumerate(variants):
            if i < len(batches):
                t0 = time.perf_counter()
                step(batches[i])
                acc[k][0] += time.perf_counter() - t0
                acc[k][1] += count(batches[i])
                acc[k][2] += int(batches[i]["attention_mask"].shape[0])
                acc[k][3] += 1
    return [{"model": m, "batches": name, "tokens_per_s": a[1] / a[0], "samples_per_s": a[2] / a[0],
             "step_s": a[0] / max(1, a[3]), "steps": a[3], "pad_efficiency": pad_eff(batches)}
            for (m, name, _, _, batches), a in zip(variants, acc)]


