"""The baseline modes (model.mapping=binllm | cora | allmrec) in the CKF model: what reaches the
LLM, which adapters exist and what trains."""

import numpy as np
import pytest
import torch

from ckf_dist.cf.binarize import TextCodes, encode_code
from ckf_dist.cf.tables import CFTables
from ckf_dist.data.collate import Collator
from model_samples import CF_DIM, NUM_ITEMS, NUM_USERS, PH, small_config


def _train_steps(model, batch, steps=3, lr=1e-2):
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def _codes(cf_tables, bits=12, compress=False):
    users, items = (t.numpy() for t in cf_tables)
    tables = CFTables(users, items, [f"u{i}" for i in range(NUM_USERS)], [f"i{i}" for i in range(NUM_ITEMS)])
    rng = np.random.default_rng(0)
    w = {"user.weight": rng.normal(size=(bits, CF_DIM)).astype(np.float32), "user.bias": np.zeros(bits, np.float32),
         "item.weight": rng.normal(size=(bits, CF_DIM)).astype(np.float32), "item.bias": np.zeros(bits, np.float32)}
    return TextCodes(tables, w, compress)


@pytest.mark.parametrize("compress", [False, True], ids=["bits", "dot-decimal"])
def test_binllm_writes_each_rows_codes_where_its_placeholders_were(build_model, samples, cf_tables, compress):
    cfg = small_config(mapping="binllm", binllm_compress=compress, max_length=1024)
    model, tok, cfg = build_model(cfg)
    codes = _codes(cf_tables, compress=compress)
    batch = Collator(tok, cfg, model.placeholder_id, codes=codes)(samples)
    plain = Collator(tok, small_config(max_length=1024), model.placeholder_id)(samples)  # the prompts with placeholders
    assert batch["truncated"] == 0
    assert not (batch["input_ids"] == model.placeholder_id).any() and "cf_rows" not in batch
    for r, s in enumerate(samples):
        want = codes.sample_codes([s])[0]
        assert len(want) == 1 + len(s["items"])
        # the row's user code is its user vector's code; its item codes are its items', in order
        assert want[0] == encode_code(codes.user_bits([s["user"]], [s["history"]])[0], compress)
        assert want[1:] == [encode_code(codes.item_bits[i], compress) for i in s["items"]]
        ids = plain["input_ids"][r, : plain["prompt_lengths"][r]].tolist()
        pieces, k = [], 0
        for t in ids:  # rebuild the expected token row: each placeholder -> the tokens of its code
            if t == model.placeholder_id:
                pieces += tok(want[k], add_special_tokens=False)["input_ids"]
                k += 1
            else:
                pieces.append(t)
        assert batch["input_ids"][r, : batch["prompt_lengths"][r]].tolist() == pieces
    # one shared LoRA, no mapper, no soft token; the text-only twin comes for the curriculum
    assert model.mapper is None and "text_input_ids" in batch
    names = model.trainable_named_parameters()
    assert names and all(".lora_shared_" in n for n in names)
    losses = _train_steps(model, batch)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_binllm_truncation_keeps_every_code(build_model, cf_tables, sample):
    cfg = small_config(mapping="binllm")
    cfg.model.max_length = 240
    model, tok, cfg = build_model(cfg)
    codes = _codes(cf_tables, bits=16)
    s = sample("topk", user=3, n=3, ncand=3)
    s["history"] = list(range(12))
    s["prompt"] = s["prompt"].replace("The user liked these items: ", "The user liked these items: " + "classic story " * 30)
    batch = Collator(tok, cfg, model.placeholder_id, codes=codes, text_twin=False)([s])
    assert batch["truncated"] == 1 and batch["input_ids"].shape[1] <= 240
    row = batch["input_ids"][0].tolist()
    for code in codes.sample_codes([s])[0]:
        c = tok(code, add_special_tokens=False)["input_ids"]
        assert any(row[j : j + len(c)] == c for j in range(len(row))), code


