"""A-LLMRec's first stage: on data whose item text embeddings are a function of the CF item factors
(correlated by construction) the alignment losses fall, and the joint space ties each item's CF
vector to its own text."""

import dataclasses

import numpy as np
import pytest

from ckf_dist.cf.align import WEIGHTS, load_aligned_items, save_alignment, train_alignment
from ckf_dist.cf.fit import train_cf
from ckf_dist.config import CFConfig


@pytest.fixture(scope="module")
def cf_and_text(planted):
    cfg = CFConfig(dim=16, epochs=30, patience=4, lr=0.02, batch_size=256, weight_decays=[1e-4], loss="bpr")
    tables, _ = train_cf(planted, cfg, seed=0, model_name="mf", progress=False)
    rng = np.random.default_rng(1)
    # text vectors: a fixed non-linear function of the CF item factors plus a little noise
    m = rng.normal(size=(16, 48)) / 4
    text = np.tanh(tables.item_emb @ m * 3) + 0.05 * rng.normal(size=(tables.num_items, 48))
    return tables, text.astype(np.float32)


def _retrieval(aligned, weights, text):
    """Share of items whose joint CF vector is nearest to the text vector of the same item."""
    w1, b1 = weights["text.enc.weight"], weights["text.enc.bias"]
    p = 1 / (1 + np.exp(-(text @ w1.T + b1)))
    d = ((aligned[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return float((d.argmin(1) == np.arange(len(p))).mean())


def test_stage1_losses_fall_when_text_and_cf_factors_correlate(planted, cf_and_text):
    tables, text = cf_and_text
    aligned, weights, report = train_alignment(planted, tables, text, latent=32, epochs=25, seed=0, batch_size=256)
    first, last = report["history"][0], report["history"][-1]
    assert set(first) >= set(WEIGHTS) | {"total"}
    for k in ("total", "match", "item_recon", "text_recon", "rec"):  # every loss falls (measured: by 8% (rec) to 81%)
        assert last[k] < first[k], (k, first[k], last[k])
    assert last["total"] < 0.8 * first["total"]  # measured 0.69
    assert aligned.shape == (planted.num_items, 32)
    # control: the same text shuffled across items carries no CF information; alignment is then worse
    rng = np.random.default_rng(2)
    shuffled = text[rng.permutation(len(text))]
    a2, w2, r2 = train_alignment(planted, tables, shuffled, latent=32, epochs=25, seed=0, batch_size=256)
    assert last["match"] < 0.5 * r2["history"][-1]["match"]  # measured 0.010 vs 0.088
    # each item's CF vector lands nearest its own text (measured 0.99 vs 0.03 shuffled; chance 0.01)
    assert _retrieval(aligned, weights, text) > 0.8 and _retrieval(a2, w2, shuffled) < 0.2


def test_items_without_training_data_take_their_text_vector(planted, cf_and_text, tmp_path):
    tables, text = cf_and_text
    tables = dataclasses.replace(tables, item_emb=tables.item_emb.copy())
    train_items = set(planted.part("train")["i"].tolist())
    cold = [i for i in range(planted.num_items) if i not in train_items]
    aligned, weights, report = train_alignment(planted, tables, text, latent=8, epochs=2, seed=0)
    assert report["items_from_text"] == len(cold)
    w1, b1 = weights["text.enc.weight"], weights["text.enc.bias"]
    p = 1 / (1 + np.exp(-(text @ w1.T + b1)))
    np.testing.assert_allclose(aligned[cold], p[cold], rtol=1e-5, atol=1e-6)
    path = save_alignment(tmp_path / "a.safetensors", aligned, weights, report)
    np.testing.assert_array_equal(load_aligned_items(path, planted.num_items), aligned)
    with pytest.raises(ValueError, match="aligned items"):
        load_aligned_items(path, planted.num_items + 1)
