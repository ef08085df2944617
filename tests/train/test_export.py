"""PEFT export of the Multi-LoRA adapters: each task's directory loads with
`peft.PeftModel.from_pretrained` on a fresh copy of the base LLM and reproduces the CKF model's
logits for that task's rows (text-only prompts, dropout off).

The base LLM is a tiny random LlamaForCausalLM built here (GQA, 2 layers; nothing downloaded).
The LoRA layout mixes every case the exporter handles: modules with shared + task adapters
(rank concatenation), shared only, task only, and different scales per set.
"""

import json

import pytest
import torch

from ckf_dist.config import ALL_TASKS, load_config
from ckf_dist.train.export import export_peft_adapters

TEXTS = [
    "a quiet movie about a dog and a cat", "the guitar strings sound great", "user liked the story",
    "bad acting but good music", "five stars for this drama", "the item arrived broken",
] * 4


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"run.dir={tmp_path / 'run'}", f"model.path={tmp_path / 'base'}", "model.meta_hidden=8", "tiny.vocab_size=300",
        "tasks=[ctr,rating,explanation]",
        # q_proj: shared + task; k/v/o_proj: shared only; up_proj: task only. Different scales:
        # shared alpha/r = 6/3 = 2, task alpha/r = 16/2 = 8.
        "lora.shared.targets=[q_proj,k_proj,v_proj,o_proj]", "lora.shared.r=3", "lora.shared.alpha=6", "lora.shared.dropout=0.1",
        "lora.task.targets=[q_proj,up_proj]", "lora.task.r=2", "lora.task.alpha=16", "lora.task.dropout=0.1",
        *extra,
    ])


