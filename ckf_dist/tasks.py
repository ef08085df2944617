"""The task registry: name <-> adapter index <-> prompt template <-> answer <-> metrics.

One :class:`Task` per task of the CKF paper (arXiv 2410.20642), in ``config.ALL_TASKS`` order (the position
is the task-specific LoRA adapter index). Every template renders two prompts from the same
fields: the CF prompt, whose **first** placeholder takes the user vector and each later one an
item vector in the order of the sample's ``items``; and its **text-only twin**, with the
placeholders and the clauses carrying them removed (curriculum and text-only baseline).

The placeholder string is never hard-coded here: it is ``model.placeholder_token``, passed to
:func:`render`. Free text (titles, reviews) is scrubbed of the placeholder before it is
inserted, so ``count_placeholders(prompt, ph) == 1 + len(items)`` always holds.

This module knows prompts and answers only; sample selection lives in ``data/samples.py``,
metric computation in ``eval/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ckf_dist.config import ALL_TASKS
from ckf_dist.rating_scale import DEFAULT_SCALE

# A template takes the task's fields and the placeholder (None = the text-only twin).
Template = Callable[[dict, Optional[str]], str]


def _user(ph: Optional[str]) -> str:
    return f"The user's preferences are encoded in {ph}. " if ph else ""


def _opening(f: dict, ph: Optional[str]) -> str:
    """The opening clause of a one-item prompt: the user's encoded preferences and, with
    data.features_first (field ``features_first``), the target item's encoded feature beside them."""
    if ph and f.get("features_first"):
        return f"{_user(ph)}The item's feature is encoded in {ph}. "
    return _user(ph)


def _item(f: dict, ph: Optional[str]) -> str:
    """The target item, named by its title; field ``item_stats``, when given, in brackets after it
    (data.item_rating_stats); its encoded feature after it unless :func:`_opening` stated it."""
    stats = f" ({f['item_stats']})" if f.get("item_stats") else ""
    feature = f" with encoded feature {ph}" if ph and not f.get("features_first") else ""
    return f'the item titled "{f["title"]}"{stats}{feature}'


def item_stats_text(total: float, count: int) -> str:
    """The item's training ratings as the ctr / rating prompts state them: mean (one decimal) and count."""
    if count <= 0:
        return "no ratings yet"
    return f"average rating {total / count:.1f} from {count} rating{'s' if count != 1 else ''}"


