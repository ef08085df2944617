"""The rating scale of a data set: its lowest and highest rating and the step between levels.

MovieLens 100K/1M and Amazon rate 1..5 in whole stars; the current GroupLens releases
(ml-latest-small, ml-25m, ml-32m) rate 0.5..5.0 in half stars. The scale comes from the data
(or ``data.rating_scale: [lo, hi, step]``) and the rating tasks follow it: the answer is the
rating rounded (half up) to the nearest level, the prompt names the scale, and the evaluator's
expected value runs over the levels. Whole stars 1..5 keep the one-digit answers and texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

MAX_LEVELS = 20  # a scale with more levels than this is not a star rating: set data.rating_scale


class RatingScaleError(ValueError):
    """A rating scale that cannot be used (one line, names where it came from)."""


def _fmt(x: float) -> str:
    """3.0 -> "3", 3.5 -> "3.5" (the text of a level in prompts and answers)."""
    return f"{x:g}"


@dataclass(frozen=True)
class RatingScale:
    lo: float = 1.0
    hi: float = 5.0
    step: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lo", "hi", "step"):
            if not math.isfinite(getattr(self, name)):
                raise RatingScaleError(f"rating scale {name} must be finite, got {getattr(self, name)}")
        if self.step <= 0 or self.hi <= self.lo:
            raise RatingScaleError(f"rating scale needs lo < hi and step > 0, got [{_fmt(self.lo)}, {_fmt(self.hi)}, {_fmt(self.step)}]")
        n = (self.hi - self.lo) / self.step
        if abs(n - round(n)) > 1e-6:
            raise RatingScaleError(f"rating scale [{_fmt(self.lo)}, {_fmt(self.hi)}, {_fmt(self.step)}]: "
                                   "hi - lo is not a whole number of steps")
        if round(n) + 1 > MAX_LEVELS:
            raise RatingScaleError(f"rating scale [{_fmt(self.lo)}, {_fmt(self.hi)}, {_fmt(self.step)}] has "
                                   f"{round(n) + 1} levels (at most {MAX_LEVELS})")

    # ------------------------------------------------------------------ levels
    @cached_property
    def levels(self) -> list[float]:
        n = round((self.hi - self.lo) / self.step)
        return [round(self.lo + k * self.step, 9) for k in range(n + 1)]

    @cached_property
    def answers(self) -> list[str]:
        """The answer text of each level, in level order."""
        return [_fmt(v) for v in self.levels]

    @cached_property
    def whole_digits(self) -> bool:
        """True for whole-star scales within 0..9: every answer is one digit."""
        return all(len(a) == 1 and a.isdigit() for a in self.answers)

    def level_values(self, ratings: np.ndarray) -> np.ndarray:
        """Each rating rounded half up to the nearest level and clipped to the scale (float [n])."""
        k = np.floor((np.asarray(ratings, dtype=np.float64) - self.lo) / self.step + 0.5 + 1e-9)
        k = np.clip(k, 0, len(self.levels) - 1)
        return np.round(self.lo + k * self.step, 9)

    def answer(self, rating: float) -> str:
        """The rating task's answer: the nearest level's text (level_values for one rating)."""
        k = math.floor((float(rating) - self.lo) / self.step + 0.5 + 1e-9)
        return self.answers[min(max(k, 0), len(self.levels) - 1)]

    def answer_texts(self, ratings: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`answer` ("" where the rating is NaN), object [n]."""
        r = np.asarray(ratings, dtype=np.float64)
        out = np.array([_fmt(v) for v in self.level_values(np.nan_to_num(r, nan=self.lo))], dtype=object)
        out[np.isnan(r)] = ""
        return out

    def contains(self, rating: float) -> bool:
        return self.lo - 1e-9 <= rating <= self.hi + 1e-9

    # ------------------------------------------------------------------ prompt text
    def range_text(self) -> str:
        """"1 to 5", or "0.5 to 5 in steps of 0.5"."""
        text = f"{_fmt(self.lo)} to {_fmt(self.hi)}"
        return text if self.step == 1 else f"{text} in steps of {_fmt(self.step)}"

    def instruction(self) -> str:
        """The rating prompts' closing instruction."""
        kind = "digit" if self.whole_digits else "number"
        return f"Answer with one {kind} from {self.range_text()}."

    # ------------------------------------------------------------------ (de)serialisation
    def as_list(self) -> list[float]:
        return [self.lo, self.hi, self.step]

    @classmethod
    def from_list(cls, values: Sequence[float], where: str = "data.rating_scale") -> "RatingScale":
        if len(values) != 3:
            raise RatingScaleError(f"{where}: expected [lo, hi, step], got {list(values)}")
        try:
            return cls(*(float(v) for v in values))
        except RatingScaleError as e:
            raise RatingScaleError(f"{where}: {e}") from None

    @classmethod
    def infer(cls, ratings: Iterable[float]) -> "RatingScale":
        """The scale of observed ratings: lo/hi = min/max, step = the smallest gap between distinct
        values (whole stars 1..5 when every rating is whole and within 1..5, or none are given)."""
        r = np.asarray(list(ratings) if not isinstance(ratings, np.ndarray) else ratings, dtype=np.float64)
        r = np.unique(np.round(r[np.isfinite(r)], 6))
        if len(r) == 0 or (np.all(r == np.round(r)) and r.min() >= 1 and r.max() <= 5):
            return cls()
        if len(r) == 1:
            return cls(float(r[0]), float(r[0]) + 1.0, 1.0)
        step = float(np.round(np.diff(r).min(), 6))
        try:
            return cls(float(r[0]), float(r[-1]), step)
        except RatingScaleError as e:
            raise RatingScaleError(f"ratings in the data: {e}; set data.rating_scale: [lo, hi, step]") from None


DEFAULT_SCALE = RatingScale()
