"""The hand-written metrics of ckf_dist.eval.metrics against well-kept implementations, on random
inputs: scikit-learn (AUC, NDCG, top-k accuracy, MAE, MSE), NLTK's corpus_bleu and Google's
rouge-score. The correspondences (and the one documented tokenisation difference) are stated in
the module docstring of ckf_dist.eval.metrics; these tests pin them.

The reference packages come with the ``dev`` extra; NLTK's corpus_bleu needs no data, and
nltk.download is made to fail so nothing is fetched.
"""

import itertools
import math
import re

import numpy as np
import pytest

from ckf_dist.eval.metrics import auc, bleu4, hit_rate_at_k, mae, ndcg_at_k, rmse, rouge_l, rouge_n, tokenize, uauc

skm = pytest.importorskip("sklearn.metrics")

SEEDS = range(6)


# -- AUC / UAUC ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes
    # half the seeds score on a coarse grid, so many (positive, negative) pairs are tied
    s = rng.normal(size=n) + 0.7 * y
    if seed % 2:
        s = np.round(s, 0)
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_uauc_matches_sklearn_per_user(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 400))
    users = rng.integers(0, 25, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.5 * y, 1)
    per_user = []
    for u in np.unique(users):
        m = users == u
        if len(np.unique(y[m])) == 2:
            per_user.append(skm.roc_auc_score(y[m], s[m]))
    value, n_users = uauc(users, y, s)
    assert n_users == len(per_user) > 0
    assert value == pytest.approx(float(np.mean(per_user)), abs=1e-12)


# -- HR@k / NDCG@k ---------------------------------------------------------------------------


def _one_hot(answers, n_cand):
    y = np.zeros((len(answers), n_cand))
    y[np.arange(len(answers)), answers] = 1.0
    return y


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_matches_sklearn_single_relevant(seed, k):
    # sklearn's ndcg_score (ignore_ties=False) averages the gain over tied candidates; with one
    # relevant candidate that is our expectation over a uniformly random order of the ties
    rng = np.random.default_rng(200 + seed)
    n, n_cand = int(rng.integers(1, 60)), int(rng.integers(2, 21))
    answers = rng.integers(0, n_cand, n)
    scores = rng.integers(0, 4, (n, n_cand)).astype(float) if seed % 2 else rng.normal(size=(n, n_cand))
    expected = skm.ndcg_score(_one_hot(answers, n_cand), scores, k=k)
    assert ndcg_at_k(list(scores), answers, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_hit_rate_matches_sklearn_top_k_accuracy_without_ties(seed, k):
    rng = np.random.default_rng(300 + seed)
    n, n_cand = int(rng.integers(1, 80)), int(rng.integers(k + 1, 21))
    answers = rng.integers(0, n_cand, n)
    scores = rng.normal(size=(n, n_cand))  # continuous: no ties
    expected = skm.top_k_accuracy_score(answers, scores, k=k, labels=np.arange(n_cand))
    assert hit_rate_at_k(list(scores), answers, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_hit_rate_and_ndcg_with_ties_equal_the_mean_over_every_tie_order(seed):
    # direct computation: rank the candidates under every order of the tied ones (all
    # permutations as tie-breakers) and average HR@k / NDCG@k
    rng = np.random.default_rng(400 + seed)
    n_cand = 5
    scores = rng.integers(0, 3, (8, n_cand)).astype(float)
    answers = rng.integers(0, n_cand, 8)
    for k in (1, 2, 3, 5):
        hits, gains = [], []
        for row, a in zip(scores, answers):
            h = g = 0.0
            perms = list(itertools.permutations(range(n_cand)))
            for tiebreak in perms:
                order = sorted(range(n_cand), key=lambda c: (-row[c], tiebreak[c]))
                rank = order.index(a) + 1
                h += rank <= k
                g += (1 / math.log2(rank + 1)) if rank <= k else 0.0
            hits.append(h / len(perms))
            gains.append(g / len(perms))
        assert hit_rate_at_k(list(scores), answers, k) == pytest.approx(np.mean(hits), abs=1e-12)
        assert ndcg_at_k(list(scores), answers, k) == pytest.approx(np.mean(gains), abs=1e-12)


# -- regression --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_mae_rmse_match_sklearn(seed):
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(1, 500))
    y = rng.integers(1, 6, n).astype(float)
    p = np.clip(y + rng.normal(scale=1.2, size=n), 1, 5)
    assert mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p), abs=1e-12)
    assert rmse(y, p) == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)), abs=1e-12)


# -- text ----------------------------------------------------------------------------------------

WORDS = "the a cat dog sat on mat great sound tone cheap strings guitar is not very good bad".split()
PUNCT = [" ", " ", " ", ", ", ". ", "! ", " - ", "'", "_", "  "]


def _text(rng, max_words=14, vocab=WORDS):
    n = int(rng.integers(0, max_words + 1))
    out = ""
    for i in range(n):
        w = vocab[int(rng.integers(len(vocab)))]
        w = w.upper() if rng.random() < 0.1 else (w.capitalize() if rng.random() < 0.2 else w)
        out += w + (PUNCT[int(rng.integers(len(PUNCT)))] if i < n - 1 else "")
    return out + ("." if n and rng.random() < 0.5 else "")


def _corpus(seed, n):
    rng = np.random.default_rng(seed)
    refs = [_text(rng) for _ in range(n)]
    # hypotheses: half copy-and-edit a reference (so higher n-grams match), half random;
    # lengths 0..14 tokens, empty and shorter-than-4 hypotheses included
    hyps = []
    for r in refs:
        if rng.random() < 0.5:
            toks = tokenize(r)
            keep = [t for t in toks if rng.random() < 0.8]
            hyps.append(" ".join(keep))
        else:
            hyps.append(_text(rng, max_words=6))
    return refs, hyps


