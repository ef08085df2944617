"""A training micro-step reads nothing back from the device.

On CPU a dispatch mode records every op that makes the host wait for a device: explicit reads
(``item()``, ``float()``, ``bool()``, ``tolist()``: ``aten._local_scalar_dense``) and ops whose
output shape depends on the data (``nonzero``, ``masked_select``, ``bincount``, ``equal``...).
The plain-torch multi-LoRA reference (the CPU backend; CUDA runs the Triton kernels) gathers
rows per task with ``nonzero`` and is left out. On CUDA the same step runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ckf_dist.bench.e2e_gpu import SyntheticTokenizer, synthetic_batch
from ckf_dist.config import load_config
from ckf_dist.models.factory import assemble_ckf_model
from ckf_dist.train.engine import LocalEngine

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::bincount", "aten::equal",
            "aten::is_nonzero", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::item"}
EXEMPT = ("kernels/multi_lora/reference.py",)


class SyncCounter(TorchDispatchMode):
    """Records the ops of SYNC_OPS (and boolean-mask indexing) called inside the block."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __enter__(self):
        # tolist() reads the data without going through the dispatcher
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(t, *a, **k):
            counter.calls.append("Tensor.tolist")
            return counter._tolist(t, *a, **k)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            t is not None and torch.is_tensor(t) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else []))
        if name in SYNC_OPS or bool_index:
            where = "".join(traceback.format_stack(limit=40))
            if not any(e in where for e in EXEMPT):
                frame = next((f for f in reversed(traceback.extract_stack(limit=40)) if "ckf_dist" in f.filename), None)
                self.calls.append(f"{name} at {frame.filename.split('/')[-1]}:{frame.lineno}" if frame else name)
        return func(*args, **(kwargs or {}))


SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
             vocab_size=256)


def _model(device: str, *overrides: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = load_config(None, ["train.curriculum=false", "dist.launcher=local", "lora.shared.r=4", "lora.task.r=4",
                             "model.meta_hidden=16", "cf.dim=8", "train.steps=10", *overrides])
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**SHAPE, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    tok = SyntheticTokenizer(SHAPE["vocab_size"], cfg.model.placeholder_token)
    g = torch.Generator().manual_seed(0)
    model = assemble_ckf_model(cfg, llm, tok,
                               torch.randn(50, cfg.cf.dim, generator=g), torch.randn(60, cfg.cf.dim, generator=g), device)
    return cfg, model, tok


def _batch(tok, device):
    return synthetic_batch(4, 48, SHAPE["vocab_size"], tok.placeholder_id, n_items=3, hist=4, target_len=6,
                           n_users=50, n_items_table=60, device=device)


def test_counter_sees_a_host_read():
    with SyncCounter() as c:
        float(torch.ones(3).sum())
        torch.ones(3)[torch.tensor([True, False, True])]
        torch.ones(2).tolist()
    assert len(c.calls) >= 3 and "Tensor.tolist" in c.calls


def test_micro_step_has_no_host_read_on_cpu():
    cfg, model, tok = _model("cpu")
    engine = LocalEngine(model, cfg)
    model.train()
    batch = _batch(tok, "cpu")
    for step in range(3):
        with SyncCounter() as c:
            out = model(batch, step=step, total_steps=cfg.train.steps)
            engine.backward(out.loss)
            acc = torch.stack([v.detach() for v in out.task_losses.values()]).sum() + out.loss.detach()
        assert c.calls == [], c.calls
        engine.step()
    assert torch.isfinite(acc)


def test_debug_checks_read_the_device():
    cfg, model, tok = _model("cpu", "train.debug_checks=true")
    batch = _batch(tok, "cpu")
    with SyncCounter() as c:
        model(batch, step=0, total_steps=cfg.train.steps)
    assert c.calls  # the device-side invariant checks are back


def test_padded_batch_mask_built_here_gives_the_hidden_states_of_the_2d_mask():
    cfg, model, tok = _model("cpu")
    model.eval()
    batch = _batch(tok, "cpu")
    mask = batch["attention_mask"].clone()
    mask[0, -7:] = 0  # right padding, as the collator pads
    mask[2, -3:] = 0
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch)
        ref = model._decoder_hidden(embeds, mask, batch["task_ids"])  # transformers builds the mask
        ours = model._decoder_hidden(embeds, mask, batch["task_ids"], padded=True)
        full = model._decoder_hidden(embeds, batch["attention_mask"], batch["task_ids"])
        none = model._decoder_hidden(embeds, batch["attention_mask"], batch["task_ids"], padded=False)
    keep = mask.bool()
    assert torch.equal(ref[keep], ours[keep])
    assert torch.equal(full, none)


@pytest.mark.gpu
def test_micro_step_has_no_sync_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg, model, tok = _model("cuda")
    engine = LocalEngine(model, cfg)
    model.train()
    batch = _batch(tok, "cuda")
    out = model(batch, step=0, total_steps=cfg.train.steps)  # warm-up: kernels compiled, caches built
    engine.backward(out.loss)
    engine.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 3):
            out = model(batch, step=step, total_steps=cfg.train.steps)
            engine.backward(out.loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss)
