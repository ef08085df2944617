"""The CF mapping: pooling, meta-network bridge (via meta_proj), projections and their scale."""

import math

import pytest
import torch

import ckf_dist.modules.meta_net as meta_net_mod
from ckf_dist.config import ModelConfig
from ckf_dist.modules.meta_net import CFMapper, HistoryPooling, ScaledProjection

D, HID, H = 6, 20, 10  # CF size, LLM hidden, meta hidden


def _mapper(**kw) -> CFMapper:
    torch.manual_seed(0)
    cfg = ModelConfig(meta_hidden=H, **kw)
    return CFMapper(D, HID, cfg, target_norm=0.7)


def _inputs(b=4, hlen=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    e_u = torch.randn(b, D, generator=g)
    hist = torch.randn(b, hlen, D, generator=g)
    mask = torch.ones(b, hlen, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, :] = False  # a user with an empty history
    return e_u, hist, mask


def test_bridge_starts_near_identity_and_matches_the_formula():
    m = _mapper(meta_lambda=0.5)
    e_u, hist, mask = _inputs()
    u = m.bridge(e_u, hist, mask)
    assert u.shape == (4, D)
    assert torch.allclose(u, e_u, atol=0.05 * e_u.abs().max().item())  # W_u ~ I, W_g = I
    torch.testing.assert_close(m.bridge.meta.out.bias.view(D, D), torch.eye(D))
    torch.testing.assert_close(m.bridge.general, torch.eye(D))
    # the documented formula, W_u materialized
    with torch.no_grad():
        m.bridge.meta.out.weight.normal_()
        m.bridge.general.normal_()
    p = m.bridge.pool(hist, mask)
    z = torch.relu(m.bridge.meta.hidden(p))
    w_u = (z @ m.bridge.meta.out.weight.t() + m.bridge.meta.out.bias).view(4, D, D)
    want = 0.5 * torch.einsum("bj,bjk->bk", e_u, w_u) + 0.5 * e_u @ m.bridge.general
    torch.testing.assert_close(m.bridge(e_u, hist, mask), want, rtol=1e-4, atol=1e-5)


def test_bridge_goes_through_meta_proj_with_the_backend(monkeypatch):
    m = _mapper(meta_lambda=0.3)
    m.backend = "torch"
    seen = {}
    real = meta_net_mod.meta_proj

    def spy(e_u, z, w, b, g, lam, backend="torch"):
        seen.update(shapes=(tuple(e_u.shape), tuple(z.shape), tuple(w.shape), tuple(b.shape), tuple(g.shape)),
                    lam=lam, backend=backend)
        return real(e_u, z, w, b, g, lam, backend=backend)

    monkeypatch.setattr(meta_net_mod, "meta_proj", spy)
    e_u, hist, mask = _inputs()
    m.map_users(e_u, hist, mask)
    assert seen == {"shapes": ((4, D), (4, H), (D * D, H), (D * D,), (D, D)), "lam": 0.3, "backend": "torch"}


def test_without_meta_net_only_the_general_bridge():
    m = _mapper(meta_net=False)
    assert m.bridge.meta is None and m.bridge.pool is None
    e_u, hist, mask = _inputs()
    with torch.no_grad():
        m.bridge.general.normal_()
    torch.testing.assert_close(m.bridge(e_u, hist, mask), e_u @ m.bridge.general)
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"bridge", "user_proj", "item_proj"}
    assert [n for n, _ in m.bridge.named_parameters()] == ["general"]


def test_collm_one_shared_mapping():
    m = _mapper(mapping="collm")
    e_u, hist, mask = _inputs()
    torch.testing.assert_close(m.map_users(e_u, hist, mask), m.map_items(e_u))
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"shared_proj"}


def test_user_and_item_projections_are_separate():
    m = _mapper(meta_net=False)
    e_u, hist, mask = _inputs()
    assert m.user_proj is not m.item_proj
    assert not torch.allclose(m.map_users(e_u, hist, mask), m.map_items(e_u))


@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("input_scale", [1e-3, 1.0, 100.0])
def test_projection_output_has_the_token_embedding_norm(kind, input_scale):
    torch.manual_seed(0)
    p = ScaledProjection(D, HID, kind, target_norm=0.37)
    y = p(torch.randn(16, D) * input_scale)
    assert y.shape == (16, HID)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((16,), 0.37), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_table_token_norm_keeps_each_rows_relative_length(kind):
    torch.manual_seed(0)
    x = torch.randn(16, D)
    lengths = x.norm(dim=-1)
    row = ScaledProjection(D, HID, kind, target_norm=0.37)
    table = ScaledProjection(D, HID, kind, target_norm=0.37, ref_norm=2.0)
    table.load_state_dict(row.state_dict())
    # same direction as the row-normalised token, length 0.37 * ||x|| / 2
    torch.testing.assert_close(table(x), row(x) * (lengths / 2.0)[:, None], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(table(x).norm(dim=-1), 0.37 * lengths / 2.0, rtol=1e-3, atol=1e-5)
    # a zero row (no training data) gets a (near) zero token and finite gradients
    z = torch.zeros(2, D, requires_grad=True)
    table(z).sum().backward()
    assert table(z.detach()).norm() < 1e-5 and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="ref_norm"):
        ScaledProjection(D, HID, kind, target_norm=0.37, ref_norm=0.0)


def test_mapper_table_norm_scales_users_and_items_by_their_own_tables():
    torch.manual_seed(0)
    cfg = ModelConfig(meta_hidden=H, token_norm="table")
    m = CFMapper(D, HID, cfg, target_norm=0.7, ref_norms=(2.0, 4.0))
    e = torch.randn(4, D)
    _, hist, mask = _inputs()
    users, items = m(e, hist, mask, e)
    u_prime = m.bridge(e, hist, mask)
    torch.testing.assert_close(users.norm(dim=-1), 0.7 * u_prime.norm(dim=-1) / 2.0, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(items.norm(dim=-1), 0.7 * e.norm(dim=-1) / 4.0, rtol=1e-3, atol=1e-5)


def test_attention_pooling_starts_as_mean_and_respects_the_mask():
    e_u, hist, mask = _inputs()
    mean = HistoryPooling(D, "mean")
    att = HistoryPooling(D, "attention")
    torch.testing.assert_close(att(hist, mask), mean(hist, mask))
    torch.testing.assert_close(mean(hist, mask)[1], hist[1, :3].mean(0))
    assert torch.count_nonzero(mean(hist, mask)[2]) == 0 and torch.count_nonzero(att(hist, mask)[2]) == 0
    with torch.no_grad():
        att.query.normal_()
    out = att(hist, mask)
    hist2 = hist.clone()
    hist2[~mask] = 1e3  # masked entries must not matter
    torch.testing.assert_close(att(hist2, mask), out)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert att.query.grad is not None and torch.count_nonzero(att.query.grad) > 0


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_gradients_reach_every_mapper_parameter(pooling):
    m = _mapper(pooling=pooling)
    e_u, hist, mask = _inputs()
    with torch.no_grad():
        if pooling == "attention":
            m.bridge.pool.query.normal_()
    loss = m.map_users(e_u, hist, mask).pow(3).sum() + m.map_items(e_u).pow(3).sum()
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, n
    assert m.user_proj.out_scale.item() == pytest.approx(0.7 / math.sqrt(HID))
