"""CKFModel: splicing for every row, what trains, losses, curriculum, evaluation helpers, state."""

import math

import pytest
import torch

from ckf_dist.config import ALL_TASKS
from ckf_dist.models.ckf import CKFModel, curriculum_weight
from ckf_dist.data.collate import Collator, target_token_ids
from ckf_dist.modules.multi_lora import MultiLoRALinear
from model_samples import small_config

PH = "<|cf|>"


def _batch(model, tok, cfg, samples, **kw):
    return Collator(tok, cfg, model.placeholder_id, **kw)(samples)


def test_every_row_gets_its_cf_vectors_in_order(build_model, samples):
    model, tok, cfg = build_model()
    batch = _batch(model, tok, cfg, samples)
    ids = batch["input_ids"]
    embeds = model.embed(ids, batch)
    users, items = model.cf_vectors(batch)
    tok_emb = model.llm.get_input_embeddings()(ids)
    pid = model.placeholder_id
    per_task = {}
    offset = 0
    for r, s in enumerate(samples):
        pos = (ids[r] == pid).nonzero().squeeze(1).tolist()
        per_task.setdefault(s["task"], set()).add(len(pos))
        assert len(pos) == 1 + len(s["items"])
        torch.testing.assert_close(embeds[r, pos[0]], users[r])  # first placeholder = this row's user
        for k, p in enumerate(pos[1:]):
            torch.testing.assert_close(embeds[r, p], items[offset + k])  # then its items, in order
        offset += len(s["items"])
        other = torch.ones(ids.shape[1], dtype=torch.bool)
        other[pos] = False
        torch.testing.assert_close(embeds[r, other], tok_emb[r, other])
    assert per_task == {"ctr": {2}, "topk": {5}, "rating": {2}, "review_rating": {2}, "explanation": {2}}
    # the vectors are the mapping of this row's own user and items (not another row's)
    m = model.mapper
    e_u = model.user_emb[batch["user_ids"]]
    want_users = m.map_users(e_u, model.item_emb[batch["history_ids"]], batch["history_mask"])
    torch.testing.assert_close(users, want_users)
    torch.testing.assert_close(items, m.map_items(model.item_emb[batch["item_ids"]]))
    assert len(set(batch["user_ids"].tolist())) > 1 and not torch.allclose(users[0], users[1])


