"""``ckf bench e2e --device cuda``: the 7B-shape training step, one process, the local engine.

A random-init LLaMA of the 7B shape (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab
32000) in bf16, sequence length 1024, synthetic token batches (no shards), mixed tasks, no
activation checkpointing: tokens/s/GPU and MFU with the LoRA-aware count (4N + attention) and the
6N convention (:func:`ckf_dist.telemetry.logger.flops_per_token`). Imports only torch,
transformers and ckf_dist's model/engine modules (no ray, deepspeed, webdataset). Every device
query goes through :class:`ckf_dist.bench.common.DeviceProbe`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ckf_dist.bench.common import DeviceProbe, utc_date, write_rows
from ckf_dist.bench.e2e_options import E2EOptions
from ckf_dist.config import ALL_TASKS, load_config
from ckf_dist.data.collate import index_fields

TARGET_GPU_TOKENS = 14000
"""Target (one H100, 7B shape, seq 1024): tokens/s/GPU."""

LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, vocab_size=32000)

class SyntheticTokenizer:
    """What ``CKFModel`` reads from a tokenizer when training: the placeholder, EOS and pad ids."""

    def __init__(self, vocab_size: int, placeholder: str):
        self.placeholder = placeholder
        self.placeholder_id = vocab_size - 1
        self.eos_token_id, self.pad_token_id, self.bos_token_id = 2, 0, 1

    def convert_tokens_to_ids(self, token: str) -> Optional[int]:
        return self.placeholder_id if token == self.placeholder else None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        if text != self.placeholder:
            raise ValueError("SyntheticTokenizer only encodes the placeholder token")
        return {"input_ids": [self.placeholder_id]}


def synthetic_batch(b: int, seq: int, vocab: int, placeholder_id: int, *, n_items: int = 10, hist: int = 10,
                    target_len: int = 16, n_users: int = 1000, n_items_table: int = 2000, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """One CKF training batch of random tokens: full-length rows (no padding), row b's task b mod 5,
    a user placeholder at position 1 and ``n_items`` item placeholders, the last ``target_len`` tokens
    as targets (the loss computes logits there only, as in real CKF batches)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, placeholder_id, (b, seq), generator=g)
    item_pos = torch.linspace(2, max(3, seq - target_len - 2), n_items).long()
    ids[:, 1] = placeholder_id
    ids[:, item_pos] = placeholder_id
    labels = torch.full((b, seq), -100, dtype=torch.long)
    labels[:, seq - target_len:] = ids[:, seq - target_len:]
    batch = {
        "keys": [f"synthetic/{i}" for i in range(b)],
        "tasks": [ALL_TASKS[i % len(ALL_TASKS)] for i in range(b)],
        "task_ids": torch.arange(b) % len(ALL_TASKS),
        "user_ids": torch.randint(0, n_users, (b,), generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones((b, seq), dtype=torch.long),
        "labels": labels,
        "item_ids": torch.randint(0, n_items_table, (b * n_items,), generator=g),
        "item_rows": torch.arange(b).repeat_interleave(n_items),
        "history_ids": torch.randint(0, n_items_table, (b, hist), generator=g),
        "history_mask": torch.ones((b, hist), dtype=torch.bool),
    }
    # the collator's precomputed positions, as in real batches (the forward then reads nothing back)
    batch.update(index_fields(batch["input_ids"], labels, batch["item_rows"], placeholder_id))
    batch["padded"] = False
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}



