"""The task registry: order = adapter index, flags, templates and their text-only twins."""

import numpy as np
import pandas as pd
import pytest

from ckf_dist.config import ALL_TASKS
from ckf_dist.data.table import SplitData
from ckf_dist.rating_scale import DEFAULT_SCALE, RatingScale
from ckf_dist.tasks import TASKS, available_tasks, count_placeholders, render, yes_no

PH = "<|cf|>"

FIELDS = {
    "ctr": {"history": ["A", "B"], "title": "X"},
    "topk": {"history": ["A"], "candidates": ["X", "Y", "Z"]},
    "rating": {"history": [("A", "4"), ("B", "2")], "title": "X"},
    "review_rating": {"title": "X", "review": "great strings, warm tone"},
    "explanation": {"title": "X"},
}
N_ITEMS = {"ctr": 1, "topk": 3, "rating": 1, "review_rating": 1, "explanation": 1}


def test_registry_order_indices_and_flags():
    assert tuple(TASKS) == ALL_TASKS
    assert [t.index for t in TASKS.values()] == list(range(len(ALL_TASKS)))
    flags = {n: (t.needs_rating, t.needs_text) for n, t in TASKS.items()}
    assert flags == {"ctr": (False, False), "topk": (False, False), "rating": (True, False),
                     "review_rating": (True, True), "explanation": (False, True)}
    assert TASKS["ctr"].metrics == ("auc", "uauc") and TASKS["rating"].metrics == ("mae", "rmse")
    assert "hr@1" in TASKS["topk"].metrics and "bleu4" in TASKS["explanation"].metrics
    assert TASKS["ctr"].choices == ("Yes", "No") and TASKS["rating"].choices == tuple("12345")


def test_ctr_prompt_reads_as_specified():
    prompt, text = render("ctr", FIELDS["ctr"], PH)
    assert prompt == ('The user\'s preferences are encoded in <|cf|>. The user liked these items: "A", "B". '
                      'Will the user enjoy the item titled "X" with encoded feature <|cf|>? Answer Yes or No.')
    assert text == 'The user liked these items: "A", "B". Will the user enjoy the item titled "X"? Answer Yes or No.'


@pytest.mark.parametrize("task", ALL_TASKS)
@pytest.mark.parametrize("ph", [PH, "<CF>", "[unused0]"])
def test_placeholders_and_twin(task, ph):
    prompt, text = render(task, FIELDS[task], ph)
    assert count_placeholders(prompt, ph) == 1 + N_ITEMS[task]
    assert prompt.index(ph) < prompt.index('"X"')  # the user slot comes first
    assert count_placeholders(text, ph) == 0 and "encoded" not in text
    assert '"X"' in text  # the twin keeps the item itself


def test_topk_slots_follow_candidate_order():
    prompt, _ = render("topk", FIELDS["topk"], PH)
    after_user = prompt.split(PH, 1)[1]
    order = [after_user.index(f'"{t}" {PH}') for t in ("X", "Y", "Z")]
    assert order == sorted(order)


def test_placeholder_in_free_text_is_scrubbed():
    prompt, text = render("review_rating", {"title": f"Evil {PH} Title", "review": f"a {PH} b"}, PH)
    assert count_placeholders(prompt, PH) == 2 and count_placeholders(text, PH) == 0


def test_empty_history_and_answers():
    prompt, _ = render("ctr", {"history": [], "title": "X"}, PH)
    assert "has not liked any items" in prompt
    assert (yes_no(1.0), yes_no(0.0)) == ("Yes", "No")
    assert [DEFAULT_SCALE.answer(r) for r in (1.0, 2.5, 3.49, 4.5, 5.0, 0.5, 7)] == ["1", "3", "3", "5", "5", "1", "5"]
    half = RatingScale(0.5, 5.0, 0.5)
    assert [half.answer(r) for r in (0.5, 0.74, 0.75, 3.0, 3.5, 4.2, 5.0, 0.1, 9)] == \
        ["0.5", "0.5", "1", "3", "3.5", "4", "5", "0.5", "5"]
    with pytest.raises(ValueError):
        render("ctr", FIELDS["ctr"], "")


def _sd(rating, review, summary):
    n = len(rating)
    inter = pd.DataFrame({"u": np.zeros(n, dtype=np.int64), "i": np.arange(n), "timestamp": np.arange(n),
                          "rating": rating, "label": [np.nan if r == r else 1.0 for r in rating],
                          "review": review, "summary": summary, "split": ["train"] * n, "pos": [1.0] * n})
    return SplitData("d", inter, ["u"], [str(k) for k in range(n)], ["t"] * n, [""] * n)


def test_available_tasks():
    nan = float("nan")
    assert available_tasks(_sd([nan, nan], ["", ""], ["", ""])) == ["ctr", "topk"]
    assert available_tasks(_sd([4.0, 2.0], ["", ""], ["", ""])) == ["ctr", "topk", "rating"]
    assert available_tasks(_sd([4.0, 2.0], ["nice", ""], ["ok", ""])) == list(ALL_TASKS)
    assert available_tasks(_sd([nan, nan], ["nice", ""], ["ok", ""])) == ["ctr", "topk", "explanation"]
