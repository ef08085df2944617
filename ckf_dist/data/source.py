"""An input data set as independent read tasks: what every loader and both preparation engines share.

A :class:`Source` is one data set on disk (or the synthetic generator). The driver opens it (item
file, header: small, O(items)), plans its read tasks (byte ranges of the interactions file, row
groups, generator blocks) and, after reading, finishes the item table (metadata titles, the
optional user file). Each task is parsed by :meth:`Source.read` with the format's one per-record
parser, on any worker, into row batches; a row's ``order`` is its position in the input (the line
number for text files), which breaks timestamp ties exactly as file order does. Bad records go to
the task's own :class:`~ckf_dist.data.errors.BadRecords`; skip counts are summed over the tasks, and
under ``error`` the first bad record in input order is the one reported.

:func:`read_all` runs every task in this process and returns the loaded :class:`RecData` (what
``load_dataset`` and the format loaders return).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from ckf_dist.data.errors import BadRecords, DataError
from ckf_dist.data.ranges import Range
from ckf_dist.data.table import RecData, interactions_frame

log = logging.getLogger(__name__)

ROW_COLUMNS = ("user", "item", "timestamp", "rating", "label", "review", "summary", "split", "order")
"""Columns of a parsed row batch: RecData.interactions' columns plus the input position."""
BATCH_ROWS = 65536
"""Rows per batch a read task yields (its memory does not grow with the range)."""

Mapper = Callable[[Callable, Sequence], list]
"""Runs fn over each argument (in parallel where it can) and returns the results in order."""


def serial_map(fn: Callable, args: Sequence) -> list:
    return [fn(a) for a in args]


@dataclass(frozen=True)
class ReadTask:
    """One unit of reading: a byte range of a text file or a format-specific part (row group, blocks)."""

    index: int
    range: Optional[Range] = None
    part: Any = None


class RowBatcher:
    """Collects parsed rows column by column and hands them out in batches of BATCH_ROWS."""

    def __init__(self):
        self.cols: dict[str, list] = {c: [] for c in ROW_COLUMNS}

    def add(self, user: str, item: str, timestamp: int, order: int, rating: float = float("nan"),
            label: float = float("nan"), review: str = "", summary: str = "", split: str = "") -> None:
        c = self.cols
        c["user"].append(user)
        c["item"].append(item)
        c["timestamp"].append(timestamp)
        c["rating"].append(rating)
        c["label"].append(label)
        c["review"].append(review)
        c["summary"].append(summary)
        c["split"].append(split)
        c["order"].append(order)

    def __len__(self) -> int:
        return len(self.cols["order"])

    def full(self) -> bool:
        return len(self) >= BATCH_ROWS

    def take(self) -> dict[str, list]:
        out, self.cols = self.cols, {c: [] for c in ROW_COLUMNS}
        return out


def rows_frame(cols: dict[str, list]) -> pd.DataFrame:
    """A row batch as a DataFrame with RecData.interactions' dtypes plus int64 `order`."""
    df = interactions_frame(cols["user"], cols["item"], cols["timestamp"], rating=cols["rating"], label=cols["label"],
                            review=cols["review"], summary=cols["summary"], split=cols["split"])
    df["order"] = np.asarray(cols["order"], dtype=np.int64)
    return df


class Source:
    """One input data set; subclasses implement the format (see the module docstring)."""

    name: str = "data"
    known_items: Optional[frozenset] = None
    """Item ids a record may name (None = any: the items come from the records)."""
    empty_message: str = "no interactions left after skipping bad records"
    has_split_column: bool = False
    """The format has a split column (then a row without one, while others have one, is a bad record)."""

    def plan(self, block_bytes: int, run: Mapper = serial_map) -> list[ReadTask]:
        raise NotImplementedError

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        """Row batches (columns ROW_COLUMNS) of one task, in input order."""
        raise NotImplementedError

    def size_hint(self, tasks: list[ReadTask]) -> int:
        """About how many bytes the records take once read (sizes the user partitions): the
        ranges' bytes, four times a compressed file's."""
        total = 0
        for t in tasks:
            if t.range is not None:
                total += 4 * os.path.getsize(t.range.path) if t.range.whole else t.range.end - t.range.start
        return total

    def where(self, order: int) -> str:
        """Where the record at input position `order` is, for messages ("file:line")."""
        return f"{self.name}:{order}"

    def items(self, used: set[str], bad: BadRecords) -> pd.DataFrame:
        """The item table (RecData.items) of the `used` item ids, after reading (metadata read here)."""
        raise NotImplementedError

    def users(self, bad: BadRecords) -> Optional[pd.DataFrame]:
        """Optional user metadata (read after the interactions)."""
        return None

    def item_titles(self) -> Optional[dict[str, tuple[str, str]]]:
        """item -> (title, description) known before reading (the item file); None when the titles come
        after reading (a metadata file: see `items`)."""
        return None


def drop_missing_split(frame: pd.DataFrame, source: Source, bad: BadRecords) -> pd.DataFrame:
    """Rows without a split where others have one are bad records (in input order)."""
    missing = (frame["split"] == "").to_numpy()
    if source.has_split_column and missing.any() and not missing.all():
        for order in frame["order"].to_numpy()[missing]:
            bad(source.where(int(order)), "missing_split", "empty split while other rows set one")
        frame = frame[~missing]
    return frame


def read_all(source: Source, mode: str, block_bytes: int = 64 << 20, counts: Optional[Counter] = None) -> RecData:
    """Every read task of `source` in this process, in input order -> RecData (`counts`: bad
    records already counted while opening the source)."""
    counts = Counter(counts or {})
    parts: list[pd.DataFrame] = []
    for task in source.plan(block_bytes):
        bad = BadRecords(mode)
        for cols in source.read(task, bad):
            parts.append(rows_frame(cols))
        counts.update(bad.counts)
    frame = pd.concat(parts, ignore_index=True) if parts else rows_frame({c: [] for c in ROW_COLUMNS})
    bad = BadRecords(mode, counts)
    frame = drop_missing_split(frame, source, bad)
    users = source.users(bad)
    if not len(frame):
        raise DataError(source.empty_message)
    items = source.items(set(frame["item"].unique()), bad)
    if users is not None:
        users = users[users["user"].isin(set(frame["user"]))].reset_index(drop=True)
    bad.log_summary(source.name)
    inter = frame.drop(columns="order").reset_index(drop=True)
    return RecData(name=source.name, interactions=inter, items=items, users=users, skipped=bad.as_dict())
