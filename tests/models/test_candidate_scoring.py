"""CKFModel.candidate_logprobs (KV-cached candidate scoring) and the CF fold-in of new users."""

import numpy as np
import pytest
import torch

from ckf_dist.cf.tables import CFTables
from ckf_dist.models.ckf import CKFModel
from ckf_dist.data.collate import Collator, target_token_ids

from model_samples import small_config, title


@pytest.mark.parametrize("mapping", ["ckf", "cora", "allmrec"])
def test_cached_candidate_scores_equal_full_sequence_scores(build_model, sample, mapping):
    """Prompts of different lengths (right padding, targets past some prompts): every candidate's
    (sum log-prob, tokens) equals the training forward's score of prompt + candidate + EOS (CoRA:
    each candidate continues with its row's generated adapter)."""
    model, tok, cfg = build_model(small_config(mapping=mapping))
    with torch.no_grad():  # larger adapters so the per-row task adapters visibly matter
        for n, p in model.named_parameters():
            if ".lora_" in n and (n.endswith("B") or n.endswith("lora_row_B.weight")):
                p.mul_(10)
    rows = [sample("topk", user=1, n=1), sample("ctr", user=2, n=0, key="train/ctr/2/9"), sample("topk", user=3, n=6)]
    rows[1]["candidates"] = [3, 17]
    collate = Collator(tok, cfg, model.placeholder_id, text_twin=False)
    batch = collate(rows)
    assert len(set(batch["prompt_lengths"].tolist())) == 3
    cands = [[target_token_ids(tok, title(c)) for c in r["candidates"]] for r in rows]
    fast = model.candidate_logprobs(batch, cands)
    for r, row in enumerate(rows):
        full = model.sequence_logprob(collate([{**row, "target": title(c)} for c in row["candidates"]]))
        assert [n for _, n in fast[r]] == [len(c) + 1 for c in cands[r]]  # title tokens + EOS
        torch.testing.assert_close(torch.tensor([s for s, _ in fast[r]]), full, rtol=1e-4, atol=1e-4)
    assert len({round(s, 3) for row in fast for s, _ in row}) > 3  # not a constant


