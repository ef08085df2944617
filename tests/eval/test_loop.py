"""The Evaluator (ckf_dist.eval.loop) on a model with known logits: every scoring path against
hand-computed values.

The fake model stands in for CKFModel: its outputs are a fixed function of each batch row's
sample key (and, for likelihood rows, of the target title read back from the labels), so every
number the Evaluator reports can be computed by hand. The tokenizer is the tiny LLM's byte-level
BPE (ckf_dist.models.tiny.train_tokenizer) and batches come from the real Collator, so the answer
token ids, the label mask and the EOS handling are the real ones.

Each of these changes to loop.py fails at least one test here: scoring ctr with 1 - P(Yes),
shifting the rating predictions (expected value or greedy digit) by +1, reversing the topk
candidate ranking, scoring candidates by the summed (not mean) log-probability of their title.
"""

import json
import math
import random

import pytest
import torch

from ckf_dist.config import Config
from ckf_dist.eval import loop
from ckf_dist.eval.loop import Evaluator
from ckf_dist.eval.metrics import bleu4, rouge_l, rouge_n
from ckf_dist.data.collate import Collator, target_token_ids
from ckf_dist.models.tiny import train_tokenizer

PH = "<|cf|>"
WORDS = ("guitar string bright warm cable pedal tuner strap amp loud quiet cheap great solid noisy classic "
         "story toy love hate sound tone neck fret wood metal drum piano song and").split()

# item index -> title; token counts differ (checked in test_topk_scores_are_mean_logprob_per_token)
TITLES = ["amp", "classic wood guitar string pedal", "tone", "bright warm cable", "quiet strap", "loud drum"]

BASE = -30.0  # logit of every token the fake does not mention


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(80)]
    texts += TITLES * 3
    texts += ["Will the user enjoy the item? Answer Yes or No. Rate it 1, 2, 3, 4 or 5."] * 5
    return train_tokenizer(texts, 400, PH)


def _cfg(**eval_kw) -> Config:
    cfg = Config()
    cfg.train.curriculum = False
    cfg.eval.batch_size = 3  # batches cut across samples and across candidate rows
    cfg.eval.ks = [1, 2, 3]
    cfg.eval.max_samples_per_task = 0
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


def _sample(task, user, n, group, *, items=(0,), target="", label=None, candidates=(), answer=-1):
    prompt = f"The user {PH} . " + " ".join(f"item {PH}" for _ in items) + " ?"
    return {
        "key": f"test/{task}/{user}/{n}", "task": task, "split": "test", "user": user, "user_id": f"u{user}",
        "items": list(items), "history": [], "prompt": prompt, "prompt_text": "The user . ?",
        "target": target, "label": label, "candidates": list(candidates), "answer": answer,
        "warm": group == "warm", "group": group,
    }


class FakeModel(torch.nn.Module):
    """Known outputs per sample key.

    answer: key -> {token id: logit} at the first answer position (others BASE);
    per_token: (key, title) -> log-probability of each labelled token of that title (+ EOS), so
      candidate_logprobs / sequence_logprob sum = per_token * (title tokens + 1);
    text: key -> what greedy decoding produces.
    Every call records (method, self.training, keys)."""

    def __init__(self, tok, answer=None, per_token=None, text=None):
        super().__init__()
        self.tok, self.answer, self.per_token, self.text = tok, answer or {}, per_token or {}, text or {}
        self.calls: list[tuple] = []
        self.max_new_tokens: list[int] = []

    def answer_logits(self, batch):
        self.calls.append(("answer_logits", self.training, list(batch["keys"])))
        out = torch.full((len(batch["keys"]), len(self.tok)), BASE)
        for r, key in enumerate(batch["keys"]):
            for tid, v in self.answer[key].items():
                out[r, tid] = v
        return out

    def yes_probability(self, batch, yes_id, no_id):
        logits = self.answer_logits(batch)
        self.calls[-1] = ("yes_probability",) + self.calls[-1][1:]
        return torch.softmax(logits[:, [yes_id, no_id]], dim=-1)[:, 0]

    def sequence_logprob(self, batch):
        self.calls.append(("sequence_logprob", self.training, list(batch["keys"])))
        out = []
        for r, key in enumerate(batch["keys"]):
            lab = batch["labels"][r]
            ids = lab[lab != -100].tolist()
            assert ids[-1] == self.tok.eos_token_id  # target tokens, then EOS
            title = self.tok.decode(ids[:-1])
            out.append(self.per_token[(key, title)] * len(ids))  # sum over the labelled tokens
        return torch.tensor(out, dtype=torch.float32)

    def candidate_logprobs(self, batch, candidates):
        """(sum of log-probs of the title tokens + EOS, their count) per row and candidate."""
        self.calls.append(("candidate_logprobs", self.training, list(batch["keys"])))
        out = []
        for key, cands in zip(batch["keys"], candidates):
            row = []
            for ids in cands:
                n = len(ids) + 1  # title tokens, then EOS
                row.append((self.per_token[(key, self.tok.decode(ids))] * n, n))
            out.append(row)
        return out

    def generate(self, batch, max_new_tokens):
        self.calls.append(("generate", self.training, list(batch["keys"])))
        self.max_new_tokens.append(max_new_tokens)
        out = []
        for key in batch["keys"]:
            ids = target_token_ids(self.tok, self.text[key]) + [self.tok.eos_token_id]
            out.append(ids[:max_new_tokens])
        return out


