"""The embedded default LLM (``ckf model init-tiny``).

Owns: training the tiny model's tokenizer, building and briefly pre-training the tiny
LLaMA-architecture model, and writing it as an HF-format directory, which
:func:`ckf_dist.models.llm.load_llm` loads like any other. Must not know: CF tables, prompts'
structure, DeepSpeed, Ray.

Leakage rule: :func:`init_tiny` trains the tokenizer and pre-trains the model on exactly the
texts it is given. The caller must pass **training-split text only** (item titles, training
reviews, training summaries), never validation or test targets, or the "text-only" baseline
and every evaluation would be contaminated.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from ckf_dist.config import Config, ConfigError
from ckf_dist.fsutil import replace_dir, temp_dir_beside

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PRETRAIN_SEQ_LEN = 128
"""Tokens per pre-training sequence (random windows over the packed text stream)."""
MIN_VOCAB = 300
"""256 byte symbols + special tokens + a few merges: the smallest useful byte-level BPE vocab."""
INFO_FILE = "ckf_tiny.json"


def train_tokenizer(texts: Sequence[str], vocab_size: int, placeholder_token: str):
    """Byte-level BPE (HF ``tokenizers``) trained on ``texts``, wrapped for transformers.

    Special tokens: ``<pad>`` ``<s>`` ``</s>`` and the CF placeholder (one id each, never split).
    The tokenizer prepends ``<s>`` when ``add_special_tokens=True``; pad side is right.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, placeholder_token]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(int(vocab_size), MIN_VOCAB),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[placeholder_token],
        padding_side="right",
    )


def _token_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All texts packed into one stream: <s> text </s> <s> text </s> ... -> [T] int64."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _pretrain(model, stream: torch.Tensor, cfg: Config, seed: int) -> list[float]:
    """Causal-LM pre-training on random windows of ``stream``; returns the loss per step."""
    from tqdm.auto import tqdm

    t = cfg.tiny
    steps = int(t.pretrain_steps)
    if steps <= 0:
        return []
    seq = min(PRETRAIN_SEQ_LEN, int(stream.numel()))
    if seq < 3:
        raise ValueError(f"init-tiny: the texts give only {stream.numel()} tokens; need at least 3")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=t.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 10)

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="init-tiny pre-training", unit="step", leave=False, mininterval=2.0)
    for _ in bar:
        starts = torch.randint(0, stream.numel() - seq + 1, (t.pretrain_batch_size,), generator=gen)
        x = torch.stack([stream[s : s + seq] for s in starts.tolist()])  # [B, seq]
        out = model(input_ids=x, labels=x, use_cache=False)  # HF shifts the labels inside
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(out.loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def init_tiny(texts: list[str], cfg: Config, out_dir: str | Path) -> Path:
    """Write the embedded default LLM to ``out_dir`` (HF format: save_pretrained + tokenizer).

    texts: training-split text only (titles, training reviews, training summaries; see the module
    docstring). Trains a byte-level BPE tokenizer of ``cfg.tiny.vocab_size`` with ``<pad> <s>
    </s>`` and ``cfg.model.placeholder_token``; builds a ``LlamaForCausalLM`` from ``cfg.tiny``;
    pre-trains it for ``cfg.tiny.pretrain_steps`` (seeded by ``cfg.seed``); writes into a temporary
    sibling directory and renames it into place, so ``out_dir`` is either complete or absent.
    Also writes ``ckf_tiny.json`` (steps, first/last loss, token count, seconds).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [s for s in (str(x).strip() for x in texts) if s]
    if not texts:
        raise ValueError("init-tiny: no training text given")
    out = Path(out_dir)
    t0 = time.time()
    t = cfg.tiny
    if t.hidden_size % t.num_heads:
        raise ConfigError(f"config: key 'tiny.num_heads': {t.num_heads} does not divide tiny.hidden_size={t.hidden_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        tokenizer = train_tokenizer(texts, t.vocab_size, cfg.model.placeholder_token)
        stream = _token_stream(tokenizer, texts)
        mcfg = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_heads,
            max_position_embeddings=max(2048, cfg.model.max_length),
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(mcfg)
        losses = _pretrain(model, stream, cfg, cfg.seed)

    tmp = temp_dir_beside(out)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "texts": len(texts),
        "tokens": int(stream.numel()),
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": float(sum(losses[-10:]) / len(losses[-10:])) if losses else None,
        "seconds": round(time.time() - t0, 1),
        "tiny": {k: getattr(t, k) for k in t.__dataclass_fields__},
        "seed": cfg.seed,
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    replace_dir(tmp, out)
    log.info("init-tiny: wrote %s (%d texts, %d tokens, loss %s -> %s, %.0fs)", out, info["texts"],
             info["tokens"], info["first_loss"], info["last_loss"], info["seconds"])
    return out