def test_the_llm_receives_the_spliced_embeddings(build_model, samples):
    model, tok, cfg = build_model()
    batch = _batch(model, tok, cfg, samples)
    seen = {}

    def grab(mod, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()

    hook = model.llm.get_decoder().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(batch)
    finally:
        hook.remove()
    torch.testing.assert_close(seen["embeds"], model.embed(batch["input_ids"], batch))


def test_placeholder_count_mismatch_is_an_error(build_model, samples):
    """The collator checks its batches on the CPU; the model re-checks on the device under
    train.debug_checks, and always for a batch without the collator's index fields."""
    cfg = small_config()
    cfg.train.debug_checks = True
    model, tok, cfg = build_model(cfg)
    batch = _batch(model, tok, cfg, samples)
    bad = dict(batch, item_ids=batch["item_ids"][1:], item_rows=batch["item_rows"][1:])
    with pytest.raises(ValueError, match=r"row 0 \(train/ctr/0/0\): 2 placeholders for 1 user \+ 0 items"):
        model.embed(batch["input_ids"], bad)
    with pytest.raises(ValueError, match="outside the CF table"):
        model.embed(batch["input_ids"], dict(batch, user_ids=batch["user_ids"] + 100))
    model, tok, cfg = build_model()
    hand_made = {k: v for k, v in bad.items() if not k.startswith(("cf_", "target_"))}
    with pytest.raises(ValueError, match=r"row 0 \(train/ctr/0/0\): 2 placeholders"):
        model.embed(batch["input_ids"], hand_made)


def test_collator_checks_cf_ids_against_the_tables(build_model, samples):
    model, tok, cfg = build_model()
    coll = Collator(tok, cfg, model.placeholder_id, num_users=model.user_emb.shape[0], num_items=model.item_emb.shape[0])
    coll(samples)
    bad = [dict(samples[0], user=model.user_emb.shape[0] + 3), *samples[1:]]
    with pytest.raises(ValueError, match=r"sample .*: user id \d+ is outside the CF table"):
        coll(bad)


def test_precomputed_positions_give_the_losses_of_the_device_checked_path(build_model, samples):
    model, tok, cfg = build_model()
    batch = _batch(model, tok, cfg, samples)
    plain = {k: v for k, v in batch.items() if not k.startswith(("cf_", "target_", "text_target_"))}
    with torch.no_grad():
        a = model(batch)
        b = model(plain)
    assert torch.equal(a.loss, b.loss)
    assert a.task_losses.keys() == b.task_losses.keys()
    assert all(torch.equal(a.task_losses[k], b.task_losses[k]) for k in a.task_losses)


def _lora_count(model, cfg, task_specific=True):
    n_layers = model.llm.config.num_hidden_layers
    hid = model.llm.config.hidden_size
    kv = model.llm.config.num_key_value_heads * (hid // model.llm.config.num_attention_heads)
    rs, rt, t = cfg.lora.shared.r, cfg.lora.task.r, len(ALL_TASKS)
    shared = rs * ((hid + kv) * 2 + 2 * hid)  # k, v, o
    if task_specific:
        return n_layers * (shared + t * rt * 2 * hid)  # q: one adapter per task
    return n_layers * (shared + rs * 2 * hid)  # q gets the shared set


def test_only_adapters_and_mapping_train(build_model, config):
    model, tok, cfg = build_model(random_b=False)
    d, hid, h = model.user_emb.shape[1], model.hidden_size, cfg.model.meta_hidden
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == set(model.trainable_named_parameters())
    assert all(n.startswith("mapper.") or ".lora_" in n for n in names)
    proj = d * hid + hid + hid * hid + hid + hid  # Linear - GELU - Linear, gain
    mapper = (d * h + h) + (h * d * d + d * d) + d * d + 2 * proj  # MetaNet, W_g, P_u, P_i
    lora = _lora_count(model, cfg)
    assert sum(p.numel() for p in model.trainable_parameters()) == lora + mapper
    assert sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n) == lora
    assert not model.user_emb.requires_grad and not model.item_emb.requires_grad
    assert "user_emb" not in model.state_dict() and "item_emb" not in model.state_dict()
    # the collm ablation: one shared mapping, one shared LoRA (no task adapters)
    collm, _, ccfg = build_model(config(mapping="collm"), random_b=False)
    assert not any(m.has_task for m in collm.llm.modules() if isinstance(m, MultiLoRALinear))
    assert sum(p.numel() for n, p in collm.named_parameters() if ".lora_" in n) == _lora_count(collm, ccfg, False)
    assert {n.split(".")[1] for n in collm.trainable_named_parameters() if n.startswith("mapper.")} == {"shared_proj"}
    # the text-only baseline has no mapping at all
    text, _, _ = build_model(config(cf_fusion=False), random_b=False)
    assert text.mapper is None and all(".lora_" in n for n in text.trainable_named_parameters())


def test_gradients_reach_mapping_and_adapters_not_the_llm(build_model, samples):
    model, tok, cfg = build_model()
    batch = _batch(model, tok, cfg, samples)
    model.train()
    model(batch).loss.backward()
    assert {s["task"] for s in samples} == set(ALL_TASKS)  # so every task adapter gets a gradient
    for n, p in model.trainable_named_parameters().items():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, n
        if ".lora_task_" in n:
            assert all(torch.count_nonzero(p.grad[t]) > 0 for t in range(len(ALL_TASKS))), n
    for n, p in model.named_parameters():
        if n not in model.trainable_named_parameters():
            assert not p.requires_grad and p.grad is None, n
    assert model.user_emb.grad is None and model.item_emb.grad is None


def test_loss_matches_hf_and_per_task_means(build_model, samples):
    model, tok, cfg = build_model()
    cfg.train.curriculum = False
    batch = _batch(model, tok, cfg, samples)
    out = model(batch)
    embeds = model.embed(batch["input_ids"], batch)
    with model.ctx.row_tasks(batch["task_ids"], embeds.shape[1]):
        hf = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(out.loss, hf.loss, rtol=1e-5, atol=1e-5)
    logp = torch.log_softmax(hf.logits[:, :-1].float(), -1)
    tgt = batch["labels"][:, 1:]
    sel = tgt != -100
    tok_lp = logp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1) * sel
    assert set(out.task_losses) == {s["task"] for s in samples}
    n_tok = 0
    for task, val in out.task_losses.items():
        rows = torch.tensor([s["task"] == task for s in samples])
        want = -tok_lp[rows].sum() / sel[rows].sum()
        torch.testing.assert_close(val, want, rtol=1e-5, atol=1e-5)
        n_tok += int(sel[rows].sum())
    assert out.num_tokens == n_tok
    torch.testing.assert_close(model.sequence_logprob(batch), tok_lp.sum(1), rtol=1e-5, atol=1e-5)


