"""MultiLoRALinear: mixed-task batches equal per-task runs row by row; context; init; freezing."""

import pytest
import torch
from torch import nn

from ckf_dist.config import ConfigError
from ckf_dist.modules.multi_lora import LoRAContext, MultiLoRALinear

D_IN, D_OUT, T = 24, 20, 4  # non-power-of-two sizes


def _layer(shared=(4, 8.0, 0.0), task=(3, 6.0, 0.0), seed=0, bias=True):
    torch.manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT, bias=bias)
    base.requires_grad_(False)
    ctx = LoRAContext(num_tasks=T)
    layer = MultiLoRALinear(base, ctx, shared=shared, task=task, name="blk.q_proj")
    with torch.no_grad():  # random non-zero B: zero B would make every adapter invisible
        for n, p in layer.named_parameters():
            if n.startswith("lora_") and n.endswith("B"):
                p.normal_(0.0, 0.5)
    return layer, ctx


def _manual(layer, x, task_of_row):
    """Plain formula, one row at a time: base + shared + its task adapter. x: [B, L, d_in]."""
    outs = []
    for b in range(x.shape[0]):
        xb = x[b]
        y = layer.base_layer(xb)
        if layer.has_shared:
            y = y + layer.shared_scale * (xb @ layer.lora_shared_A.t()) @ layer.lora_shared_B.t()
        t = task_of_row[b]
        if layer.has_task and t >= 0:
            y = y + layer.task_scale * (xb @ layer.lora_task_A[t].t()) @ layer.lora_task_B[t].t()
        outs.append(y)
    return torch.stack(outs)


def test_fresh_layer_equals_base():
    torch.manual_seed(1)
    base = nn.Linear(D_IN, D_OUT)
    ctx = LoRAContext(num_tasks=T)
    layer = MultiLoRALinear(base, ctx, shared=(4, 8.0, 0.0), task=(4, 8.0, 0.0))
    assert torch.count_nonzero(layer.lora_shared_B) == 0 and torch.count_nonzero(layer.lora_task_B) == 0
    assert torch.count_nonzero(layer.lora_shared_A) > 0 and torch.count_nonzero(layer.lora_task_A) > 0
    x = torch.randn(3, 5, D_IN)
    with ctx.row_tasks(torch.tensor([0, 2, -1]), 5):
        torch.testing.assert_close(layer(x), base(x))


def test_mixed_batch_equals_per_task_runs_row_by_row():
    layer, ctx = _layer()
    tasks = [2, 0, -1, 2, 1]  # task 3 has no rows; one row has no task adapter
    x = torch.randn(len(tasks), 7, D_IN)
    with ctx.row_tasks(torch.tensor(tasks), 7):
        mixed = layer(x)
    assert mixed.shape == (5, 7, D_OUT)
    for b, t in enumerate(tasks):
        with ctx.row_tasks(torch.tensor([t]), 7):
            single = layer(x[b : b + 1])
        torch.testing.assert_close(mixed[b : b + 1], single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, _manual(layer, x, tasks), rtol=1e-5, atol=1e-5)
    # the task adapters matter: the same rows under other tasks give other outputs
    with ctx.row_tasks(torch.tensor([(t + 1) % T for t in tasks]), 7):
        assert not torch.allclose(layer(x), mixed)


