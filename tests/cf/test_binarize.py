"""BinLLM's text codes: the encoding is exact and reversible, the binarisation layer learns on the
frozen CF tables, and codes reach the prompt through the collator."""

import dataclasses

import numpy as np
import pytest

from ckf_dist.cf.binarize import TextCodes, binary_codes, decode_code, encode_code, train_binarizer
from ckf_dist.cf.fit import train_cf
from ckf_dist.cf.tables import CFTables


def test_known_vector_encodes_by_hand_and_decodes_back():
    # identity layer, zero bias: bit k = (v_k >= 0); sign(0) counts as +1, as in BinLLM
    v = np.array([[0.5, -1.0, 0.0, 2.0, -0.1, 3.0, 0.2, -7.0, 1.0, 0.0]])
    bits = binary_codes(v, np.eye(10), np.zeros(10))[0]
    assert encode_code(bits) == "1011011011"
    # dot-decimal: 10110110 = 128 + 32 + 16 + 4 + 2 = 182; the last group "11" (2 bits) = 3
    assert encode_code(bits, compress=True) == "182.3"
    np.testing.assert_array_equal(decode_code("1011011011", 10), bits)
    np.testing.assert_array_equal(decode_code("182.3", 10, compress=True), bits)
    # 32 bits compress to four numbers, like an IPv4 address
    b32 = np.array([c == "1" for c in "10101100" "00010000" "11111110" "00000001"])
    assert encode_code(b32, compress=True) == "172.16.254.1"


@pytest.mark.parametrize("nbits", [1, 7, 8, 9, 32, 64])
def test_random_codes_round_trip_in_both_notations(nbits):
    rng = np.random.default_rng(nbits)
    for _ in range(50):
        b = rng.random(nbits) < 0.5
        for compress in (False, True):
            np.testing.assert_array_equal(decode_code(encode_code(b, compress), nbits, compress), b)


@pytest.mark.parametrize("text, nbits, compress", [("1012", 4, False), ("101", 4, False), ("256.1", 16, True),
                                                   ("1.2.3", 16, True), ("4", 2, True)])
def test_text_that_is_not_a_code_is_rejected(text, nbits, compress):
    with pytest.raises(ValueError, match="code"):
        decode_code(text, nbits, compress)


@pytest.fixture(scope="module")
def mf_tables(planted):
    from ckf_dist.config import CFConfig

    cfg = CFConfig(dim=16, epochs=40, patience=4, lr=0.02, batch_size=256, weight_decays=[1e-4])
    tables, _ = train_cf(planted, cfg, seed=0, model_name="mf", progress=False)
    return tables, cfg


def test_binarizer_learns_codes_that_rank_held_out_positives(planted, mf_tables):
    tables, cfg = mf_tables
    weights, report = train_binarizer(planted, tables, dataclasses.replace(cfg, epochs=20, lr=0.01), bits=32, seed=0)
    assert weights["user.weight"].shape == (32, 16) and weights["item.bias"].shape == (32,)
    # the binary codes alone separate validation positives from unseen items (measured 0.79; chance 0.5)
    assert report["valid_auc"] > 0.75
    codes = TextCodes(tables, weights)
    # on test rows: the Hamming agreement of user and item codes ranks liked items above unseen ones
    test = planted.part("test")
    test = test[test["pos"] > 0.5]
    seen = set(zip(planted.inter["u"], planted.inter["i"]))
    rng = np.random.default_rng(0)
    wins = []
    for u, i in zip(test["u"], test["i"]):
        ub = codes.user_bits([u], [[]])[0]
        negs = [j for j in rng.integers(0, planted.num_items, 40) if (u, j) not in seen][:20]
        s = lambda j: int((codes.item_bits[j] == ub).sum())  # noqa: E731
        wins += [(s(j) < s(i)) + 0.5 * (s(j) == s(i)) for j in negs]
    assert np.mean(wins) > 0.7
    # codes differ between users and between items (a collapsed layer would give one code)
    assert len({encode_code(b) for b in codes.item_bits}) > 50


def test_new_user_code_comes_from_the_folded_in_history():
    item = np.array([[1.0, -1.0], [-1.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    user = np.array([[0.5, 0.5], [0.0, 0.0]], dtype=np.float32)  # user 1 has no training row
    tables = CFTables(user, item, ["a", "b"], ["x", "y", "z"])
    w = {"user.weight": np.eye(2, dtype=np.float32), "user.bias": np.zeros(2, np.float32),
         "item.weight": np.eye(2, dtype=np.float32), "item.bias": np.zeros(2, np.float32)}
    codes = TextCodes(tables, w)
    # user 1 with history [0, 0, 1]: mean (1/3, -1/3) -> "10"; with history [1]: (-1, 1) -> "01"
    assert codes.sample_codes([{"user": 1, "history": [0, 0, 1], "items": [2]}]) == [["10", "11"]]
    assert codes.sample_codes([{"user": 1, "history": [1], "items": [0, 1]}]) == [["01", "10", "01"]]
    assert codes.sample_codes([{"user": 0, "history": [1], "items": [2]}]) == [["11", "11"]]