def _evaluator(model, tok, cfg=None):
    cfg = cfg or _cfg()
    collator = Collator(tok, cfg, tok.convert_tokens_to_ids(PH), text_twin=False)
    return Evaluator(model, collator, cfg, TITLES)


def _first(tok, word):
    return target_token_ids(tok, word)[0]


# -- ctr ---------------------------------------------------------------------------------------

# (user, group, label, logit Yes, logit No); P(Yes) = sigmoid(logit Yes - logit No)
CTR = [
    (1, "warm", 1.0, 2.0, 0.0),   # 0.8808
    (1, "warm", 0.0, 0.0, 1.0),   # 0.2689
    (2, "warm", 1.0, 0.0, 0.5),   # 0.3775
    (2, "warm", 0.0, 1.0, 0.0),   # 0.7311
    (3, "cold", 1.0, 1.5, 0.0),   # 0.8176
    (3, "cold", 0.0, 0.0, 0.0),   # 0.5
    (4, "new", 1.0, 0.2, 0.0),    # 0.5498
    (4, "new", 0.0, -1.0, 0.0),   # 0.2689
]


def _ctr_setup(tok):
    samples, answer = [], {}
    yes, no = _first(tok, "Yes"), _first(tok, "No")
    for n, (u, g, y, ly, ln) in enumerate(CTR):
        s = _sample("ctr", u, n, g, target="Yes" if y else "No", label=y)
        samples.append(s)
        # a third token far above both: P(Yes) must be renormalised over Yes and No only
        answer[s["key"]] = {yes: ly, no: ln, _first(tok, "3"): 10.0}
    return samples, answer


def test_ctr_scores_are_p_yes_over_yes_and_no(tok):
    samples, answer = _ctr_setup(tok)
    ev = _evaluator(FakeModel(tok, answer=answer), tok)
    got = ev.ctr(samples)
    assert got == pytest.approx([_sig(ly - ln) for _, _, _, ly, ln in CTR], abs=1e-6)


def test_ctr_metrics_and_groups_by_hand(tok):
    samples, answer = _ctr_setup(tok)
    model = FakeModel(tok, answer=answer)
    out = _evaluator(model, tok).evaluate(samples, progress=False)["ctr"]
    # positives 0.8808, 0.3775, 0.8176, 0.5498; negatives 0.2689, 0.7311, 0.5, 0.2689
    # wins: 0.8808 -> 4, 0.3775 -> 2, 0.8176 -> 4, 0.5498 -> 3: 13 of 16 pairs
    assert out["auc"] == pytest.approx(13 / 16)
    # per user: 1 -> 1, 2 -> 0 (0.3775 < 0.7311), 3 -> 1, 4 -> 1
    assert out["uauc"] == pytest.approx(3 / 4) and out["uauc_users"] == 4
    assert out["n"] == 8
    # warm (users 1, 2): positives 0.8808, 0.3775 vs negatives 0.2689, 0.7311 -> 3/4; UAUC (1 + 0) / 2
    assert out["warm"] == {"auc": pytest.approx(3 / 4), "uauc": pytest.approx(0.5), "uauc_users": 2, "n": 4}
    assert out["cold"] == {"auc": pytest.approx(1.0), "uauc": pytest.approx(1.0), "uauc_users": 1, "n": 2}
    assert out["new"] == {"auc": pytest.approx(1.0), "uauc": pytest.approx(1.0), "uauc_users": 1, "n": 2}


