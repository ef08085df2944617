"""Shared by the distributed tests: one tiny run's settings, a loopback-only environment, and
a run directory prepared once (data -> CF -> tiny LLM) that each test clones by symlink."""

import json
import os
from pathlib import Path

from ckf_dist.cli import main

ROOT = Path(__file__).resolve().parents[2]


def tiny_run(steps: int = 4, max_failures: int = 0) -> list[str]:
    """Overrides of configs/quickstart.yaml for a 2-worker ZeRO-3 run that takes seconds."""
    return [
        "data.synthetic.num_users=40", "data.synthetic.num_items=30", "data.samples_per_user=1",
        "data.topk_candidates=3", "data.history_len=3", "tasks=[ctr,rating,explanation]",
        "cf.epochs=3", "cf.weight_decays=[0.0001]", "cf.baselines=[mf]", "cf.dim=8",
        "tiny.pretrain_steps=2", "tiny.hidden_size=32", "tiny.intermediate_size=64", "tiny.num_layers=1",
        "tiny.num_heads=2", "tiny.vocab_size=600",
        "model.max_length=256", "model.meta_hidden=8", "lora.shared.r=2", "lora.task.r=2",
        f"train.steps={steps}", "train.micro_batch_size=2", "train.log_every=1", "train.save_every=2",
        "loader.workers=0", "eval.max_samples_per_task=4", "eval.max_new_tokens=2",
        # threshold 0: else the tiny LoRA tensors are never partitioned
        "dist.num_workers=2", "dist.zero_stage=3", "dist.param_persistence_threshold=0", f"dist.max_failures={max_failures}",
    ]


def loopback_env(**extra: str) -> dict:
    """The environment of a subprocess that must talk to 127.0.0.1 only."""
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT), **extra)
    return env


def prepare_run(d: Path, overrides: list[str]) -> Path:
    args = ["--config", "configs/quickstart.yaml", f"run.dir={d}", *overrides]
    assert main(["data", "prepare", *args]) == 0
    assert main(["cf", "train", *args]) == 0
    assert main(["model", "init-tiny", *args]) == 0
    return d


def clone_run(src: Path, dst: Path, share: tuple[str, ...] = ("data", "cf", "llm")) -> Path:
    """A fresh run dir reusing src's data, CF tables and LLM (nothing trained yet); `share` names the
    stage folders reused (a run with another CF backbone must not share cf/: it would rewrite it)."""
    dst.mkdir(parents=True, exist_ok=True)
    for sub in share:
        os.symlink(src / sub, dst / sub)
    return dst


def records(run: Path) -> list[dict]:
    p = run / "train" / "tb" / "metrics.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def shard_tokens(run: Path, overrides: list[str], world_size: int, steps: int) -> int:
    """Non-pad tokens (of the prompt paths each step ran: CF prompt and/or text twin) of the micro-batches that `world_size` ranks take
    from run's shards in `steps` steps, rebuilt from the shards with the run's own tokenizer."""
    from ckf_dist.config import load_config
    from ckf_dist.data.shards import shard_urls
    from ckf_dist.data.collate import Collator
    from ckf_dist.models.llm import load_llm
    from ckf_dist.data.stream import TrainStream, train_loader

    cfg = load_config(str(ROOT / "configs" / "quickstart.yaml"), [f"run.dir={run}", *overrides])
    _, tok = load_llm(run / "llm", cfg.model.placeholder_token)
    collate = Collator(tok, cfg, tok.convert_tokens_to_ids(cfg.model.placeholder_token))
    from ckf_dist.models.ckf import curriculum_weight, text_path_chosen

    sampled = cfg.train.curriculum and cfg.model.cf_fusion and cfg.train.curriculum_mode == "sample"
    total = 0
    for rank in range(world_size):
        it = iter(train_loader(TrainStream(shard_urls(run / "data" / "shards", "train"), cfg, collate, rank, world_size, 0)))
        for k in range(steps * cfg.train.grad_accum):
            b = next(it)
            cf, text = int(b["attention_mask"].sum()), int(b["text_attention_mask"].sum() if "text_attention_mask" in b else 0)
            if sampled:  # one path per step: the text twin with probability w(step)
                step = k // cfg.train.grad_accum
                w = curriculum_weight(step, cfg.train.steps, cfg.train.curriculum_midpoint)
                total += text if text_path_chosen(cfg.seed, step, w) else cf
            else:
                total += cf + text
    return total


ZERO3_MODEL_CODE = r'''
import os, socket, sys
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from ckf_dist.bench.e2e_gpu import SyntheticTokenizer, synthetic_batch
from ckf_dist.config import load_config
from ckf_dist.models.ckf import CKFModel
from ckf_dist.train.deepspeed_config import deepspeed_setup
from ckf_dist.train.engine import DeepSpeedEngine

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             intermediate_size=64, vocab_size=300)
MODE, CF = os.environ.get("CKF_TEST_MODE", "ckf"), os.environ.get("CKF_TEST_CF", "mf")
cfg = load_config(None, ["train.curriculum=false", "model.max_length=64", "lora.shared.r=2", "lora.task.r=2",
                         "kernels.backend=torch", "train.micro_batch_size=4", "train.grad_accum=1", "model.meta_hidden=8",
                         "dist.zero_stage=3", "dist.param_persistence_threshold=0", "train.dtype=fp32", "cf.dim=8",
                         f"model.mapping={MODE}"])


def build():
    torch.manual_seed(0)
    lc = LlamaConfig(**SHAPE, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    llm = LlamaForCausalLM._from_config(lc, dtype=torch.float32)
    tok = SyntheticTokenizer(SHAPE["vocab_size"], cfg.model.placeholder_token)
    g = torch.Generator().manual_seed(0)
    encoder = None
    if CF != "mf":  # a sequential backbone's frozen encoder gives the user vectors
        from ckf_dist.cf.sequential import SequentialCF
        encoder = SequentialCF(CF, 60, cfg.cf.dim, 4, blocks=1, heads=2, dropout=0.0).encoder
    aligned = torch.randn(60, 6, generator=g) if MODE == "allmrec" else None
    m = CKFModel(llm, tok, torch.randn(50, cfg.cf.dim, generator=g), torch.randn(60, cfg.cf.dim, generator=g), cfg,
                 user_encoder=encoder, item_tokens=aligned)
    with torch.no_grad():  # zero-initialised B (CoRA: G_B) would leave every A without a gradient
        for n, p in m.named_parameters():
            if ".lora_" in n and (n.endswith("B") or n.endswith("lora_row_B.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m, tok


'''
"""Python source for a DeepSpeed subprocess: imports, a ZeRO-3 config (`cfg`, every trainable tensor
partitioned) and `build()`, a tiny random LLaMA CKF model with non-zero LoRA B (so every A gets a
gradient) and its synthetic tokenizer. $CKF_TEST_MODE (model.mapping, default ckf) and $CKF_TEST_CF
(mf, or a sequential backbone whose random encoder gives the user vectors) choose the mode."""
