"""Fixtures for the CKF model tests: a tiny embedded LLM directory, hand-built samples, configs
(built by the helpers of model_samples.py)."""

import pytest
import torch

from model_samples import CF_DIM, NUM_ITEMS, NUM_USERS, corpus, make_sample, mixed_samples, small_config


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from ckf_dist.models.tiny import init_tiny

    return init_tiny(corpus(), small_config(), tmp_path_factory.mktemp("tiny") / "llm")


@pytest.fixture
def cf_tables():
    g = torch.Generator().manual_seed(0)
    return torch.randn(NUM_USERS, CF_DIM, generator=g) * 0.3, torch.randn(NUM_ITEMS, CF_DIM, generator=g) * 0.3


@pytest.fixture
def build_model(tiny_dir, cf_tables):
    """build(cfg=None, random_b=True) -> (CKFModel, tokenizer, cfg); a fresh LLM each call."""
    from ckf_dist.models.ckf import CKFModel
    from ckf_dist.models.llm import load_llm

    def build(cfg=None, random_b=True, seed=0):
        cfg = cfg or small_config()
        llm, tok = load_llm(tiny_dir, cfg.model.placeholder_token)
        torch.manual_seed(seed)
        # allmrec's soft item tokens come from the aligned item table of its first stage
        aligned = torch.randn(NUM_ITEMS, 6, generator=torch.Generator().manual_seed(7)) if cfg.model.mapping == "allmrec" else None
        model = CKFModel(llm, tok, cf_tables[0], cf_tables[1], cfg, item_tokens=aligned)
        if random_b:  # zero-initialised B (and CoRA's zero G_B) would hide every adapter
            g = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if ".lora_" in n and (n.endswith("B") or n.endswith("lora_row_B.weight")):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        return model.eval(), tok, cfg

    return build


@pytest.fixture
def tiny_corpus():
    return corpus()


@pytest.fixture
def sample():
    return make_sample


@pytest.fixture
def samples():
    return mixed_samples()


@pytest.fixture
def config():
    return small_config
