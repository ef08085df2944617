"""multi_lora: Triton kernels (interpreter on CPU) vs the plain-torch reference, forward and backward.

Every case compares the Triton path in the test dtype against (1) the reference run in fp64 on
the same (dtype-rounded) inputs and (2) the reference run in the test dtype; gradients against
autograd through the reference. Inputs are views into NaN-filled buffers (catches unmasked
out-of-bounds loads), dims are not powers of two, lora_B is random and non-zero.
"""

import pytest
import torch
import torch.nn.functional as F

from ckf_dist.kernels import multi_lora
from ckf_dist.kernels.multi_lora import build_segments, multi_lora_linear, multi_lora_reference
from ckf_dist.kernels.multi_lora.kernel import expand, r_pad, seg_wgrad, shrink

from kernel_testutils import TOL, assert_close, max_rel_err, nan_padded

NAMES = ("x", "shared_a", "shared_b", "task_a", "task_b")


def make_case(n=70, d_in=40, d_out=48, num_tasks=3, r_t=8, r_sh=4, dtype=torch.float32, bias=True,
              empty_task=True, no_task_rows=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = nan_padded((n, d_in), dtype, g, requires_grad=True)
    weight = nan_padded((d_out, d_in), dtype, g, scale=d_in ** -0.5)
    b = nan_padded((d_out,), dtype, g) if bias else None
    sa = sb = ta = tb = None
    if r_sh:
        sa = nan_padded((r_sh, d_in), dtype, g, scale=d_in ** -0.5, requires_grad=True)
        sb = nan_padded((d_out, r_sh), dtype, g, scale=r_sh ** -0.5, requires_grad=True)
    if r_t:
        ta = nan_padded((num_tasks, r_t, d_in), dtype, g, scale=d_in ** -0.5, requires_grad=True)
        tb = nan_padded((num_tasks, d_out, r_t), dtype, g, scale=r_t ** -0.5, requires_grad=True)
    allowed = list(range(num_tasks))
    if empty_task and num_tasks > 1:
        allowed.remove(1)  # task 1 gets no rows
    if no_task_rows:
        allowed.append(-1)
    ids = torch.tensor(allowed)[torch.randint(len(allowed), (n,), generator=g)]
    segments = build_segments(ids, num_tasks) if num_tasks else None
    dy = nan_padded((n, d_out), dtype, g)
    return dict(x=x, weight=weight, bias=b, shared_a=sa, shared_b=sb, shared_scale=0.5,
                task_a=ta, task_b=tb, task_scale=2.0, segments=segments), dy


def run(case, dy, backend, dtype=None, **kw):
    """Forward + backward; returns (y, {name: grad}) with grads of absent/unused inputs as None."""
    args = dict(case)
    if dtype is not None:  # re-run the same inputs in another dtype (fresh leaves)
        for k in ("x", "weight", "bias") + NAMES[1:]:
            if args[k] is not None:
                args[k] = args[k].detach().to(dtype).requires_grad_(k in NAMES)
        dy = dy.to(dtype)
    y = multi_lora_linear(**args, backend=backend, **kw)
    leaves = [args[k] for k in NAMES]
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, present, dy, allow_unused=True)
    it = iter(grads)
    out = {k: (next(it) if t is not None else None) for k, t in zip(NAMES, leaves)}
    return y, out


def compare(case, dy, dtype, **kw):
    y, grads = run(case, dy, "triton", **kw)
    y64, grads64 = run(case, dy, "torch", dtype=torch.float64, **kw)
    yref, grads_ref = run(case, dy, "torch", **kw)
    assert y.dtype == dtype
    assert_close(y, y64, dtype, "y vs fp64 reference")
    assert_close(y, yref, dtype, f"y vs {dtype} reference")
    for k in NAMES:
        if case[k] is None:
            continue
        g, g64, gref = grads[k], grads64[k], grads_ref[k]
        if g64 is None:  # unused by the reference (e.g. no row has a task): the kernel gives 0 or None
            assert g is None or not g.any(), k
            continue
        assert g is not None, f"no gradient for {k}"
        assert g.dtype == case[k].dtype
        assert_close(g, g64, dtype, f"d{k} vs fp64 autograd")
        assert_close(g, gref, dtype, f"d{k} vs {dtype} autograd")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("r", [1, 8, 16])