def test_new_users_fold_in_from_history_in_tables_and_model():
    rng = np.random.default_rng(0)
    users = rng.normal(size=(4, 3)).astype(np.float32)
    users[2] = 0.0  # no training interaction
    items = rng.normal(size=(6, 3)).astype(np.float32)
    t = CFTables(users, items, [f"u{k}" for k in range(4)], [f"i{k}" for k in range(6)],
                 user_bias=np.array([0.5, -0.5, 0.0, 1.0], np.float32), item_bias=np.arange(6, dtype=np.float32) / 10,
                 global_bias=3.0)
    vec = t.user_vectors([0, 2, 2], [[1], [1, 4], []])
    np.testing.assert_allclose(vec[0], users[0])  # a known user keeps its row
    np.testing.assert_allclose(vec[1], items[[1, 4]].mean(0), rtol=1e-6)  # no ratings: mean of history rows
    np.testing.assert_allclose(vec[2], 0.0)  # nothing to fold in: the prior
    s = t.score_with_history([2, 0], [[1, 4], [5]], np.array([3, 3]))
    np.testing.assert_allclose(s, [items[[1, 4]].mean(0) @ items[3] + 0.0 + 0.3 + 3.0, users[0] @ items[3] + 0.5 + 0.3 + 3.0],
                               rtol=1e-5)
    cand = t.score_with_history([2], [[1, 4]], np.array([[3, 5]]))
    np.testing.assert_allclose(cand[0], [s[0], items[[1, 4]].mean(0) @ items[5] + 0.5 + 3.0], rtol=1e-5)
    # the model's rule is the same
    model = CKFModel.__new__(CKFModel)
    torch.nn.Module.__init__(model)
    model.item_bias, model.bias_coordinate = None, False
    hist = torch.tensor([[1, 4], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    e_u = torch.from_numpy(users[[2, 0]])
    out = model.fold_in(e_u, torch.from_numpy(items)[hist], mask)
    torch.testing.assert_close(out[0].double(), torch.from_numpy(t.user_vectors([2], [[1, 4]])[0]))
    torch.testing.assert_close(out[1], e_u[1])


def test_rated_history_folds_a_new_user_in_by_ridge_regression_in_tables_and_model():
    """A user without a trained row, with ratings for its history: bias and vector solve
    (X'X + ridge I) w = X'y with X = [1, e_i] and y = r - b_i - b (hand-built normal equations);
    unrated history items are left out; the model (biases as the vectors' last coordinate) gives
    the same user vector and bias."""
    rng = np.random.default_rng(1)
    users = rng.normal(size=(3, 2)).astype(np.float32)
    users[1] = 0.0
    items = rng.normal(size=(5, 2)).astype(np.float32)
    ib = np.array([0.2, -0.1, 0.4, 0.0, 0.3], np.float32)
    t = CFTables(users, items, ["a", "b", "c"], list("vwxyz"), user_bias=np.array([0.5, 0.0, -0.2], np.float32),
                 item_bias=ib, global_bias=3.5, meta={"fold_in_ridge": 2.0})
    hist, rated = [0, 2, 3, 4], [5.0, 1.0, None, 4.0]
    x = np.array([[1.0, *items[0]], [1.0, *items[2]], [1.0, *items[4]]])
    y = np.array([5.0 - 0.2 - 3.5, 1.0 - 0.4 - 3.5, 4.0 - 0.3 - 3.5])
    w = np.linalg.solve(x.T @ x + 2.0 * np.eye(3), x.T @ y)
    vec, bias = t.fold_in([1, 0], [hist, hist], [rated, rated])
    np.testing.assert_allclose(vec[0], w[1:], rtol=1e-6) and np.testing.assert_allclose(bias[0], w[0], rtol=1e-6)
    np.testing.assert_allclose(vec[1], users[0]) and np.testing.assert_allclose(bias[1], 0.5)  # trained: unchanged
    s = t.score_with_history([1], [hist], np.array([1]), [rated])
    np.testing.assert_allclose(s, [w[1:] @ items[1] + w[0] - 0.1 + 3.5], rtol=1e-6)
    # a liked history lifts the folded-in user above a disliked one, for every item
    up = t.score_with_history([1, 1], [[0, 2], [0, 2]], np.array([[0, 1, 2, 3, 4]] * 2), [[5.0, 5.0], [1.0, 1.0]])
    assert (up[0] > up[1]).all()
    np.testing.assert_allclose(t.fold_in([1], [hist], [[None] * 4])[0][0], items[hist].mean(0), rtol=1e-6)  # unrated: mean

    u_in, i_in = t.model_inputs()
    model = CKFModel.__new__(CKFModel)
    torch.nn.Module.__init__(model)
    model.item_bias, model.bias_coordinate = torch.from_numpy(ib), True
    model.global_bias, model.fold_in_ridge = 3.5, 2.0
    ids = torch.tensor([hist, hist])
    r = torch.tensor([[5.0, 1.0, float("nan"), 4.0]] * 2)
    out = model.fold_in(torch.from_numpy(u_in[[1, 2]]), torch.from_numpy(i_in)[ids], torch.ones(2, 4, dtype=torch.bool), r, ids)
    torch.testing.assert_close(out[0], torch.tensor([*w[1:], w[0]], dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], torch.from_numpy(u_in[2]))


def test_model_inputs_append_biases():
    users, items = np.ones((2, 3), np.float32), np.full((4, 3), 2.0, np.float32)
    t = CFTables(users, items, ["a", "b"], list("wxyz"), user_bias=np.array([1.0, 2.0], np.float32),
                 item_bias=np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    u, i = t.model_inputs()
    assert u.shape == (2, 4) and i.shape == (4, 4)
    np.testing.assert_allclose(u[:, 3], [1.0, 2.0]) and np.testing.assert_allclose(i[:, 3], [0.1, 0.2, 0.3, 0.4])
    u0, i0 = t.model_inputs(with_biases=False)
    assert u0.shape == (2, 3) and i0.shape == (4, 3)


def test_curriculum_sample_mode_runs_one_path_with_probability_w(build_model, samples):
    from ckf_dist.models.ckf import curriculum_weight, text_path_chosen

    # deterministic in (seed, step), and the share of text steps follows w
    assert [text_path_chosen(3, k, 0.4) for k in range(50)] == [text_path_chosen(3, k, 0.4) for k in range(50)]
    share = sum(text_path_chosen(0, k, 0.3) for k in range(4000)) / 4000
    assert abs(share - 0.3) < 0.03
    assert curriculum_weight(10, 100, midpoint=0.1) == 0.5 and curriculum_weight(50, 100) == 0.5
    model, tok, cfg = build_model()
    model.curriculum = True
    cfg.train.curriculum_mode, cfg.train.curriculum_midpoint = "sample", 0.5
    batch = Collator(tok, cfg, model.placeholder_id, text_twin=True)(samples)
    text_steps = [k for k in range(40) if text_path_chosen(cfg.seed, k, curriculum_weight(k, 40, 0.5))]
    cf_steps = [k for k in range(40) if k not in text_steps]
    assert text_steps and cf_steps
    out_t = model(batch, step=text_steps[0], total_steps=40)
    out_c = model(batch, step=cf_steps[-1], total_steps=40)
    assert out_t.cf_loss is None and out_t.text_loss is not None
    assert out_c.text_loss is None and out_c.cf_loss is not None
    torch.testing.assert_close(out_t.loss, model._token_nll(batch, text=True)[0].mean())
    torch.testing.assert_close(out_c.loss, model._token_nll(batch)[0].mean())


def test_training_rows_see_the_fold_in_at_train_user_fold_in_rate(build_model, sample):
    """train.user_fold_in_rate: in training, that share of rows gets the fold-in of its history in
    place of the user's trained row (all rows at 1, none at 0); evaluation always reads the row."""
    model, tok, cfg = build_model(small_config())
    rows = [sample("ctr", user=u % 4, n=3, key=f"train/ctr/{u}/1") for u in range(64)]
    batch = Collator(tok, cfg, model.placeholder_id, text_twin=False)(rows)
    e_hist = model.item_emb[batch["history_ids"]]
    trained = model.user_emb[batch["user_ids"]]
    folded = model.fold_in(torch.zeros_like(trained), e_hist, batch["history_mask"], batch.get("history_ratings"),
                           batch["history_ids"])
    assert (trained != 0).any(-1).all() and not torch.allclose(folded, trained)
    model.cfg.train.user_fold_in_rate = 1.0
    model.eval()
    torch.testing.assert_close(model.row_users(batch, e_hist), trained)
    model.train()
    torch.testing.assert_close(model.row_users(batch, e_hist), folded)
    model.cfg.train.user_fold_in_rate = 0.5
    torch.manual_seed(0)
    got = model.row_users(batch, e_hist)
    is_folded = (got == folded).all(-1) & ~(got == trained).all(-1)
    assert ((got == folded).all(-1) | (got == trained).all(-1)).all()
    assert 16 < int(is_folded.sum()) < 48
    model.cfg.train.user_fold_in_rate = 0.0
    torch.testing.assert_close(model.row_users(batch, e_hist), trained)


def test_user_token_dropout_zeroes_that_share_of_training_rows_only(build_model, sample):
    """train.user_token_dropout: in training, that share of rows gets a zero user vector (whatever
    the row's trained vector or fold-in); evaluation never drops one."""
    model, tok, cfg = build_model(small_config())
    rows = [sample("ctr", user=u % 4, n=3, key=f"train/ctr/{u}/1") for u in range(64)]
    batch = Collator(tok, cfg, model.placeholder_id, text_twin=False)(rows)
    e_hist = model.item_emb[batch["history_ids"]]
    full = model.row_users(batch, e_hist)
    assert (full != 0).any(-1).all()
    model.cfg.train.user_token_dropout = 0.5
    model.eval()
    torch.testing.assert_close(model.row_users(batch, e_hist), full)
    model.train()
    torch.manual_seed(0)
    got = model.row_users(batch, e_hist)
    zero = (got == 0).all(-1)
    assert ((got == full).all(-1) | zero).all()
    assert 16 < int(zero.sum()) < 48
    model.cfg.train.user_token_dropout = 0.0
    torch.testing.assert_close(model.row_users(batch, e_hist), full)


def test_item_first_until_trains_without_user_vectors_first(build_model, sample):
    """train.item_first_until: before that fraction of the steps the training loss does not depend
    on the user table (every user vector is zeroed), after it it does; without a step the
    configured dropout (0) applies."""
    cfg = small_config()
    cfg.train.item_first_until = 0.25
    model, tok, cfg = build_model(cfg)
    assert [model.user_dropout(s, 100) for s in (0, 24, 25, 99)] == [1.0, 1.0, 0.0, 0.0]
    assert model.user_dropout(None, None) == 0.0
    rows = [sample("ctr", user=u % 4, n=3, key=f"train/ctr/{u}/1") for u in range(8)]
    batch = Collator(tok, cfg, model.placeholder_id, text_twin=False)(rows)
    model.curriculum = False
    model.train()

    def losses():
        return [float(model(batch, step=s, total_steps=100).loss) for s in (10, 50)]

    before = losses()
    with torch.no_grad():
        model.user_emb.mul_(-3.0).add_(0.5)
    after = losses()
    assert after[0] == pytest.approx(before[0], abs=1e-6)  # step 10 < 25: the user table is not read
    assert abs(after[1] - before[1]) > 1e-4  # step 50: it is
