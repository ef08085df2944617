"""CF table files: save / load round trip with ids, biases and metadata; atomic writes."""

import json

import numpy as np
import pytest

from ckf_dist.cf.tables import META_KEY, CFTables, load_cf_tables, save_cf_tables
from ckf_dist.cf.fit import train_cf


def test_round_trip_of_trained_mf(tmp_path, planted, small_cf):
    small_cf.weight_decays, small_cf.epochs = [1e-4], 3
    tables, report = train_cf(planted, small_cf, seed=0, model_name="mf", progress=False)
    path = tables.save(tmp_path / "cf" / "mf.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mf.safetensors"]  # no .tmp left behind
    back = load_cf_tables(path)
    for name in ("user_emb", "item_emb", "user_bias", "item_bias"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tables, name))
        assert getattr(back, name).dtype == np.float32
    assert back.global_bias == pytest.approx(tables.global_bias)
    assert back.user_ids == planted.user_ids and back.item_ids == planted.item_ids
    assert back.meta["model"] == "mf" and back.meta["loss"] == "mse" and back.meta["dim"] == 16
    assert back.meta["weight_decay"] == 1e-4 and back.meta["valid_score"] == pytest.approx(report["valid_score"])
    users, items = np.array([0, 5, 9]), np.array([[1, 2], [3, 4], [5, 6]])
    np.testing.assert_allclose(back.score(users[:, None], items), tables.score(users[:, None], items), rtol=1e-6)


def test_round_trip_without_biases(tmp_path):
    rng = np.random.default_rng(0)
    ue, ie = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))  # float64 in, float32 stored
    path = save_cf_tables(tmp_path / "t.safetensors", ue, ie, ["a", "b", "c"], list("vwxyz"), {"model": "lightgcn"})
    back = load_cf_tables(path)
    assert back.user_bias is None and back.item_bias is None and back.global_bias == 0.0
    assert back.user_emb.dtype == np.float32 and back.meta == {"model": "lightgcn", "dim": 4}
    # score = plain dot product: user 1 with item 4
    assert back.score(1, 4) == pytest.approx(float(ue[1].astype(np.float32) @ ie[4].astype(np.float32)), rel=1e-6)
    # overwriting is atomic too and replaces the content
    save_cf_tables(path, ue[:2], ie, ["a", "b"], list("vwxyz"))
    assert load_cf_tables(path).num_users == 2


def test_bad_tables_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ids"):
        save_cf_tables(tmp_path / "t.safetensors", np.zeros((3, 2)), np.zeros((2, 2)), ["a", "b"], ["x", "y"])
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="shapes"):
        CFTables(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), ["a", "b"], ["x", "y"])
    with pytest.raises(FileNotFoundError):
        load_cf_tables(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file

    save_file({"user_emb": np.zeros((1, 1), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=META_KEY):
        load_cf_tables(tmp_path / "other.safetensors")


def test_metadata_is_plain_json(tmp_path):
    from safetensors import safe_open

    path = save_cf_tables(tmp_path / "t.safetensors", np.ones((1, 2)), np.ones((1, 2)), ["u"], ["i"], {"valid_score": 0.5})
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()[META_KEY])
    assert meta == {"valid_score": 0.5, "dim": 2}


def test_ids_beyond_the_safetensors_header_cap(tmp_path):
    """Ids whose JSON would exceed safetensors' 100 MB header cap (a few million users) round-trip."""
    n = 120_000
    users = [f"user-{k:06d}-" + "é" * 500 for k in range(n)]  # ~122 MB of ids
    path = save_cf_tables(tmp_path / "t.safetensors", np.zeros((n, 1)), np.zeros((2, 1)), users, ["a", "b"])
    t = load_cf_tables(path)
    assert t.user_ids == users and t.item_ids == ["a", "b"] and t.meta == {"dim": 1}


def test_tables_with_ids_in_the_metadata_still_load(tmp_path):
    from safetensors.numpy import save_file

    meta = {"dim": 2, "user_ids": ["u"], "item_ids": ["i"], "model": "mf"}
    save_file({"user_emb": np.ones((1, 2), np.float32), "item_emb": np.ones((1, 2), np.float32)},
              str(tmp_path / "old.safetensors"), metadata={META_KEY: json.dumps(meta)})
    t = load_cf_tables(tmp_path / "old.safetensors")
    assert (t.user_ids, t.item_ids, t.meta) == (["u"], ["i"], {"dim": 2, "model": "mf"})