@pytest.mark.parametrize("num_tasks", [1, 3])
def test_forward_backward_matches_reference(dtype, r, num_tasks):
    case, dy = make_case(num_tasks=num_tasks, r_t=r, r_sh=r if r != 8 else 5, dtype=dtype, bias=r != 1,
                         seed=r * 10 + num_tasks)
    compare(case, dy, dtype)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n=1, num_tasks=3),  # batch of one
        dict(n=1, num_tasks=1, no_task_rows=False),
        dict(r_sh=0),  # task adapters only
        dict(r_t=0, num_tasks=0),  # shared adapter only, no segments
        dict(r_t=0, r_sh=0, num_tasks=0),  # bare base linear through the kernel
        dict(r_t=16, r_sh=16),  # concatenated rank 32
        dict(n=150, num_tasks=2, empty_task=False, no_task_rows=False),  # segments span several tiles
        dict(n=200, d_in=70, d_out=90, num_tasks=8, r_t=8, r_sh=8),  # several K and N tiles
        dict(n=33, d_in=17, d_out=19, num_tasks=5, r_t=3, r_sh=2, bias=False),
    ],
    ids=["batch1", "batch1-1task", "task-only", "shared-only", "no-adapter", "rank32", "multi-tile",
         "8tasks-wide", "odd-dims"],
)
def test_shapes_and_configurations(kw):
    case, dy = make_case(**kw)
    compare(case, dy, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("rows, tokens, r", [(7, 9, 4), (12, 5, 8), (3, 70, 2), (1, 13, 16)],
                         ids=["7x9", "12x5", "3x70-multi-tile", "1-row"])
def test_per_row_adapters_one_adapter_per_sequence(dtype, rows, tokens, r):
    """CoRA's per-row adapters through the same op: T = the number of rows, every token of row b
    uses adapter b (segments of equal length, one per adapter, several tiles for long rows)."""
    case, dy = make_case(n=rows * tokens, num_tasks=rows, r_t=r, r_sh=0, dtype=dtype, empty_task=False,
                         no_task_rows=False, seed=rows + tokens)
    ids = torch.arange(rows).repeat_interleave(tokens)
    case["segments"] = build_segments(ids, rows)
    compare(case, dy, dtype)


def test_all_rows_without_task_and_segments_none():
    case, dy = make_case(num_tasks=3)
    ids = torch.full((70,), -1, dtype=torch.long)
    case["segments"] = build_segments(ids, 3)
    compare(case, dy, torch.float32)
    case["segments"] = None  # task adapters given but no row uses them
    y, grads = run(case, dy, "triton")
    assert grads["task_a"] is None and grads["task_b"] is None
    y_ref, _ = run(case, dy, "torch")
    assert_close(y, y_ref, torch.float32, "y")


def test_small_tiles_many_programs():
    """block_m=16: many tiles per segment; segment boundaries fall inside the default 64-row tile."""
    case, dy = make_case(n=90, num_tasks=4)
    case["segments"] = build_segments(case["segments"].task_ids, 4, block_m=16)
    compare(case, dy, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_dropout_same_mask_both_backends(dtype):
    case, dy = make_case(dtype=dtype)
    torch.manual_seed(123)
    y, grads = run(case, dy, "triton", dropout=0.3, training=True)
    torch.manual_seed(123)
    y_ref, grads_ref = run(case, dy, "torch", dropout=0.3, training=True)
    torch.manual_seed(123)
    y_nodrop, _ = run(case, dy, "torch")
    assert max_rel_err(y_ref, y_nodrop) > 10 * TOL[dtype], "dropout had no effect"
    assert_close(y, y_ref, dtype, "y")
    for k in NAMES:
        assert_close(grads[k], grads_ref[k], dtype, f"d{k}")
    # eval mode: no dropout
    y_eval, _ = run(case, dy, "triton", dropout=0.3, training=False)
    assert_close(y_eval, y_nodrop, dtype, "y eval")


def test_reference_matches_row_by_row_single_adapter_runs():
    """The oracle itself: each row equals a one-adapter LoRA computed for that row alone."""
    case, _ = make_case(num_tasks=3, r_t=4, r_sh=3, dtype=torch.float64)
    y = multi_lora_reference(*[case[k] for k in ("x", "weight", "bias", "shared_a", "shared_b", "shared_scale",
                                                   "task_a", "task_b", "task_scale", "segments")])
    x, ids = case["x"], case["segments"].task_ids
    for n in range(x.shape[0]):
        row = x[n : n + 1]
        expect = F.linear(row, case["weight"], case["bias"])
        expect = expect + 0.5 * row @ case["shared_a"].t() @ case["shared_b"].t()
        t = int(ids[n])
        if t >= 0:
            expect = expect + 2.0 * row @ case["task_a"][t].t() @ case["task_b"][t].t()
        torch.testing.assert_close(y[n : n + 1], expect)


def test_tolerance_catches_wrong_task_routing():
    """The tolerance is tight enough to see rows routed to a neighbouring task."""
    case, dy = make_case(num_tasks=3, empty_task=False)
    y, _ = run(case, dy, "triton")
    wrong = dict(case)
    wrong["segments"] = build_segments((case["segments"].task_ids + 1).clamp(max=2), 3)
    y_wrong, _ = run(wrong, dy, "torch")
    assert max_rel_err(y, y_wrong) > 100 * TOL[torch.float32]


def test_two_backward_runs_bit_identical():
    case, dy = make_case(n=150, num_tasks=3, r_t=8, r_sh=8)
    _, g1 = run(case, dy, "triton")
    _, g2 = run(case, dy, "triton")
    for k in NAMES:
        assert torch.equal(g1[k], g2[k]), f"d{k} differs between two backward runs"


def test_triton_path_really_runs():
    case, dy = make_case()
    before = multi_lora.launch_count()
    run(case, dy, "triton")
    # forward: shrink + expand; backward: shrink (g), expand (dx), 2 x seg_wgrad
    assert multi_lora.launch_count() - before == 6
    before = multi_lora.launch_count()
    run(case, dy, "torch")
    assert multi_lora.launch_count() == before


def test_frozen_weight_and_bias_grads_when_requested():
    case, dy = make_case()
    case["weight"] = case["weight"].detach().clone().requires_grad_(True)
    case["bias"] = case["bias"].detach().clone().requires_grad_(True)
    outs = {}
    for backend in ("triton", "torch"):
        y = multi_lora_linear(**case, backend=backend)
        outs[backend] = torch.autograd.grad(y, [case["weight"], case["bias"]], dy)
    for a, b in zip(outs["triton"], outs["torch"]):
        assert_close(a, b, torch.float32)


def test_no_nan_leaks_from_unwritten_output_elements():
    """Launchers given NaN-filled outputs write every element they own."""
    case, dy = make_case(n=90, num_tasks=4, r_t=5, r_sh=3)
    seg, x, w = case["segments"], case["x"].detach(), case["weight"]
    ta, sa, tb, sb = (case[k].detach() for k in ("task_a", "shared_a", "task_b", "shared_b"))
    n, d_in = x.shape
    d_out = w.shape[0]
    rp = r_pad(5, 3)
    h = torch.full((n, rp), float("nan"))
    shrink(x, seg, (ta, ta.stride(0), ta.stride(2), ta.stride(1)), 5, (sa, sa.stride(1), sa.stride(0)), 3,
           2.0, 0.5, out=h)
    assert not h.isnan().any()
    assert not h[:, 8:].any(), "padding columns of h must be zero"
    y = torch.full((n, d_out), float("nan"))
    expand(x, (w, w.stride(1), w.stride(0)), h, seg, (tb, tb.stride(0), tb.stride(2), tb.stride(1)), 5,
           (sb, sb.stride(1), sb.stride(0)), 3, case["bias"], y)
    assert not y.isnan().any()
    y2a, y2b = torch.full((n, d_out), float("nan")), torch.full((n, d_out), float("nan"))
    expand(x, (w, w.stride(1), w.stride(0)), h, seg, (tb, tb.stride(0), tb.stride(2), tb.stride(1)), 5,
           (sb, sb.stride(1), sb.stride(0)), 3, None, y2a, out2=y2b)
    assert not y2a.isnan().any() and not y2b.isnan().any()
    assert_close(y2a + y2b + case["bias"], y, torch.float32, "split outputs")
    d_tb = torch.full(tb.shape, float("nan"))
    part = torch.full((5, d_out, 3), float("nan"))
    seg_wgrad(dy, h, seg, (d_tb, d_tb.stride(0), d_tb.stride(1), d_tb.stride(2)), 5, 3, partial=part)
    assert not d_tb.isnan().any() and not part.isnan().any()
    assert int(seg.lengths[1]) == 0 and not d_tb[1].any(), "a task with no rows gets a zero gradient"


def test_validation_errors():
    case, _ = make_case()
    bad = dict(case, shared_a=torch.empty(0))
    with pytest.raises(ValueError, match="ZeRO-3"):
        multi_lora_linear(**bad, backend="triton")
    bad = dict(case, task_b=case["task_b"][:, :, :3])
    with pytest.raises(ValueError, match="task_b"):
        multi_lora_linear(**bad, backend="torch")
    bad = dict(case, segments=build_segments(torch.zeros(5, dtype=torch.long), 3))
    with pytest.raises(ValueError, match="rows"):
        multi_lora_linear(**bad, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        multi_lora_linear(**case, backend="auto")


@pytest.mark.gpu
@pytest.mark.parametrize("num_tasks", [1, 8])
def test_gpu_bf16_large(num_tasks):
    """bf16 at a training-like shape on CUDA against the fp64 reference."""
    torch.manual_seed(0)
    case, dy = make_case(n=4096 + 37, d_in=1024, d_out=1024 + 64, num_tasks=num_tasks, r_t=16, r_sh=16,
                         dtype=torch.bfloat16)
    cuda = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor):
            cuda[k] = v.detach().cuda().requires_grad_(v.requires_grad)
        else:
            cuda[k] = v
    cuda["segments"] = build_segments(case["segments"].task_ids.cuda(), num_tasks)
    compare(cuda, dy.cuda(), torch.bfloat16)