def test_curriculum_mixes_text_and_cf_losses(build_model, samples):
    assert curriculum_weight(0, 100) == pytest.approx(1 / (1 + math.exp(-8)))
    assert curriculum_weight(50, 100) == pytest.approx(0.5)
    assert curriculum_weight(100, 100) == pytest.approx(1 / (1 + math.exp(8)))
    assert curriculum_weight(10**9, 10) < 1e-20  # no overflow
    model, tok, cfg = build_model()
    cfg.train.curriculum_mode = "mix"  # both prompts every step (test_candidate_scoring covers "sample")
    batch = _batch(model, tok, cfg, samples)
    cf_only = model(batch)  # no step: CF loss only
    out = model(batch, step=30, total_steps=100)
    w = curriculum_weight(30, 100)
    assert out.text_weight == pytest.approx(w)
    nll_t, _ = model._token_nll(batch, text=True)
    torch.testing.assert_close(out.loss, w * nll_t.mean() + (1 - w) * cf_only.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.text_loss, nll_t.mean())
    with pytest.raises(ValueError, match="text-only twin"):
        model(_batch(model, tok, cfg, samples, text_twin=False), step=1, total_steps=10)


def test_text_only_baseline_runs_on_the_twin(build_model, config, samples):
    model, tok, cfg = build_model(config(cf_fusion=False))
    batch = _batch(model, tok, cfg, samples)
    assert (batch["input_ids"] != model.placeholder_id).all()
    out = model(batch, step=0, total_steps=10)  # curriculum is moot without CF
    assert out.text_loss is None and torch.isfinite(out.loss)
    assert len(model.generate(batch, 3)) == len(samples)


def test_a_few_steps_reduce_the_loss(build_model, samples):
    model, tok, cfg = build_model(random_b=False)
    # An untrained tiny LM's tied embeddings (std 0.02) cap its logits near +-0.6, so no adapter
    # could move the loss much; scale them like a trained LM's (frozen, so this is setup only).
    with torch.no_grad():
        model.llm.get_input_embeddings().weight.mul_(5.0)
    cfg.train.curriculum = False
    batch = _batch(model, tok, cfg, samples)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    model.train()
    losses = []
    for _ in range(8):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_answer_logits_and_yes_probability(build_model, sample):
    model, tok, cfg = build_model()
    rows = [sample("ctr", user=1, n=0), sample("ctr", user=2, n=3), sample("rating", user=3, n=2)]
    batch = _batch(model, tok, cfg, rows)
    logits = model.answer_logits(batch)
    embeds = model.embed(batch["input_ids"], batch)
    with torch.no_grad(), model.ctx.row_tasks(batch["task_ids"], embeds.shape[1]):
        full = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    for r in range(3):
        torch.testing.assert_close(logits[r], full[r, batch["prompt_lengths"][r] - 1].float(), rtol=1e-5, atol=1e-5)
    yes, no = target_token_ids(tok, "Yes")[0], target_token_ids(tok, "No")[0]
    p = model.yes_probability(batch, yes, no)
    torch.testing.assert_close(p, torch.softmax(logits[:, [yes, no]], -1)[:, 0])
    assert ((p > 0) & (p < 1)).all()


