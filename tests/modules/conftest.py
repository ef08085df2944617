"""Tiny random HF causal LMs built in the test (no download) for the Multi-LoRA tests."""

import pytest
import torch


def _llama(vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def _qwen2(vocab: int = 97):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(cfg)


def _mistral(vocab: int = 97):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, head_dim=8)
    return MistralForCausalLM(cfg)


BUILDERS = {"llama": _llama, "qwen2": _qwen2, "mistral": _mistral}


@pytest.fixture(params=sorted(BUILDERS))
def tiny_hf(request):
    """(family name, a fresh tiny random model in eval mode), seeded."""
    torch.manual_seed(0)
    return request.param, BUILDERS[request.param]().eval()


@pytest.fixture
def build_hf():
    def build(family: str):
        torch.manual_seed(0)
        return BUILDERS[family]().eval()

    return build