@pytest.mark.parametrize("kind", ["sasrec", "din"])
def test_sequential_backbone_gives_each_row_the_encoding_of_its_history(tiny_dir, samples, kind):
    """cf.model=sasrec|din: the user slot of a row gets the mapping of the backbone's encoding of the
    row's own history (DIN against the row's items), the vector CFTables.user_vectors computes for
    the CF baselines and BinLLM's codes."""
    from ckf_dist.cf.sequential import SequentialCF, build_encoder
    from ckf_dist.models.ckf import CKFModel
    from ckf_dist.models.llm import load_llm

    torch.manual_seed(0)
    seq = SequentialCF(kind, NUM_ITEMS, CF_DIM, max_len=6, blocks=1, heads=2, dropout=0.0).eval()
    state = {k: v.detach().numpy().copy() for k, v in seq.state_dict().items() if not k.startswith("item_emb.")}
    meta = {"encoder": {"kind": kind, "dim": CF_DIM, "max_len": 6, "blocks": 1, "heads": 2}}
    items = seq.item_emb.weight.detach().numpy().copy()
    tables = CFTables(np.zeros((NUM_USERS, CF_DIM), np.float32), items, [f"u{i}" for i in range(NUM_USERS)],
                      [f"i{i}" for i in range(NUM_ITEMS)], meta=meta, encoder=state)
    cfg = small_config()
    llm, tok = load_llm(tiny_dir, cfg.model.placeholder_token)
    model = CKFModel(llm, tok, torch.from_numpy(tables.user_emb), torch.from_numpy(items), cfg,
                     user_encoder=build_encoder(tables)).eval()
    # two rows of one user with different histories
    rows = [dict(samples[0], user=3, history=[1, 2, 3]), dict(samples[0], user=3, history=[7, 8], key="b")]
    batch = Collator(tok, cfg, model.placeholder_id)(rows + samples)
    e_hist = model.item_emb[batch["history_ids"]]
    got = model.row_users(batch, e_hist)
    all_rows = rows + samples
    want = tables.user_vectors([s["user"] for s in all_rows], [s["history"] for s in all_rows], [s["items"] for s in all_rows])
    torch.testing.assert_close(got.double(), torch.from_numpy(want), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], got[1])
    users, _ = model.cf_vectors(batch)
    torch.testing.assert_close(users, model.mapper.map_users(got, e_hist, batch["history_mask"]))
    # the encoder is frozen and not part of the trained state
    assert not any(n.startswith("user_encoder.") for n in model.trainable_named_parameters())
    assert all(not p.requires_grad for p in model.user_encoder.parameters())


def _cora_model(build_model, backend="torch"):
    cfg = small_config(mapping="cora")
    cfg.kernels.backend = backend
    model, tok, cfg = build_model(cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero G_B: else every generated delta is zero
        for n, p in model.named_parameters():
            if n.endswith("lora_row_B.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tok, cfg


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cora_per_row_delta_equals_a_peft_lora_with_that_rows_weights(build_model, tiny_dir, samples, backend):
    """Every row of a mixed batch gets exactly the LoRA its CF vectors generate: the model's answer
    logits of row b equal a PEFT LoRA model whose lora_A / lora_B on every wrapped module hold row
    b's generated factors, run on row b's prompt alone."""
    from peft import LoraConfig, get_peft_model

    from ckf_dist.models.llm import load_llm

    model, tok, cfg = _cora_model(build_model, backend)
    batch = Collator(tok, cfg, model.placeholder_id)(samples)
    assert not (batch["input_ids"] == model.placeholder_id).any()  # the prompt stays text only
    assert "text_input_ids" not in batch  # no curriculum on a frozen LLM
    with torch.no_grad():
        logits = model.answer_logits(batch)
        codes = model.row_codes(batch)
    r, alpha = cfg.lora.task.r, cfg.lora.task.alpha
    assert codes.shape == (len(samples), r, cfg.model.meta_hidden)
    assert set(model.lora_modules) and all(n.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) for n in model.lora_modules)
    base_llm, _ = load_llm(tiny_dir, cfg.model.placeholder_token)
    peft = get_peft_model(base_llm, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(model.lora_modules),
                                               lora_dropout=0.0, bias="none")).eval()
    plain = []
    for b in range(len(samples)):
        with torch.no_grad():
            for name in model.lora_modules:
                layer = model.llm.get_submodule(name)
                target = peft.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(layer.lora_row_A(codes[b]))  # [r, d_in]
                target.lora_B["default"].weight.copy_(layer.lora_row_B(codes[b]).t())  # [d_out, r]
            ids = batch["input_ids"][b, : batch["prompt_lengths"][b]].unsqueeze(0)
            want = peft(input_ids=ids).logits[0, -1].float()
            with peft.disable_adapter():
                plain.append(peft(input_ids=ids).logits[0, -1].float())
        torch.testing.assert_close(logits[b], want, rtol=1e-4, atol=1e-4)
    # the deltas matter: without them the logits differ
    assert max(float((logits[b] - plain[b]).abs().max()) for b in range(len(samples))) > 1e-3