def _greedy_no_cache(model, batch, row, steps):
    """Reference: one row alone, full forward without a cache at every step."""
    plen = int(batch["prompt_lengths"][row])
    single = {
        "input_ids": batch["input_ids"][row : row + 1, :plen],
        "user_ids": batch["user_ids"][row : row + 1],
        "history_ids": batch["history_ids"][row : row + 1],
        "history_mask": batch["history_mask"][row : row + 1],
        "item_ids": batch["item_ids"][batch["item_rows"] == row],
        "item_rows": torch.zeros(int((batch["item_rows"] == row).sum()), dtype=torch.long),
        "task_ids": batch["task_ids"][row : row + 1],
    }
    emb = model.embed(single["input_ids"], single)
    out = []
    for _ in range(steps):
        with model.ctx.row_tasks(single["task_ids"], emb.shape[1]):
            logits = model.llm(inputs_embeds=emb, use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        if nxt == model.eos_id:
            break
        out.append(nxt)
        emb = torch.cat([emb, model.llm.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
    return out


@torch.no_grad()
def test_generate_with_cache_equals_greedy_without_cache(build_model, sample):
    model, tok, cfg = build_model()
    with torch.no_grad():  # larger adapters so per-row task selection visibly matters
        for n, p in model.named_parameters():
            if ".lora_" in n and n.endswith("B"):
                p.mul_(10)
    rows = [sample("topk", user=1, n=1), sample("ctr", user=2, n=0), sample("explanation", user=3, n=4)]
    batch = _batch(model, tok, cfg, rows)
    assert len(set(batch["prompt_lengths"].tolist())) == 3
    gen = model.generate(batch, max_new_tokens=6)
    for r in range(3):
        assert gen[r] == _greedy_no_cache(model, batch, r, 6), r
    assert model.ctx.segments is None


def test_save_and_load_trainable_round_trip(build_model, samples, tmp_path, config):
    model, tok, cfg = build_model(seed=0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = model.save_trainable(tmp_path / "ckpt" / "trainable.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["trainable.safetensors"]
    other, _, _ = build_model(seed=5)
    batch = _batch(model, tok, cfg, samples)
    assert not torch.allclose(other(batch).loss, model(batch).loss)
    other.load_trainable(path)
    for n, p in other.trainable_named_parameters().items():
        assert torch.equal(p, model.trainable_named_parameters()[n]), n
    torch.testing.assert_close(other(batch).loss, model(batch).loss)
    collm, _, _ = build_model(config(mapping="collm"))
    with pytest.raises(ValueError, match="does not match this model"):
        collm.load_trainable(path)
    with pytest.raises(FileNotFoundError):
        other.load_trainable(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_triton_backend_matches_torch_through_the_model(build_model, config, samples):
    """kernels.backend=triton (interpreted on CPU) gives the torch backend's loss and gradients."""
    from ckf_dist.kernels.backend import triton_unavailable_reason

    if triton_unavailable_reason("cpu") is not None:
        pytest.skip(triton_unavailable_reason("cpu"))
    results = {}
    for backend in ("torch", "triton"):
        cfg = config()
        cfg.kernels.backend = backend
        model, tok, cfg = build_model(cfg)
        batch = _batch(model, tok, cfg, samples[:3], text_twin=False)
        out = model(batch)
        out.loss.backward()
        assert model.ctx.backend == backend
        results[backend] = (out.loss.detach(), {n: p.grad for n, p in model.trainable_named_parameters().items()})
    (l_t, g_t), (l_k, g_k) = results["torch"], results["triton"]
    torch.testing.assert_close(l_k, l_t, rtol=1e-5, atol=1e-5)
    for n in g_t:
        torch.testing.assert_close(g_k[n], g_t[n], rtol=1e-4, atol=1e-6, msg=n)


class _Zero3Emulation:
    """ZeRO-3's fetch rule without DeepSpeed: a parameter holds data only while a module that owns
    it directly (or, for a leaf module, any ancestor up to it) is inside its forward."""

    def __init__(self, model, leaf_types):
        self.data = {}
        self.hooks = []
        self.leaf_types = tuple(leaf_types)
        for p in model.parameters():
            self.data[p] = p.data
            p.data = torch.empty(0, dtype=p.dtype)
        for m in model.modules():
            self.hooks.append(m.register_forward_pre_hook(self._gather))
            self.hooks.append(m.register_forward_hook(self._release))

    def _params(self, m):
        return m.parameters(recurse=isinstance(m, self.leaf_types))

    def _gather(self, m, args):
        for p in self._params(m):
            p.data = self.data[p]

    def _release(self, m, args, out):
        for p in self._params(m):
            p.data = torch.empty(0, dtype=p.dtype)

    def close(self):
        for h in self.hooks:
            h.remove()
        for p, d in self.data.items():
            p.data = d


@torch.no_grad()
def test_forward_reads_parameters_only_where_zero3_gathers_them(build_model, samples):
    model, tok, cfg = build_model()
    batch = _batch(model, tok, cfg, samples[:4], text_twin=False)
    want_loss = model(batch).loss
    want_gen = model.generate(batch, 3)
    # Every parameter is released outside its own module's forward: the layers whose fused ops
    # take a child's weights call that child instead, so the results are unchanged.
    emu = _Zero3Emulation(model, ())
    try:
        torch.testing.assert_close(model(batch).loss, want_loss)
        assert model.generate(batch, 3) == want_gen
    finally:
        emu.close()


@pytest.mark.parametrize("mode", ["sample", "mix"])
def test_activation_checkpointing_gives_the_gradients_of_the_plain_run(build_model, samples, mode):
    """The recomputed forward in backward finds this forward's task segments (the Multi-LoRA
    context is replayed): a few training steps, with dropout, match the run without checkpoints."""
    from ckf_dist.train.engine import LocalEngine

    def steps(checkpointing: bool):
        cfg = small_config()
        cfg.lora.shared.dropout = cfg.lora.task.dropout = 0.1
        cfg.train.curriculum_mode = mode
        cfg.train.activation_checkpointing = checkpointing
        cfg.train.steps = 3
        model, tok, cfg = build_model(cfg)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules()) == checkpointing
        model.train()
        engine = LocalEngine(model, cfg)
        batch = _batch(model, tok, cfg, samples)
        torch.manual_seed(7)
        grads, recomputed = [], 0
        layer = model.llm.get_submodule(model.lora_modules[0])
        for step in range(cfg.train.steps):
            out = model(batch, step=step, total_steps=cfg.train.steps)
            calls = []
            handle = layer.register_forward_hook(lambda *a: calls.append(1))
            engine.backward(out.loss)
            handle.remove()
            recomputed += len(calls)
            grads.append({n: p.grad.clone() for n, p in model.trainable_named_parameters().items() if p.grad is not None})
            engine.step()
        return grads, {n: p.detach().clone() for n, p in model.trainable_named_parameters().items()}, recomputed

    plain_grads, plain_params, plain_recomputed = steps(False)
    ckpt_grads, ckpt_params, ckpt_recomputed = steps(True)
    assert plain_recomputed == 0 and ckpt_recomputed > 0  # backward really re-ran the adapters' forward
    for a, b in zip(plain_grads, ckpt_grads):
        assert a.keys() == b.keys() and a
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-7, msg=n)
    for n in plain_params:
        torch.testing.assert_close(ckpt_params[n], plain_params[n], rtol=1e-5, atol=1e-7, msg=n)


def test_checkpointing_without_the_context_replay_loses_the_task_ids(build_model, samples):
    cfg = small_config()
    model, tok, cfg = build_model(cfg)
    enable = getattr(model.llm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})  # no context_fn
    else:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    out = model(_batch(model, tok, cfg, samples))
    with pytest.raises(RuntimeError, match="called without task ids"):
        out.loss.backward()
