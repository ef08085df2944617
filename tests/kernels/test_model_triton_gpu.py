"""The model-level triton-vs-torch check on CUDA: compiled kernels inside CKFModel give the torch
backend's loss and gradients (tests/models runs the same check with the interpreter on CPU)."""

import importlib.util
from pathlib import Path

import pytest
import torch

MODEL_FIXTURES = Path(__file__).resolve().parents[1] / "models" / "conftest.py"


def _model_fixtures():
    """tests/models/conftest.py (tiny config, corpus, hand-built samples), loaded under its own name."""
    spec = importlib.util.spec_from_file_location("ckf_model_test_fixtures", MODEL_FIXTURES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def triton_vs_torch(device: str, tmp_path: Path, dtype: torch.dtype = torch.float32):
    """Loss and trainable-parameter gradients of one batch for each backend on `device`."""
    from ckf_dist.models.ckf import CKFModel
    from ckf_dist.data.collate import Collator, batch_to
    from ckf_dist.models.llm import load_llm
    from ckf_dist.models.tiny import init_tiny

    fx = _model_fixtures()
    tiny = init_tiny(fx.corpus(), fx.small_config(), tmp_path / "llm")
    g = torch.Generator().manual_seed(0)
    users = torch.randn(fx.NUM_USERS, fx.CF_DIM, generator=g) * 0.3
    items = torch.randn(fx.NUM_ITEMS, fx.CF_DIM, generator=g) * 0.3
    results = {}
    for backend in ("torch", "triton"):
        cfg = fx.small_config()
        cfg.kernels.backend = backend
        llm, tok = load_llm(tiny, cfg.model.placeholder_token)
        torch.manual_seed(0)
        model = CKFModel(llm, tok, users, items, cfg)
        gb = torch.Generator().manual_seed(1)
        with torch.no_grad():  # zero-initialised B would hide every adapter
            for n, p in model.named_parameters():
                if ".lora_" in n and n.endswith("B"):
                    p.copy_(torch.randn(p.shape, generator=gb) * 0.05)
        model = model.to(device=device, dtype=dtype).eval()
        batch = batch_to(Collator(tok, cfg, model.placeholder_id, text_twin=False)(fx.mixed_samples()[:3]), device)
        out = model(batch)
        out.loss.backward()
        assert model.ctx.backend == backend
        grads = {n: p.grad.float().cpu() for n, p in model.trainable_named_parameters().items()}
        results[backend] = (out.loss.detach().float().cpu(), grads)
    return results


@pytest.mark.gpu
def test_triton_backend_matches_torch_through_the_model_on_cuda(tmp_path):
    from ckf_dist.kernels import multi_lora

    before = multi_lora.launch_count()
    res = triton_vs_torch("cuda", tmp_path)
    assert multi_lora.launch_count() > before, "the Triton kernels did not run"
    (l_t, g_t), (l_k, g_k) = res["torch"], res["triton"]
    torch.testing.assert_close(l_k, l_t, rtol=1e-4, atol=1e-5)
    for n in g_t:
        assert g_k[n] is not None, n
        torch.testing.assert_close(g_k[n], g_t[n], rtol=1e-3, atol=1e-5, msg=n)