def measure_llm_shape(
    device: str,
    shape: dict = LLAMA_7B,
    seq_len: int = 1024,
    micro_batch: int = 4,
    steps: int = 10,
    warmup: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    target_len: int = 16,
    overrides: Sequence[str] = (),
    probe: Optional[DeviceProbe] = None,
) -> dict[str, Any]:
    """Train steps of CKFModel on a random-init LLaMA of ``shape`` with the local engine; tokens/s and MFU.

    Tensors live on ``device``; timing and memory queries go through ``probe`` (default: the probe
    of ``device``'s kind). On CUDA out-of-memory the micro batch is halved and the measurement retried.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from ckf_dist.telemetry.logger import flops_per_token, peak_flops
    from ckf_dist.models.factory import assemble_ckf_model

    cfg = load_config(None, ["dist.launcher=local", "train.curriculum=false", f"model.max_length={seq_len}",
                             f"train.steps={warmup + steps}", "train.warmup_frac=0", "train.schedule=constant",
                             *overrides])
    dev = torch.device(device)
    probe = probe or DeviceProbe(dev.type)
    lc = LlamaConfig(**shape, max_position_embeddings=max(2048, seq_len), rms_norm_eps=1e-5, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    with dev:
        llm = LlamaForCausalLM._from_config(lc, dtype=dtype)
    tok = SyntheticTokenizer(shape["vocab_size"], cfg.model.placeholder_token)
    n_users, n_items = 1000, 2000
    g = torch.Generator().manual_seed(cfg.seed)
    model = assemble_ckf_model(cfg, llm, tok, torch.randn(n_users, cfg.cf.dim, generator=g), torch.randn(n_items, cfg.cf.dim, generator=g), dev)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    notes: list[str] = []
    mb = micro_batch
    while True:
        try:
            res = _time_steps(model, cfg, tok, shape, dev, probe, seq_len, mb, steps, warmup, target_len, n_users, n_items)
            break
        except torch.cuda.OutOfMemoryError:
            if mb == 1:
                raise
            notes.append(f"out of memory at micro batch {mb}")
            mb //= 2
        for p in model.parameters():
            p.grad = None
        probe.release_cached_memory()
    peak = peak_flops(probe.name()) if probe.cuda else None
    layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
    f_lora = flops_per_token(n_params, layers, hidden, seq_len, True)
    f_6n = flops_per_token(n_params, layers, hidden, seq_len, False)
    tps = res["tokens_per_s"]
    return {
        **res, "micro_batch": mb, "seq_len": seq_len, "dtype": str(dtype).replace("torch.", ""),
        "params": n_params, "trainable_params": n_trainable, "build_s": round(build_s, 1),
        "mfu": tps * f_lora / peak if peak else None, "mfu_6n": tps * f_6n / peak if peak else None,
        "peak_flops": peak, "flops_per_token_lora": f_lora, "flops_per_token_6n": f_6n,
        "backend": model.ctx.backend, "notes": "; ".join(notes),
    }


def _time_steps(model, cfg, tok, shape, dev, probe: DeviceProbe, seq_len, mb, steps, warmup, target_len, n_users,
                n_items) -> dict:
    from ckf_dist.train.engine import LocalEngine

    batches = [synthetic_batch(mb, seq_len, shape["vocab_size"], tok.placeholder_id, target_len=target_len,
                               n_users=n_users, n_items_table=n_items, seed=cfg.seed + i, device=dev) for i in range(2)]
    batch_tokens = [int(b["attention_mask"].sum()) for b in batches]  # outside the timed loop: no sync per step
    engine = LocalEngine(model, cfg)
    model.train()
    probe.reset_peak_memory()
    tokens = 0
    t0 = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            probe.sync()
            t0 = time.perf_counter()
        batch = batches[step % len(batches)]
        out = model(batch, step=step, total_steps=warmup + steps)
        engine.backward(out.loss)
        engine.step()
        if step >= warmup:
            tokens += batch_tokens[step % len(batches)]
    probe.sync()
    wall = time.perf_counter() - t0
    loss = float(out.loss.detach())
    del engine, batches
    return {"tokens_per_s": tokens / wall, "step_s": wall / max(1, steps), "steps": steps, "loss": loss,
            "peak_mem_gib": probe.peak_memory_gib()}


def run_gpu_bench(out_dir: Path, quick: bool, overrides: Sequence[str], opts: E2EOptions, *,
                  shape: dict = LLAMA_7B, place: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """``--device cuda``: the 7B-shape single-process measurement; writes ``e2e_cuda[_quick].{csv,json}``.

    ``shape``, ``place`` (where the tensors live) and ``dtype`` exist for the test that runs this
    path on a tiny shape on the CPU with the CUDA queries mocked; the CLI never changes them.
    """
    probe = DeviceProbe("cuda")
    probe.require("bench e2e")
    seq = int(opts.get("seq_len", 1024))
    steps = int(opts.get("steps", 4 if quick else 10))
    warm = int(opts.get("warmup", 2 if quick else 3))
    mb = int(opts.get("micro_batch", 4))
    meta = dict(device="cuda", device_name=probe.name(), quick=quick, torch=torch.__version__,
                cuda=torch.version.cuda, date=utc_date(), overrides=list(overrides), shape=shape,
                note="random-init LLaMA 7B shape, bf16, synthetic mixed-task batches, no activation checkpointing, "
                     "train.curriculum=false (one path per sample), launcher=local engine (torch AdamW)")
    print(f"e2e bench (7B shape) on {meta['device_name']}", flush=True)
    res = measure_llm_shape(place, shape, seq, mb, steps, warm, dtype, int(opts.get("target_len", 16)), overrides,
                            probe=probe)
    row = {"row": "ckf_local_7b_shape", "launcher": "local", "workers": 1,
           "tokens_per_s": round(res["tokens_per_s"], 1), "tokens_per_s_per_gpu": round(res["tokens_per_s"], 1),
           "mfu": None if res["mfu"] is None else round(res["mfu"], 4),
           "mfu_6n": None if res["mfu_6n"] is None else round(res["mfu_6n"], 4),
           "step_s": round(res["step_s"], 4), "micro_batch": res["micro_batch"], "seq_len": seq,
           "peak_mem_gib": None if res["peak_mem_gib"] is None else round(res["peak_mem_gib"], 2),
           "backend": res["backend"], "notes": res["notes"]}
    summary = {"tokens_per_s_per_gpu": row["tokens_per_s"], "mfu": row["mfu"], "mfu_6n": row["mfu_6n"],
               "target_tokens_per_s": TARGET_GPU_TOKENS, "target_met": res["tokens_per_s"] >= TARGET_GPU_TOKENS}
    print("  ".join(f"{k}={v}" for k, v in row.items()))
    print(f"target >= {TARGET_GPU_TOKENS} tokens/s/GPU: {'met' if summary['target_met'] else 'MISSED'}")
    result = {"meta": meta, "rows": [row], "summary": summary, "raw": res}
    write_rows(out_dir, f"e2e_cuda{'_quick' if quick else ''}", [row], result)
    return result
