"""inject_multi_lora on tiny random LLaMA and Qwen2 models built in the test (no download)."""

import copy

import pytest
import torch

from ckf_dist.config import ConfigError, LoRAConfig, LoRASetConfig
from ckf_dist.modules.inject import inject_multi_lora
from ckf_dist.modules.multi_lora import LoRAContext, MultiLoRALinear

T = 5
HID, KV = 32, 16  # hidden size; k/v projection width (2 kv heads x head dim 8)


def _cfg(**kw) -> LoRAConfig:
    return LoRAConfig(
        shared=LoRASetConfig(targets=kw.get("shared", ["k_proj", "v_proj", "o_proj"]), r=4, alpha=8.0, dropout=0.0),
        task=LoRASetConfig(targets=kw.get("task", ["q_proj"]), r=2, alpha=4.0, dropout=0.0),
        task_specific=kw.get("task_specific", True),
    )


def _randomize_b(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n and n.endswith("B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _logits(model, ctx, ids, tasks):
    with ctx.row_tasks(torch.tensor(tasks), ids.shape[1]):
        return model(input_ids=ids).logits


def test_wraps_targets_freezes_the_rest(tiny_hf):
    family, model = tiny_hf
    ref = copy.deepcopy(model)
    ctx = LoRAContext(num_tasks=T)
    names = inject_multi_lora(model, _cfg(), T, ctx)
    expected = sorted(f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert names == expected
    for n in names:
        m = model.get_submodule(n)
        assert isinstance(m, MultiLoRALinear) and m.ctx is ctx
        assert m.has_task == n.endswith("q_proj") and m.has_shared == (not n.endswith("q_proj"))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable)
    # per layer: shared r=4 on k (32->16), v (32->16), o (32->32); T task adapters r=2 on q (32->32)
    per_layer = 4 * (HID + KV) * 2 + 4 * (HID + HID) + T * 2 * (HID + HID)
    assert sum(trainable.values()) == 2 * per_layer
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    # zero-initialised B: the wrapped model computes what the original computes
    ids = torch.randint(0, 97, (3, 9))
    torch.testing.assert_close(_logits(model, ctx, ids, [0, 3, 4]), ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_mixed_batch_through_the_model_equals_per_task_runs(tiny_hf):
    family, model = tiny_hf
    ctx = LoRAContext(num_tasks=T)
    inject_multi_lora(model, _cfg(shared=["k_proj", "v_proj", "o_proj", "down_proj"], task=["q_proj", "down_proj"]), T, ctx)
    _randomize_b(model)
    ids = torch.randint(0, 97, (4, 11))
    tasks = [4, 0, 4, 2]
    mixed = _logits(model, ctx, ids, tasks)
    for b, t in enumerate(tasks):
        torch.testing.assert_close(mixed[b : b + 1], _logits(model, ctx, ids[b : b + 1], [t]), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_logits(model, ctx, ids, [1, 1, 1, 1]), mixed)


def test_shared_and_task_on_one_module_are_summed(build_hf):
    model = build_hf("llama")
    ctx = LoRAContext(num_tasks=T)
    inject_multi_lora(model, _cfg(shared=["q_proj"], task=["q_proj"]), T, ctx)
    _randomize_b(model)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert q.has_shared and q.has_task
    x = torch.randn(2, 3, HID)
    with ctx.row_tasks(torch.tensor([1, 3]), 3):
        y = q(x)
    for b, t in enumerate([1, 3]):
        want = (q.base_layer(x[b]) + q.shared_scale * (x[b] @ q.lora_shared_A.t()) @ q.lora_shared_B.t()
                + q.task_scale * (x[b] @ q.lora_task_A[t].t()) @ q.lora_task_B[t].t())
        torch.testing.assert_close(y[b], want, rtol=1e-5, atol=1e-5)


def test_without_task_adapters_the_shared_set_covers_all_targets(build_hf):
    model = build_hf("qwen2")
    ctx = LoRAContext(num_tasks=T)
    names = inject_multi_lora(model, _cfg(task_specific=False), T, ctx)
    assert len(names) == 8
    mods = [model.get_submodule(n) for n in names]
    assert all(m.has_shared and not m.has_task for m in mods)
    ids = torch.randint(0, 97, (2, 5))
    model(input_ids=ids)  # no task ids needed


def test_bad_targets_and_double_injection(build_hf):
    model = build_hf("llama")
    with pytest.raises(ConfigError, match="lora.task.targets.*nope"):
        inject_multi_lora(model, _cfg(task=["nope"]), T, LoRAContext(num_tasks=T))
    assert all(p.requires_grad for p in model.parameters())  # nothing touched on error
    inject_multi_lora(model, _cfg(), T, LoRAContext(num_tasks=T))
    with pytest.raises(ValueError, match="already"):
        inject_multi_lora(model, _cfg(), T, LoRAContext(num_tasks=T))


def test_training_step_moves_only_adapters(build_hf):
    model = build_hf("llama")
    ctx = LoRAContext(num_tasks=T)
    inject_multi_lora(model, _cfg(), T, ctx)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 97, (2, 6))
    with ctx.row_tasks(torch.tensor([0, 1]), 6):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    assert all(torch.count_nonzero(m.lora_shared_B) > 0 for m in model.modules() if isinstance(m, MultiLoRALinear) and m.has_shared)