def test_cora_trains_the_generator_and_its_maps_only(build_model, samples):
    model, tok, cfg = _cora_model(build_model)
    batch = Collator(tok, cfg, model.placeholder_id)(samples)
    names = set(model.trainable_named_parameters())
    assert any(n.startswith("mapper.") for n in names) and any(".lora_row_" in n for n in names)
    assert not any(".lora_shared_" in n or ".lora_task_" in n for n in names) and not model.has_static_adapters
    frozen = {n: p.detach().clone() for n, p in model.llm.named_parameters() if ".lora_" not in n}
    losses = _train_steps(model, batch)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.llm.named_parameters() if n in frozen)


def test_allmrec_projects_the_user_vector_and_the_aligned_items_into_a_frozen_llm(build_model, samples):
    model, tok, cfg = build_model(small_config(mapping="allmrec"))
    batch = Collator(tok, cfg, model.placeholder_id)(samples)
    assert "text_input_ids" not in batch  # no curriculum: the twin path would train nothing
    users, items = model.cf_vectors(batch)
    e_hist = model.item_emb[batch["history_ids"]]
    torch.testing.assert_close(users, model.mapper.user_proj(model.row_users(batch, e_hist)))
    torch.testing.assert_close(items, model.mapper.item_proj(model.item_tokens[batch["item_ids"]]))  # the joint space
    assert model.item_tokens.shape[1] != model.item_emb.shape[1]
    assert model.lora_modules == [] and not model.has_static_adapters
    names = set(model.trainable_named_parameters())
    assert names and all(n.startswith("mapper.user_proj.") or n.startswith("mapper.item_proj.") for n in names)
    frozen = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
    losses = _train_steps(model, batch)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.llm.named_parameters())


def test_text_embeddings_are_the_mean_of_the_last_hidden_states(tiny_dir):
    from ckf_dist.models.llm import load_llm
    from ckf_dist.data.splits import item_texts
    from ckf_dist.models.text_embed import mean_pooled_embeddings

    llm, tok = load_llm(tiny_dir, PH)
    texts = item_texts(["guitar string", "warm pedal"], ["", "a loud classic tone"])
    assert texts == ["guitar string", "warm pedal, a loud classic tone"]
    emb = mean_pooled_embeddings(llm, tok, texts, batch_size=2)
    for k, t in enumerate(texts):  # one text at a time: no padding at all
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            want = llm.get_decoder()(input_ids=ids).last_hidden_state[0].mean(0)
        torch.testing.assert_close(torch.from_numpy(emb[k]), want, rtol=1e-4, atol=1e-5)


def test_cora_generated_factors_start_at_a_plain_loras_scale():
    """The generated A of a row has PEFT's kaiming-uniform A variance (1 / (3 d_in)) when the
    generator's width equals d_in; without the code scale it is h times larger (the divergence
    of the ML-100K run, modules/cora.py)."""
    from ckf_dist.modules.cora import CoRAGenerator
    from ckf_dist.modules.multi_lora import _init_a

    torch.manual_seed(0)
    h = d_in = 128
    gen = CoRAGenerator(d=16, hidden=h, rank=8)
    g_a = torch.empty(d_in, h)
    _init_a(g_a)  # how MultiLoRALinear initialises its G_A
    z = gen(torch.randn(256, 16), torch.randn(256, 16))  # [B, r, h]
    a = z @ g_a.T  # [B, r, d_in]
    peft_a = torch.empty(8, d_in)
    _init_a(peft_a)
    assert a.var().item() == pytest.approx(1 / (3 * d_in), rel=0.15)
    assert peft_a.var().item() == pytest.approx(1 / (3 * d_in), rel=0.15)
