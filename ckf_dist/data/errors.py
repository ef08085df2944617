"""Bad input: the one exception every loader raises, and the error-or-skip policy.

`data.on_bad_record` decides what a malformed record does: ``error`` stops with a one-line
:class:`DataError` naming the file, the line and the problem (``u.data:17: expected 4
tab-separated fields, got 3``); ``skip`` drops the record and counts it under a short reason
(``wrong_field_count``), so nothing is ever dropped silently. A missing file or a dataset left
empty after skipping is always an error: there is nothing sensible to continue with.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message is one line naming the file (and line) and the problem."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise a DataError when it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found")
    return p


class BadRecords:
    """Applies ``data.on_bad_record`` to malformed records and keeps the per-reason counts.

    Call it with where the record is (``"path:line"``), a short reason key for the skip
    counters and the human-readable problem.
    """

    def __init__(self, mode: str = "error", counts: Optional[dict[str, int]] = None):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.counts: Counter = Counter(counts or {})

    def __call__(self, where: str, reason: str, problem: str) -> None:
        if self.mode == "error":
            raise DataError(f"{where}: {problem}")
        self.counts[reason] += 1

    def skip_many(self, reason: str, n: int) -> None:
        """Count `n` records dropped for `reason` (used where records go in bulk, already reported)."""
        if n:
            self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.counts.items()) if v}

    def log_summary(self, name: str) -> None:
        """One line: how many records of `name` were skipped, by reason (nothing when none)."""
        if self.counts:
            total = sum(self.counts.values())
            detail = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            log.warning("%s: skipped %d bad record(s) (%s)", name, total, detail)


def parse_rating(text: object, where: str, bad: BadRecords,
                 scale: Optional[tuple[float, float]] = (1.0, 5.0)) -> Optional[float]:
    """A rating within `scale` (lo, hi; None = any finite number), or None after reporting the
    record to `bad`."""
    try:
        r = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        bad(where, "bad_rating", f"rating {text!r} is not a number")
        return None
    if not math.isfinite(r):
        bad(where, "bad_rating", f"rating {text!r} is not a finite number")
        return None
    if scale is not None and not scale[0] - 1e-9 <= r <= scale[1] + 1e-9:
        bad(where, "bad_rating", f"rating {text!r} outside {scale[0]:g}..{scale[1]:g}")
        return None
    return r


def parse_timestamp(text: object, where: str, bad: BadRecords) -> Optional[int]:
    """Integer seconds (an integral float such as ``1393545600.0`` is accepted), or None after reporting."""
    try:
        if isinstance(text, str):
            text = text.strip()
            t = int(text) if text.lstrip("-").isdigit() else float(text)
        else:
            t = text  # type: ignore[assignment]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or int(t) != t:
            raise ValueError
        value = int(t)
    except (TypeError, ValueError, OverflowError):
        bad(where, "bad_timestamp", f"timestamp {text!r} is not an integer")
        return None
    if not -(2**62) <= value < 2**62:  # stored as int64: a 20-digit value is not a time
        bad(where, "bad_timestamp", f"timestamp {text!r} is out of range")
        return None
    return value