# -- rating ------------------------------------------------------------------------------------

# (user, group, label, P(digit 1..5)) -> expected value, greedy digit
RATING = [
    (20, "warm", 4.0, [0.1, 0.2, 0.4, 0.2, 0.1]),    # E = 0.1+0.4+1.2+0.8+0.5 = 3.0;  greedy 3
    (21, "cold", 2.0, [0.5, 0.3, 0.1, 0.05, 0.05]),  # E = 0.5+0.6+0.3+0.2+0.25 = 1.85; greedy 1
    (22, "new", 4.0, [0.05, 0.05, 0.1, 0.3, 0.5]),   # E = 0.05+0.1+0.3+1.2+2.5 = 4.15; greedy 5
]
EXPECTED = [3.0, 1.85, 4.15]
GREEDY = [3.0, 1.0, 5.0]


def _rating_setup(tok, task="rating"):
    samples, answer = [], {}
    digits = [_first(tok, d) for d in "12345"]
    for n, (u, g, y, p) in enumerate(RATING):
        s = _sample(task, u, n, g, target=str(int(y)), label=y)
        samples.append(s)
        logits = {d: math.log(q) + 3.0 for d, q in zip(digits, p)}  # any shift: softmax over the digits
        logits[_first(tok, "Yes")] = 20.0  # a non-digit token far above: ignored
        answer[s["key"]] = logits
    return samples, answer


def test_rating_expected_value_and_greedy_digit(tok):
    samples, answer = _rating_setup(tok)
    expected, greedy = _evaluator(FakeModel(tok, answer=answer), tok).rating(samples)
    assert expected == pytest.approx(EXPECTED, abs=1e-5)
    assert greedy == GREEDY


@pytest.mark.parametrize("task", ["rating", "review_rating"])
def test_rating_metrics_by_hand(tok, task):
    samples, answer = _rating_setup(tok, task)
    out = _evaluator(FakeModel(tok, answer=answer), tok).evaluate(samples, progress=False)[task]
    # expected-value errors: |3 - 4| = 1, |1.85 - 2| = 0.15, |4.15 - 4| = 0.15
    assert out["mae"] == pytest.approx((1 + 0.15 + 0.15) / 3, abs=1e-5)
    assert out["rmse"] == pytest.approx(math.sqrt((1 + 0.0225 + 0.0225) / 3), abs=1e-5)
    # greedy errors: |3 - 4| = 1, |1 - 2| = 1, |5 - 4| = 1
    assert out["mae_greedy"] == pytest.approx(1.0) and out["rmse_greedy"] == pytest.approx(1.0)
    assert out["warm"]["mae"] == pytest.approx(1.0) and out["warm"]["n"] == 1
    assert out["cold"]["mae"] == pytest.approx(0.15, abs=1e-5) and out["cold"]["n"] == 1
    assert out["new"]["mae"] == pytest.approx(0.15, abs=1e-5) and out["new"]["n"] == 1


def test_predictions_file_holds_each_rows_truth_and_prediction(tok, tmp_path):
    ctr, ctr_answer = _ctr_setup(tok)
    rating, rating_answer = _rating_setup(tok)
    path = tmp_path / "predictions.jsonl"
    model = FakeModel(tok, answer={**ctr_answer, **rating_answer})
    _evaluator(model, tok).evaluate(ctr + rating, progress=False, predictions=path)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    got_ctr = {r["key"]: r for r in recs if r["task"] == "ctr"}
    assert len(got_ctr) == len(CTR)
    for s, (u, g, y, ly, ln) in zip(ctr, CTR):
        r = got_ctr[s["key"]]
        assert (r["user"], r["group"], r["label"]) == (u, g, float(y))
        assert r["prediction"] == pytest.approx(_sig(ly - ln), abs=1e-6)
    got_rating = [r for r in recs if r["task"] == "rating"]
    assert [r["key"] for r in got_rating] == [s["key"] for s in rating]
    assert [r["label"] for r in got_rating] == [y for _, _, y, _ in RATING]
    assert [r["prediction"] for r in got_rating] == pytest.approx(EXPECTED, abs=1e-5)
    assert [r["greedy"] for r in got_rating] == GREEDY