@pytest.fixture
def no_nltk_download(monkeypatch):
    nltk = pytest.importorskip("nltk")

    def refuse(*a, **kw):
        raise AssertionError("nltk.download called: corpus_bleu must need no data")

    monkeypatch.setattr(nltk, "download", refuse)
    return nltk


@pytest.mark.parametrize("seed", range(12))
def test_bleu4_matches_nltk_corpus_bleu(seed, no_nltk_download):
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    refs, hyps = _corpus(600 + seed, int(np.random.default_rng(seed).integers(1, 30)))
    expected = corpus_bleu(
        [[tokenize(r)] for r in refs],
        [tokenize(h) for h in hyps],
        weights=(0.25, 0.25, 0.25, 0.25),
        smoothing_function=SmoothingFunction().method2,
    )
    assert bleu4(refs, hyps) == pytest.approx(float(expected), abs=1e-12)


def test_bleu4_matches_nltk_on_edge_cases(no_nltk_download):
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    cases = [
        (["the cat sat on the mat"], ["the cat sat on the mat"]),
        (["the cat sat on the mat"], ["the cat"]),          # shorter than 3 and 4 tokens
        (["the cat", "a dog barked"], ["the cat", ""]),     # an empty hypothesis
        (["the cat"], ["dog"]),                             # no unigram match -> 0
        (["a b c d e"], ["a b c d e f g h"]),               # longer than the reference: BP = 1
        (["x"], ["x"]),                                     # one token each
    ]
    for refs, hyps in cases:
        expected = corpus_bleu([[tokenize(r)] for r in refs], [tokenize(h) for h in hyps],
                               smoothing_function=SmoothingFunction().method2)
        assert bleu4(refs, hyps) == pytest.approx(float(expected), abs=1e-12), (refs, hyps)


class _OurTokenizer:
    """rouge-score's tokenizer interface around ckf_dist's tokenize."""

    def tokenize(self, text):
        return tokenize(text)


def _rouge_reference(refs, hyps, tokenizer=None):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=tokenizer)
    scores = [scorer.score(r, h) for r, h in zip(refs, hyps)]  # score(target, prediction)
    return {t: float(np.mean([s[t].fmeasure for s in scores])) for t in ("rouge1", "rouge2", "rougeL")}


def _ours(refs, hyps):
    return {"rouge1": rouge_n(refs, hyps, 1), "rouge2": rouge_n(refs, hyps, 2), "rougeL": rouge_l(refs, hyps)}


@pytest.mark.parametrize("seed", range(12))
def test_rouge_matches_rouge_score_f1_on_ascii_text(seed):
    refs, hyps = _corpus(700 + seed, int(np.random.default_rng(seed).integers(1, 30)))
    hyps[0] = "Great tone; 100% solid_neck!!" if seed % 3 == 0 else hyps[0]  # digits, underscore
    expected = _rouge_reference(refs, hyps)  # rouge-score's own default tokenizer
    got = _ours(refs, hyps)
    for t in expected:
        assert got[t] == pytest.approx(expected[t], abs=1e-12), t


UNICODE_WORDS = ["café", "crème", "naïve", "straße", "gitarre", "ÜBER", "ton", "güt", "½", "٣", "x²", "ok", "12"]


@pytest.mark.parametrize("seed", range(6))
def test_rouge_with_our_tokenisation_matches_rouge_score_on_any_text(seed):
    rng = np.random.default_rng(800 + seed)
    refs = [_text(rng, vocab=UNICODE_WORDS + WORDS) for _ in range(20)]
    hyps = [_text(rng, vocab=UNICODE_WORDS + WORDS) for _ in range(20)]
    expected = _rouge_reference(refs, hyps, tokenizer=_OurTokenizer())
    got = _ours(refs, hyps)
    for t in expected:
        assert got[t] == pytest.approx(expected[t], abs=1e-12), t


@pytest.mark.parametrize("seed", range(6))
def test_tokenisation_difference_from_rouge_score_is_exactly_non_ascii_alphanumerics(seed):
    # rouge-score's default tokens: runs of [a-z0-9] of the lowercased text; ours: runs of Unicode
    # letters/digits of the lowercased text. Equal iff the lowercased text has no non-ASCII
    # letter or digit.
    tokenize_rs = pytest.importorskip("rouge_score.tokenize").tokenize
    rng = np.random.default_rng(900 + seed)
    for _ in range(50):
        text = _text(rng, vocab=UNICODE_WORDS + WORDS)
        lowered = text.lower()
        assert tokenize_rs(text, None) == re.findall(r"[a-z0-9]+", lowered)
        assert tokenize(text) == re.findall(r"[^\W_]+", lowered)
        has_non_ascii_alnum = any(ord(ch) > 127 and ch.isalnum() for ch in lowered)
        assert (tokenize(text) == tokenize_rs(text, None)) == (not has_non_ascii_alnum), text
    # the documented example
    assert tokenize("Café crème") == ["café", "crème"]
    assert tokenize_rs("Café crème", None) == ["caf", "cr", "me"]
    # so ROUGE can differ there: "crème" is one token for us, "cr" + "me" for rouge-score
    assert rouge_n(["crème"], ["me"], 1) == 0.0
    assert _rouge_reference(["crème"], ["me"])["rouge1"] == pytest.approx(2 / 3)  # P 1/1, R 1/2
    # and agree where the split does not change the counts
    assert rouge_n(["café au lait"], ["café"], 1) == pytest.approx(0.5)  # P 1, R 1/3
    assert _rouge_reference(["café au lait"], ["café"])["rouge1"] == pytest.approx(0.5)