@pytest.mark.parametrize("shared,task", [((4, 8.0, 0.0), None), (None, (3, 6.0, 0.0))])
def test_shared_only_and_task_only(shared, task):
    layer, ctx = _layer(shared=shared, task=task, bias=False)
    tasks = [1, 3, -1]
    x = torch.randn(3, 2, D_IN)
    if task is None:
        torch.testing.assert_close(layer(x), _manual(layer, x, tasks), rtol=1e-5, atol=1e-5)  # no context needed
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 4 * (D_IN + D_OUT)
    else:
        with ctx.row_tasks(torch.tensor(tasks), 2):
            torch.testing.assert_close(layer(x), _manual(layer, x, tasks), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == T * 3 * (D_IN + D_OUT)


def test_task_layer_needs_task_ids_for_this_call():
    layer, ctx = _layer()
    x = torch.randn(2, 3, D_IN)
    with pytest.raises(RuntimeError, match="without task ids"):
        layer(x)
    with ctx.row_tasks(torch.tensor([0, 1, 2]), 3), pytest.raises(RuntimeError, match="9 tokens"):
        layer(x)
    assert ctx.segments is None  # cleared after the block, even after an error


def test_nested_task_scopes_are_refused():
    _, ctx = _layer()
    with ctx.row_tasks(torch.tensor([0]), 1):
        with pytest.raises(RuntimeError, match="already active"):
            with ctx.row_tasks(torch.tensor([1]), 1):
                pass


def test_shared_and_task_dropouts_must_match():
    with pytest.raises(ConfigError, match="same dropout") as e:
        MultiLoRALinear(nn.Linear(4, 4), LoRAContext(num_tasks=2), shared=(2, 4.0, 0.1), task=(2, 4.0, 0.05), name="q_proj")
    assert "\n" not in str(e.value)


def test_contexts_are_per_model_not_global():
    a, ctx_a = _layer(seed=0)
    b, ctx_b = _layer(seed=0)
    x = torch.randn(2, 3, D_IN)
    with ctx_a.row_tasks(torch.tensor([0, 1]), 3):
        ya = a(x)
        with pytest.raises(RuntimeError, match="without task ids"):
            b(x)  # b's context is untouched by a's
    with ctx_b.row_tasks(torch.tensor([0, 1]), 3):
        torch.testing.assert_close(b(x), ya)


def test_parameters_are_read_in_forward_not_cached():
    layer, ctx = _layer()
    x = torch.randn(2, 3, D_IN)
    with ctx.row_tasks(torch.tensor([0, 1]), 3):
        before = layer(x)
        layer.lora_shared_B = nn.Parameter(torch.zeros_like(layer.lora_shared_B))  # swap the Parameter object
        layer.lora_task_B = nn.Parameter(torch.zeros_like(layer.lora_task_B))
        after = layer(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, layer.base_layer(x))
    assert not any(isinstance(v, (nn.Parameter, torch.Tensor)) for v in vars(ctx).values())


def test_backward_reaches_only_adapters_of_present_tasks():
    layer, ctx = _layer()
    x = torch.randn(3, 4, D_IN, requires_grad=True)
    with ctx.row_tasks(torch.tensor([0, 2, -1]), 4):
        y = layer(x)
    y.square().sum().backward()
    assert layer.base_layer.weight.grad is None
    assert x.grad is not None and torch.count_nonzero(layer.lora_shared_A.grad) > 0
    g = layer.lora_task_B.grad
    assert torch.count_nonzero(g[0]) > 0 and torch.count_nonzero(g[2]) > 0
    assert torch.count_nonzero(g[1]) == 0 and torch.count_nonzero(g[3]) == 0


def test_dropout_only_in_training_and_shared_by_both_sets():
    layer, ctx = _layer(shared=(4, 8.0, 0.5), task=(3, 6.0, 0.5))
    x = torch.randn(2, 6, D_IN)
    with ctx.row_tasks(torch.tensor([0, 1]), 6):
        layer.eval()
        e1, e2 = layer(x), layer(x)
        layer.train()
        t1 = layer(x)
    torch.testing.assert_close(e1, e2)
    assert not torch.allclose(t1, e1)
    assert layer.dropout == 0.5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_row_adapters_equal_a_lora_of_each_rows_generated_factors(backend):
    """CoRA: row b's output is base(x_b) + s (x_b A_bᵀ) B_bᵀ with A_b = z_b G_Aᵀ, B_b = (z_b G_Bᵀ)ᵀ,
    for every row of one mixed call; gradients reach the codes z and both maps."""
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    base.requires_grad_(False)
    ctx = LoRAContext(num_tasks=T, backend=backend)
    h, r = 6, 3
    layer = MultiLoRALinear(base, ctx, name="blk.q_proj", row=(r, 6.0, 0.0, h))
    assert not layer.has_task and not layer.has_shared and layer.has_row
    x = torch.randn(5, 7, D_IN)
    with ctx.row_adapters(torch.arange(5), 7, torch.randn(5, r, h)):
        torch.testing.assert_close(layer(x), base(x))  # G_B starts at zero: the frozen layer
    with torch.no_grad():
        layer.lora_row_B.weight.normal_(0.0, 0.5)
    codes = torch.randn(5, r, h, requires_grad=True)
    rows = torch.tensor([3, 0, 4, 4, 1])  # a call whose rows reuse the batch's adapters (candidate scoring)
    with ctx.row_adapters(rows, 7, codes):
        y = layer(x)
    want = []
    for k in range(5):
        a = codes[rows[k]] @ layer.lora_row_A.weight.t()  # [r, d_in]
        b = (codes[rows[k]] @ layer.lora_row_B.weight.t()).t()  # [d_out, r]
        want.append(base(x[k]) + layer.row_scale * (x[k] @ a.t()) @ b.t())
    torch.testing.assert_close(y, torch.stack(want), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert codes.grad[2].abs().sum() == 0 and codes.grad[[0, 1, 3, 4]].abs().sum(1).sum(1).min() > 0  # row 2 unused
    assert layer.lora_row_A.weight.grad.abs().sum() > 0 and layer.lora_row_B.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="without row codes"):
        with ctx.tasks(torch.zeros(35, dtype=torch.long)):
            layer(x)
    with pytest.raises(ValueError, match="task and row adapters"):
        MultiLoRALinear(base, ctx, task=(2, 4.0, 0.0), row=(2, 4.0, 0.0, 4))