# -- topk ----------------------------------------------------------------------------------------

# (user, group, candidates, answer index, per-token log-prob per candidate, generated text)
TOPK = [
    # mean order: 1 (-0.5), 0 (-0.8), 3 (-1.0), 2 (-1.5): the answer (the long title) ranks 1st;
    # by the sum the short "amp" (2 labelled tokens, -1.6) beats it (7 tokens, -3.5)
    (30, "warm", [0, 1, 2, 3], 1, [-0.8, -0.5, -1.5, -1.0], "classic wood guitar string pedal"),
    # mean order: 3 (-0.4), 4 (-0.6, the answer), 0 (-0.9), 1 (-2.0): rank 2; greedy picks "amp"
    # (matched case-insensitively)
    (31, "cold", [3, 0, 4, 1], 2, [-0.4, -0.9, -0.6, -2.0], "AMP"),
    # mean order: 0 (-0.3), 2 (-1.2, the answer): rank 2; greedy text matches no candidate
    (32, "new", [2, 0], 0, [-1.2, -0.3], "guitar tone"),
]


def _topk_setup(tok):
    samples, per_token, text = [], {}, {}
    for n, (u, g, cands, a, lp, gen) in enumerate(TOPK):
        s = _sample("topk", u, n, g, items=cands, target=TITLES[cands[a]], candidates=cands, answer=a)
        samples.append(s)
        for c, v in zip(cands, lp):
            per_token[(s["key"], TITLES[c])] = v
        text[s["key"]] = gen
    return samples, per_token, text


def _n_labelled(tok, title):
    return len(target_token_ids(tok, title)) + 1  # + EOS


def test_topk_scores_are_mean_logprob_per_token(tok):
    """Waits for the mean-per-token candidate score in loop.py at eval.candidate_length_power=1
    (a sum fails here)."""
    samples, per_token, text = _topk_setup(tok)
    ev = _evaluator(FakeModel(tok, per_token=per_token, text=text), tok, _cfg(candidate_length_power=1.0))
    scores = ev.candidate_scores(samples)
    assert [len(r) for r in scores] == [4, 4, 2]
    for row, (_, _, cands, _, lp, _) in zip(scores, TOPK):
        assert row == pytest.approx(lp, abs=1e-6)  # mean = sum / labelled tokens = the per-token value
    # the setup tells the two apart: by the sum the first sample's answer is not ranked first
    n_amp, n_long = _n_labelled(tok, TITLES[0]), _n_labelled(tok, TITLES[1])
    assert n_long > n_amp and -0.5 * n_long < -0.8 * n_amp


@pytest.mark.parametrize("power", [0.0, 0.25, 0.5])
def test_topk_scores_divide_the_total_by_tokens_to_the_length_power(tok, power):
    """score = total log-prob / n ** eval.candidate_length_power (n: title tokens + EOS); the
    default 0.25 leans less towards short titles than the sum (power 0)."""
    samples, per_token, text = _topk_setup(tok)
    ev = _evaluator(FakeModel(tok, per_token=per_token, text=text), tok, _cfg(candidate_length_power=power))
    scores = ev.candidate_scores(samples)
    for row, s, (_, _, cands, _, lp, _) in zip(scores, samples, TOPK):
        n = [_n_labelled(tok, TITLES[c]) for c in cands]
        assert row == pytest.approx([v * k / k ** power for v, k in zip(lp, n)], abs=1e-5)
    assert Config().eval.candidate_length_power == 0.25


