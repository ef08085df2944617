"""init_tiny writes a loadable HF directory; load_llm registers the placeholder or fails in one line."""

import json
import shutil

import pytest
import torch

from ckf_dist.models.llm import ModelDirError, ensure_placeholder, load_llm
from ckf_dist.models.tiny import init_tiny, train_tokenizer

PH = "<|cf|>"


def test_init_tiny_writes_a_loadable_hf_directory(tiny_dir, config):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "ckf_tiny.json"} <= names
    assert not any(".tmp" in p.name or ".old" in p.name for p in tiny_dir.parent.iterdir())
    info = json.loads((tiny_dir / "ckf_tiny.json").read_text())
    assert info["steps"] == 3 and info["first_loss"] > 0
    model, tok = load_llm(tiny_dir, PH)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == config().tiny.hidden_size
    pid = tok.convert_tokens_to_ids(PH)
    assert tok(PH, add_special_tokens=False)["input_ids"] == [pid]
    ids = tok(f"The user {PH} liked {PH}.", add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(pid) == 2
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.padding_side == "right"
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # no resize was needed
    out = model(input_ids=torch.tensor([ids]))
    assert torch.isfinite(out.logits).all()


def test_init_tiny_is_seeded_and_replaces_atomically(tmp_path, config, tiny_corpus):
    from safetensors.torch import load_file

    out = tmp_path / "llm"
    init_tiny(tiny_corpus, config(), out)
    first = load_file(str(out / "model.safetensors"))
    init_tiny(tiny_corpus, config(), out)  # overwrite in place
    second = load_file(str(out / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm"]
    with pytest.raises(ValueError, match="no training text"):
        init_tiny(["", "  "], config(), tmp_path / "empty")


def test_load_llm_errors_are_one_line(tiny_dir, tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope"
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    cases["no weights"] = no_weights
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_dir, no_tok)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink()
    cases["no tokenizer"] = no_tok
    no_cfg = tmp_path / "no_cfg"
    shutil.copytree(tiny_dir, no_cfg)
    (no_cfg / "config.json").unlink()
    cases["config.json"] = no_cfg
    bad_tok = tmp_path / "bad_tok"
    shutil.copytree(tiny_dir, bad_tok)
    (bad_tok / "tokenizer.json").write_text("{not json")
    cases["cannot load the tokenizer"] = bad_tok
    for word, path in cases.items():
        with pytest.raises(ModelDirError) as e:
            load_llm(path, PH)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg
        if word != "missing":
            assert word in msg, msg


def test_load_llm_adds_a_missing_placeholder_and_resizes(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(["a small corpus of words", "another line"], 300, "<|other|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = load_llm(tmp_path / "m", PH)
    pid = tok2.convert_tokens_to_ids(PH)
    assert pid == len(tok) and tok2(f"x {PH} y", add_special_tokens=False)["input_ids"].count(pid) == 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok2)
    # spare embedding rows (e.g. Qwen2's padded vocab): no resize
    cfg.vocab_size = len(tok) + 8
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "padded")
    tok.save_pretrained(tmp_path / "padded")
    model, tok3 = load_llm(tmp_path / "padded", PH)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 8


def test_a_tokenizer_without_room_is_a_one_line_error():
    class Full:
        def get_vocab(self):
            return {}

        def add_tokens(self, *a, **k):
            raise RuntimeError("vocabulary is fixed\nmore detail")

    with pytest.raises(ModelDirError, match="no room") as e:
        ensure_placeholder(None, Full(), PH, where="model.path X")
    assert "\n" not in str(e.value)