def _quoted(titles: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def ctr_template(f: dict, ph: Optional[str]) -> str:
    """fields: history (liked titles, oldest first), title; with explicit feedback also disliked
    (disliked titles, oldest first; TALLRec's liked / disliked lists); optional item_stats (item_stats_text)."""
    if "disliked" in f:
        hist = "".join(f"The user {verb} these items: {_quoted(f[key])}. "
                       for verb, key in (("liked", "history"), ("disliked", "disliked")) if f[key])
        hist = hist or "The user has no earlier interactions. "
    else:
        hist = f"The user liked these items: {_quoted(f['history'])}. " if f["history"] else "The user has not liked any items yet. "
    return f"{_opening(f, ph)}{hist}Will the user enjoy {_item(f, ph)}? Answer Yes or No."


def topk_template(f: dict, ph: Optional[str]) -> str:
    """fields: history (liked titles, oldest first), candidates (titles, in slot order)."""
    hist = (f"The user recently liked these items: {_quoted(f['history'])}. " if f["history"]
            else "The user has not liked any items yet. ")
    cands = "; ".join(f'"{t}"' + (f" {ph}" if ph else "") for t in f["candidates"])
    feature = " (each title followed by its encoded feature)" if ph else ""
    return (f"{_user(ph)}{hist}Which of these candidate items will the user choose next? "
            f"Candidates{feature}: {cands}. Answer with the title of one candidate.")


def rating_template(f: dict, ph: Optional[str]) -> str:
    """fields: history (list of (title, rating text)), title, scale (RatingScale; default 1..5); optional
    item_stats (item_stats_text)."""
    scale = f.get("scale", DEFAULT_SCALE)
    if f["history"]:
        hist = (f"The user rated these items from {scale.range_text()}: "
                + "; ".join(f'"{t}", rating: {r}' for t, r in f["history"]) + ". ")
    else:
        hist = "The user has not rated any items yet. "
    return f"{_opening(f, ph)}{hist}How would the user rate {_item(f, ph)}? {scale.instruction()}"


def review_rating_template(f: dict, ph: Optional[str]) -> str:
    """fields: title, review (already cut to data.review_words words), scale (RatingScale; default 1..5)."""
    scale = f.get("scale", DEFAULT_SCALE)
    return (f"{_opening(f, ph)}The user wrote this review of {_item(f, ph)}: \"{f['review']}\". "
            f"What rating from {scale.range_text()} did the user give? {scale.instruction()}")


def explanation_template(f: dict, ph: Optional[str]) -> str:
    """fields: title."""
    return f"{_opening(f, ph)}In one short sentence, explain what the user thinks of {_item(f, ph)}."


@dataclass(frozen=True)
class Task:
    name: str
    index: int
    """Position in config.ALL_TASKS: the task-specific adapter id."""
    needs_rating: bool
    """Only data with ratings can build it."""
    needs_text: bool
    """Only data with the text column `text_field` can build it."""
    text_field: str
    """Interaction column the task reads text from ("" when none)."""
    metrics: tuple[str, ...]
    """Metric names reported under eval/<task>/<metric> (hr@k / ndcg@k for every k of eval.ks)."""
    choices: tuple[str, ...]
    """Closed answer set scored by likelihood (empty = free text)."""
    template: Template


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("ctr", ALL_TASKS.index("ctr"), False, False, "", ("auc", "uauc"), ("Yes", "No"), ctr_template),
        Task("topk", ALL_TASKS.index("topk"), False, False, "", ("hr@1", "hr@k", "ndcg@k"), (), topk_template),
        Task("rating", ALL_TASKS.index("rating"), True, False, "", ("mae", "rmse"),
             ("1", "2", "3", "4", "5"), rating_template),
        Task("review_rating", ALL_TASKS.index("review_rating"), True, True, "review", ("mae", "rmse"),
             ("1", "2", "3", "4", "5"), review_rating_template),
        Task("explanation", ALL_TASKS.index("explanation"), False, True, "summary",
             ("bleu4", "rouge1", "rouge2", "rougeL"), (), explanation_template),
    )
}
assert tuple(TASKS) == ALL_TASKS


def _scrub(value, ph: str):
    if isinstance(value, str):
        return value.replace(ph, " ")
    if isinstance(value, (list, tuple)):
        return [_scrub(v, ph) for v in value]
    return value


def render(task: str | Task, fields: dict, placeholder: str) -> tuple[str, str]:
    """(CF prompt, text-only twin) of `task` for `fields`; `placeholder` = model.placeholder_token."""
    if not placeholder:
        raise ValueError("placeholder must be a non-empty string")
    t = TASKS[task] if isinstance(task, str) else task
    text = t.template(fields, None)
    if placeholder in text:  # the twin holds every free-text field: scrub only when one has the token
        fields = {k: _scrub(v, placeholder) for k, v in fields.items()}
        text = t.template(fields, None)
    return t.template(fields, placeholder), text


def count_placeholders(prompt: str, placeholder: str) -> int:
    """Occurrences of `placeholder` in `prompt`; a valid sample has 1 + len(items)."""
    return prompt.count(placeholder)


def yes_no(label: float) -> str:
    """ctr answer."""
    return "Yes" if label >= 0.5 else "No"


def available_tasks(split_data) -> list[str]:
    """Tasks the data can build, in ALL_TASKS order: ctr and topk always; rating needs ratings;
    review_rating needs ratings and reviews; explanation needs summaries."""
    inter = split_data.inter
    fields = {t.text_field for t in TASKS.values() if t.needs_text}
    return available_tasks_from(split_data.has_rating, {f: bool((inter[f].str.len() > 0).any()) for f in fields})


def available_tasks_from(has_rating: bool, has_text: dict[str, bool]) -> list[str]:
    """available_tasks from the data's flags: ratings present, and per text field, any non-empty text."""
    return [t.name for t in TASKS.values()
            if not (t.needs_rating and not has_rating) and not (t.needs_text and not has_text.get(t.text_field, False))]


def missing_requirement(task: str) -> str:
    """What a task needs, in words, for error messages."""
    t = TASKS[task]
    needs = (["ratings"] if t.needs_rating else []) + ([f"{t.text_field} text"] if t.needs_text else [])
    return " and ".join(needs) or "interactions"
