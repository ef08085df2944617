"""Out-of-fold CF tables (cf.cross_fit): folds, alignment, and that a fold's model never saw its rows."""

import dataclasses

import numpy as np
import pytest

from cf_testutils import planted_split
from ckf_dist.cf.crossfit import LEFT_OUT, fit_cross_folds, procrustes, without_fold
from ckf_dist.cf.fit import train_cf
from ckf_dist.cf.tables import CFTables, load_cf_tables
from ckf_dist.config import CFConfig
from ckf_dist.data.folds import interaction_folds, sample_folds, target_item


def test_interaction_folds_are_a_fixed_spread_hash():
    u, i = np.repeat(np.arange(200), 50), np.tile(np.arange(50), 200)
    f = interaction_folds(u, i, 5)
    assert f.min() == 0 and f.max() == 4
    counts = np.bincount(f, minlength=5)
    assert counts.min() > 0.18 * len(f) and counts.max() < 0.22 * len(f)  # about a fifth each
    np.testing.assert_array_equal(f, interaction_folds(list(u), list(i), 5))  # no state: the same pairs, the same folds
    # one user's interactions spread over every fold (a fold does not take whole users)
    assert len(set(f[:50].tolist())) == 5
    with pytest.raises(ValueError, match="folds must be >= 1"):
        interaction_folds([0], [0], 0)


def test_a_sample_s_fold_is_its_target_interaction_s():
    topk = {"task": "topk", "user": 3, "items": [7, 9, 4], "candidates": [7, 9, 4], "answer": 1}
    ctr = {"task": "ctr", "user": 3, "items": [9], "candidates": [], "answer": -1}
    assert target_item(topk) == 9 and target_item(ctr) == 9
    np.testing.assert_array_equal(sample_folds([topk, ctr], 4), interaction_folds([3, 3], [9, 9], 4))


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    r = procrustes(x @ q, x)
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(x @ q @ r, x, atol=1e-10)


def test_without_fold_moves_exactly_that_fold_s_training_rows():
    sd = planted_split(num_users=30, num_items=20, per_user=8, held_out=1)
    out = without_fold(sd, 1, 3)
    train = sd.inter["split"] == "train"
    fold = np.full(len(sd.inter), -1)
    fold[train.to_numpy()] = interaction_folds(sd.inter["u"][train], sd.inter["i"][train], 3)
    np.testing.assert_array_equal(out.inter["split"].to_numpy() == LEFT_OUT, fold == 1)
    keep = fold != 1
    np.testing.assert_array_equal(out.inter["split"].to_numpy()[keep], sd.inter["split"].to_numpy()[keep])
    assert (sd.inter["split"] != LEFT_OUT).all()  # the input is not modified


@pytest.fixture(scope="module")
def fitted():
    sd = planted_split(num_users=80, num_items=60, per_user=12, held_out=2, seed=1)
    cfg = CFConfig(model="mf", dim=8, epochs=30, weight_decays=[1e-4], cross_fit=3)
    full, _ = train_cf(sd, dataclasses.replace(cfg, cross_fit=0), 0, progress=False)
    return sd, cfg, full, fit_cross_folds(sd, cfg, 0, full, "mf")


def test_each_fold_model_is_out_of_sample_on_its_fold_and_aligned_with_the_full_one(fitted):
    sd, cfg, full, xf = fitted
    assert xf["user_emb"].shape == (3, 80, 8) and xf["item_emb"].shape == (3, 60, 8)
    assert xf["user_bias"].shape == (3, 80) and xf["item_bias"].shape == (3, 60)
    train = sd.part("train")
    u, i, r = (train[c].to_numpy() for c in ("u", "i", "rating"))
    f = interaction_folds(u, i, 3)

    def rmse(k, rows):  # k = -1: the full model
        ue, ie, ub, ib = ((full.user_emb, full.item_emb, full.user_bias, full.item_bias) if k < 0 else
                          (xf["user_emb"][k], xf["item_emb"][k], xf["user_bias"][k], xf["item_bias"][k]))
        pred = full.global_bias + ub[u[rows]] + ib[i[rows]] + (ue[u[rows]] * ie[i[rows]]).sum(1)
        return float(np.sqrt(np.mean((pred - r[rows]) ** 2)))

    for k in range(3):
        held, kept = f == k, f != k
        # fold k's model was fit without its fold: worse there than the full model (in-sample there),
        # and worse there than on the rows it was fit on
        assert rmse(k, held) > rmse(-1, held) + 0.05
        assert rmse(k, held) > rmse(k, kept) + 0.05
        # aligned: its item vectors point where the full model's do (a random turn would not)
        cos = (xf["item_emb"][k] * full.item_emb).sum(1) / (
            np.linalg.norm(xf["item_emb"][k], axis=1) * np.linalg.norm(full.item_emb, axis=1) + 1e-12)
        assert np.median(cos) > 0.5


def test_cross_fit_tables_round_trip_and_stack_behind_the_full_ones(fitted, tmp_path):
    _, _, full, xf = fitted
    t = dataclasses.replace(full, cross_fit=xf)
    back = load_cf_tables(t.save(tmp_path / "mf.safetensors"))
    assert back.folds == 3
    for name, a in xf.items():
        np.testing.assert_array_equal(back.cross_fit[name], a)
    users, items = back.model_inputs(True, stacked=True)
    assert users.shape == (4 * 80, 9) and items.shape == (4 * 60, 9)
    np.testing.assert_array_equal(users[:80], back.model_inputs(True)[0])  # block 0: the full model
    np.testing.assert_array_equal(users[2 * 80 + 5, :8], xf["user_emb"][1][5])  # block 2: fold 1
    assert users[2 * 80 + 5, 8] == xf["user_bias"][1][5]
    np.testing.assert_array_equal(back.model_item_bias(stacked=True)[3 * 60:], xf["item_bias"][2])
    with pytest.raises(ValueError, match="bad cross-fit tables"):
        CFTables(full.user_emb, full.item_emb, full.user_ids, full.item_ids, cross_fit={"user_emb": xf["user_emb"][:, :5]})