def _build(tmp_path, cfg):
    """(CKFModel with random non-zero adapters, tokenizer); the base LLM is saved to model.path first."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ckf_dist.models.ckf import CKFModel
    from ckf_dist.models.tiny import train_tokenizer
    from ckf_dist.modules.multi_lora import MultiLoRALinear

    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS, 300, cfg.model.placeholder_token)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )).eval()
    llm.save_pretrained(cfg.model.path)
    model = CKFModel(llm, tok, torch.randn(7, 4), torch.randn(9, 4), cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MultiLoRALinear):
                for p in (m.lora_shared_B, m.lora_task_B):
                    if p is not None:
                        p.normal_(0.0, 0.3)
    return model, tok


def _batch(tok, n_rows):
    enc = tok([TEXTS[i % len(TEXTS)] for i in range(n_rows)], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _ckf_logits(model, ids, attn, task_ids):
    """Logits of the CKF-wrapped LLM, each row through its own task adapter (+ shared)."""
    with model.ctx.row_tasks(task_ids, ids.shape[1]):
        return model.llm(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()


@torch.no_grad()
def _peft_logits(base_dir, adapter_dir, ids, attn):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    fresh = LlamaForCausalLM.from_pretrained(base_dir).eval()
    peft_model = PeftModel.from_pretrained(fresh, str(adapter_dir)).eval()
    return peft_model(input_ids=ids, attention_mask=attn).logits.float(), fresh


def _check_task_dirs(model, tok, cfg, dirs):
    assert [d.name for d in dirs] == list(cfg.tasks)
    ids, attn = _batch(tok, 6)
    # rows cycle over the trained tasks: a mixed batch, as in training
    task_ids = torch.tensor([ALL_TASKS.index(cfg.tasks[i % len(cfg.tasks)]) for i in range(ids.shape[0])])
    ref = _ckf_logits(model, ids, attn, task_ids)
    valid = attn.bool()
    outputs = {}
    for d in dirs:
        t = ALL_TASKS.index(d.name)
        rows = (task_ids == t).nonzero()[:, 0]
        got, _ = _peft_logits(cfg.model.path, d, ids[rows], attn[rows])
        want = ref[rows]
        m = valid[rows]
        assert torch.allclose(got[m], want[m], atol=1e-5, rtol=1e-4), (d.name, (got[m] - want[m]).abs().max())
        outputs[d.name] = got[m]
    return outputs


def test_each_task_adapter_reproduces_ckf_logits(tmp_path):
    cfg = _cfg(tmp_path)
    model, tok = _build(tmp_path, cfg)
    trainable = {k: v.detach().cpu().clone() for k, v in model.trainable_named_parameters().items()}
    assert any(k.startswith("mapper.") for k in trainable)  # ignored by the exporter
    out = tmp_path / "final" / "peft"
    dirs = export_peft_adapters(trainable, cfg, out)
    _check_task_dirs(model, tok, cfg, dirs)

    # the adapters change the output, and differently per task (rows of one task, every adapter)
    from transformers import LlamaForCausalLM

    ids, attn = _batch(tok, 2)
    base = LlamaForCausalLM.from_pretrained(cfg.model.path).eval()(input_ids=ids, attention_mask=attn).logits
    per_task = [_peft_logits(cfg.model.path, d, ids, attn)[0] for d in dirs]
    assert (per_task[0] - base).abs().max() > 1e-2
    assert (per_task[0] - per_task[1]).abs().max() > 1e-2

    # the layout: PEFT key names, ranks concatenated where both sets live, patterns for the rest
    from safetensors.torch import load_file

    d = dirs[0]
    conf = json.loads((d / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM"
    assert conf["base_model_name_or_path"] == str(cfg.model.path)
    # default r / alpha = the shared set's (3, 6); q_proj: 2 + 3 ranks at the task scale 8; up_proj: task only
    assert (conf["r"], conf["lora_alpha"]) == (3, 6)
    assert conf["rank_pattern"] == {"q_proj": 5, "up_proj": 2} and conf["alpha_pattern"] == {"q_proj": 40, "up_proj": 16}
    w = load_file(str(d / "adapter_model.safetensors"))
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert w[f"{q}.lora_A.weight"].shape == (2 + 3, 32) and w[f"{q}.lora_B.weight"].shape == (32, 2 + 3)
    assert w["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (3, 32)
    assert w["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"].shape == (48, 2)
    assert not any("mapper" in k or "lora_shared" in k or "lora_task" in k for k in w)
    assert len(w) == 2 * (2 * 5)  # 2 layers x 5 modules, A and B
    # the task block of B is copied as-is (s = s_task), the shared block rescaled by s_sh / s_t
    ctr = ALL_TASKS.index("ctr")
    assert torch.equal(w[f"{q}.lora_B.weight"][:, :2], trainable[f"llm.{q[len('base_model.model.'):]}.lora_task_B"][ctr])
    meta = json.loads((d / "ckf_adapter.json").read_text())
    assert meta["task"] == d.name and meta["task_index"] == ALL_TASKS.index(d.name)
    # written atomically: no temporary folder left beside it; a second export replaces the first
    assert sorted(p.name for p in out.parent.iterdir()) == ["peft"]
    dirs2 = export_peft_adapters(trainable, cfg, out)
    assert dirs2 == dirs and sorted(p.name for p in out.parent.iterdir()) == ["peft"]


def test_equal_scales_and_no_task_adapters(tmp_path):
    # equal scales on both sets: one common scale, nothing rescaled
    cfg = _cfg(tmp_path, "lora.shared.alpha=12", "lora.task.alpha=8")  # 12/3 = 8/2 = 4
    model, tok = _build(tmp_path, cfg)
    trainable = {k: v.detach().cpu().clone() for k, v in model.trainable_named_parameters().items()}
    dirs = export_peft_adapters(trainable, cfg, tmp_path / "a")
    _check_task_dirs(model, tok, cfg, dirs)

    # lora.task_specific=false: every task gets the shared adapter (on the union of the targets)
    cfg2 = _cfg(tmp_path / "b", "lora.task_specific=false")
    (tmp_path / "b").mkdir()
    model2, tok2 = _build(tmp_path / "b", cfg2)
    trainable2 = {k: v.detach().cpu().clone() for k, v in model2.trainable_named_parameters().items()}
    dirs2 = export_peft_adapters(trainable2, cfg2, tmp_path / "b" / "peft")
    outs = _check_task_dirs(model2, tok2, cfg2, dirs2)
    assert len(outs) == 3
    from safetensors.torch import load_file

    a = load_file(str(dirs2[0] / "adapter_model.safetensors"))
    b = load_file(str(dirs2[1] / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_partitioned_or_missing_tensors(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ValueError, match="gather"):
        export_peft_adapters({"llm.model.layers.0.self_attn.q_proj.lora_shared_A": torch.empty(0),
                              "llm.model.layers.0.self_attn.q_proj.lora_shared_B": torch.empty(0)}, cfg, tmp_path / "x")
    with pytest.raises(ValueError, match="no Multi-LoRA"):
        export_peft_adapters({"mapper.w": torch.ones(2)}, cfg, tmp_path / "x")
    with pytest.raises(ValueError, match="both"):
        export_peft_adapters({"llm.m.q_proj.lora_shared_A": torch.ones(3, 4)}, cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_rank_patterns_by_leaf_name_or_full_path():
    from ckf_dist.train.export import _patterns

    # every q_proj agrees: keyed by the leaf name; k_proj differs between layers: escaped full paths
    ranks = {"model.layers.0.self_attn.q_proj": 5, "model.layers.1.self_attn.q_proj": 5,
             "model.layers.0.self_attn.k_proj": 3, "model.layers.1.self_attn.k_proj": 4, "model.layers.0.mlp.up_proj": 3}
    assert _patterns(ranks, 3) == {"q_proj": 5, r"model\.layers\.1\.self_attn\.k_proj": 4}