def test_topk_metrics_and_greedy_exact_match(tok):
    """Also needs the mean-per-token candidate score: by the sum the first answer ranks 3rd."""
    samples, per_token, text = _topk_setup(tok)
    model = FakeModel(tok, per_token=per_token, text=text)
    ev = _evaluator(model, tok, _cfg(candidate_length_power=1.0))
    preds = ev.topk(samples)
    # greedy choice: exact title match, case-insensitive -> 1 (the answer), 1 ("amp", not the answer), -1
    assert [p["choice"] for p in preds] == [1, 1, -1]
    # generation budget: the longest candidate title in tokens + 2
    longest = max(len(target_token_ids(tok, t)) for t in TITLES[:5])
    assert model.max_new_tokens == [longest + 2]
    out = ev.evaluate(samples, progress=False)["topk"]
    # answer ranks by the scores: 1, 2, 2
    assert out["hr@1"] == pytest.approx(1 / 3)  # the greedy exact-match rate: only the first
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["hr@2"] == pytest.approx(1.0) and out["hr@3"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert out["ndcg@3"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert out["n"] == 3
    assert out["warm"] == {"hr@1": 1.0, "hr@2": 1.0, "ndcg@2": 1.0, "hr@3": 1.0, "ndcg@3": 1.0, "ndcg@1": 1.0, "n": 1}
    assert out["cold"]["hr@1"] == 0.0 and out["cold"]["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert out["new"]["hr@1"] == 0.0 and out["new"]["hr@2"] == 1.0 and out["new"]["n"] == 1


def test_topk_ranking_direction(tok):
    # one candidate clearly best: it must come out on top, whatever the other samples do
    s = _sample("topk", 40, 0, "warm", items=[5, 2, 4], target=TITLES[5], candidates=[5, 2, 4], answer=0)
    per_token = {(s["key"], TITLES[5]): -0.1, (s["key"], TITLES[2]): -3.0, (s["key"], TITLES[4]): -2.0}
    ev = _evaluator(FakeModel(tok, per_token=per_token, text={s["key"]: "loud drum"}), tok)
    out = ev.evaluate([s], progress=False)["topk"]
    assert out["hr@1"] == 1.0 and out["ndcg@1"] == 1.0 and out["ndcg@2"] == 1.0


# -- explanation -------------------------------------------------------------------------------


def test_explanation_decodes_generated_text(tok):
    targets = ["great tone and solid neck", "cheap strap"]
    gens = ["great tone solid neck", "Cheap strap!"]
    samples = [_sample("explanation", 50 + j, j, g, target=t) for j, (t, g) in enumerate(zip(targets, ["warm", "new"]))]
    model = FakeModel(tok, text={s["key"]: g for s, g in zip(samples, gens)})
    ev = _evaluator(model, tok)
    assert ev.generate(samples) == gens  # EOS dropped, text as generated
    assert model.max_new_tokens == [ev.cfg.eval.max_new_tokens]
    assert ev.generate(samples, max_new_tokens=2) == [tok.decode(target_token_ids(tok, g)[:2]).strip() for g in gens]
    out = ev.evaluate(samples, progress=False)["explanation"]
    assert out["bleu4"] == pytest.approx(bleu4(targets, gens))
    # ROUGE-1: (P 4/4, R 4/5 -> 8/9) and 1; ROUGE-L: LCS 4 -> 8/9, and 1
    assert out["rouge1"] == pytest.approx((8 / 9 + 1) / 2) == rouge_n(targets, gens, 1)
    assert out["rougeL"] == pytest.approx((8 / 9 + 1) / 2) == rouge_l(targets, gens)
    assert (out["warm"]["n"], out["cold"]["n"], out["new"]["n"]) == (1, 0, 1)
    assert out["cold"]["bleu4"] is None


# -- all tasks: modes, selection --------------------------------------------------------------


def test_evaluate_runs_in_eval_mode_and_restores_training(tok):
    ctr, ans_c = _ctr_setup(tok)
    rating, ans_r = _rating_setup(tok)
    model = FakeModel(tok, answer={**ans_c, **ans_r})
    model.train()
    out = _evaluator(model, tok).evaluate(ctr + rating, progress=False)
    assert set(out) == {"ctr", "rating"}
    assert model.calls and all(training is False for _, training, _ in model.calls)
    assert model.training is True
    model.eval()
    _evaluator(model, tok).evaluate(ctr, progress=False)
    assert model.training is False


def _users_samples():
    # users 0..5 with 1, 2, 3, 1, 2, 2 samples; keys sort by user then n
    sizes = [1, 2, 3, 1, 2, 2]
    return [_sample("ctr", u, n, "warm", label=float(n % 2)) for u, k in enumerate(sizes) for n in range(k)]


def test_select_caps_whole_users_seeded():
    samples = _users_samples()
    shuffled = samples[::-1]
    by_key = sorted(samples, key=lambda s: s["key"])
    assert loop.select(shuffled, 0, seed=0) == by_key  # 0 = all, sorted by key
    assert loop.select(shuffled, 11, seed=0) == by_key  # cap >= n: all
    for seed in range(20):
        for cap in (1, 2, 3, 4, 5, 7):
            got = loop.select(shuffled, cap, seed)
            assert got == sorted(got, key=lambda s: s["key"])
            users = {s["user"] for s in got}
            # whole users only
            assert got == [s for s in by_key if s["user"] in users]
            # at most cap, unless the first user in the seeded order alone is larger
            assert len(got) <= cap or len(users) == 1
            # seeded: the same call gives the same rows, whatever the input order
            assert loop.select(samples, cap, seed) == got
    # the rule by hand for seed 3: users in the order random.Random(3).shuffle([0..5]), each taken
    # if it still fits (a user that does not fit is skipped, later smaller ones still come in)
    order = list(range(6))
    random.Random(3).shuffle(order)
    sizes, taken, n = [1, 2, 3, 1, 2, 2], set(), 0
    for u in order:
        if n + sizes[u] > 4 and n:
            continue
        taken.add(u)
        n += sizes[u]
        if n >= 4:
            break
    assert {s["user"] for s in loop.select(samples, 4, 3)} == taken
    # different seeds pick different users
    picks = {frozenset(s["user"] for s in loop.select(samples, 3, seed)) for seed in range(20)}
    assert len(picks) > 1


def test_evaluate_applies_the_per_task_cap(tok):
    samples, answer = _ctr_setup(tok)
    cfg = _cfg(max_samples_per_task=4)
    cfg.seed = 7
    model = FakeModel(tok, answer=answer)
    out = _evaluator(model, tok, cfg).evaluate(samples, progress=False)["ctr"]
    chosen = loop.select(samples, 4, 7)
    assert out["n"] == len(chosen) == 4
    assert out["uauc_users"] == 2  # two whole users, each with its positive and negative
    scored = [k for name, _, keys in model.calls if name == "yes_probability" for k in keys]
    assert scored == [s["key"] for s in chosen]


def test_half_star_rating_scores_each_level_by_its_whole_answer(tok):
    """On a scale whose levels are not one token each ("0.5", "1.5"), a level's probability is that
    of its whole answer (tokens + EOS), normalised over the levels."""
    from ckf_dist.rating_scale import RatingScale

    scale = RatingScale(0.5, 2.0, 0.5)
    totals = {"0.5": -3.0, "1": -1.0, "1.5": -2.0, "2": -4.0}  # log P(answer tokens + EOS)
    s = _sample("rating", 40, 0, "warm", target="1.5", label=1.5)
    per_token = {(s["key"], a): t / (len(target_token_ids(tok, a)) + 1) for a, t in totals.items()}
    cfg = _cfg()
    ev = Evaluator(FakeModel(tok, per_token=per_token), Collator(tok, cfg, tok.convert_tokens_to_ids(PH), text_twin=False),
                   cfg, TITLES, scale=scale)
    assert ev.level_ids is None  # "0.5" is more than one token: the whole-answer path
    z = sum(math.exp(t) for t in totals.values())
    by_hand = (0.5 * math.exp(-3.0) + 1.0 * math.exp(-1.0) + 1.5 * math.exp(-2.0) + 2.0 * math.exp(-4.0)) / z
    expected, greedy = ev.rating([s])
    assert expected == pytest.approx([by_hand], abs=1e-6) and greedy == [1.0]
