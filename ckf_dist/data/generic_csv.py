"""Generic CSV loader -> RecData, for data sets that are neither MovieLens nor Amazon.

A folder holding two files (UTF-8, header row, comma-separated, standard CSV quoting)::

    interactions.csv   user_id,item_id,timestamp + rating and/or label (0/1)
                       optional: review, summary, split (train|valid|test)
    items.csv          item_id,title + optional description

``timestamp`` is integer seconds or an ISO-8601 date/time (naive = UTC). When the ``split``
column is filled it is honoured exactly, so it must then be filled on every row, and every user
in valid/test needs at least one train row. Items with an empty title get a pseudo-title from
training reviews at split time. Records are read with the csv module so that every problem is
reported with the line it starts on. The interactions file is read in byte ranges (see
:mod:`ckf_dist.data.ranges`), each by the same record parser.

A quoted field may span lines only in the free-text columns (review, summary, title,
description). A record whose line break sits elsewhere, or a multi-line record that is malformed,
is a quoting failure (a stray `"` makes the csv module read on to the next quote, swallowing the
lines between into one field): the reader refuses it in both `data.on_bad_record` modes, naming
the line the quote opened on and the lines it swallowed, since skipping it would drop them all.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from ckf_dist.data.errors import BadRecords, DataError, parse_rating, parse_timestamp, require_file
from ckf_dist.data.ranges import Range, iter_csv, newline_count, plain_lines, plan_ranges
from ckf_dist.data.source import Mapper, ReadTask, RowBatcher, Source, read_all, serial_map
from ckf_dist.data.table import SPLITS, RecData, items_frame

REQUIRED = ("user_id", "item_id", "timestamp")
OPTIONAL = ("rating", "label", "review", "summary", "split")
TEXT = ("review", "summary", "title", "description")
"""Columns whose quoted values may span lines."""


def _check_utf8(path: Path) -> None:
    """A byte that is not UTF-8 stops with file:line (the csv module would raise mid-file without one)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8 "
                                "(save the file as UTF-8)") from None


def csv_records(path: Path):
    """(header, iterator of (line where the record starts, fields, line where it ends)); skips blank lines."""
    _check_utf8(path)
    f = open(path, encoding="utf-8-sig", newline="")
    reader = csv.reader(f)

    def rows():
        with f:
            start = 1
            try:
                for row in reader:
                    line, start = start, reader.line_num + 1
                    if row and any(c.strip() for c in row):
                        yield line, row, reader.line_num
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None

    it = rows()
    first = next(it, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header row)")
    return [c.strip() for c in first[1]], it


def check_quoting(path: Path, header: list[str], n: int, row: list[str], end: int) -> None:
    """A record spanning lines n..end: fine when it is well-formed and only free-text fields hold
    the line breaks; else a quoting failure, refused whatever data.on_bad_record says."""
    if end <= n:
        return
    broken = [header[k] if k < len(header) else f"field {k + 1}" for k, c in enumerate(row) if "\n" in c or "\r" in c]
    if len(row) == len(header) and all(c in TEXT for c in broken):
        return
    raise DataError(f"{path}:{n}: a quoted field opened on this line runs to line {end}, swallowing {end - n} line(s) "
                    f"into one record (a stray '\"'?); fix the quoting: skipping it would drop those lines")


def _parse_time(text: str, where: str, bad: BadRecords) -> Optional[int]:
    text = text.strip()
    if text and not text.lstrip("-").replace(".", "", 1).isdigit():
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            bad(where, "bad_timestamp", f"timestamp {text!r} is neither integer seconds nor ISO-8601")
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp())
    return parse_timestamp(text, where, bad)


def _parse_label(text: str, where: str, bad: BadRecords) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        v = None
    if v not in (0.0, 1.0):
        bad(where, "bad_label", f"label {text!r} is not 0 or 1")
        return None
    return v


def csv_rows(path: Path, bad: BadRecords, required: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """(``file:line``, fields by column) for each record of a headed CSV whose field count matches the
    header; a record with another count is a bad record, a quoting failure stops (:func:`check_quoting`).
    A missing `required` column stops before the first record."""
    header, rows = csv_records(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column {missing[0]!r} (have {', '.join(header)})")
    return _fields(path, header, rows, bad)


def _fields(path: Path, header: list[str], rows, bad: BadRecords) -> Iterator[tuple[str, dict[str, str]]]:
    for n, row, end in rows:
        where = f"{path}:{n}"
        check_quoting(path, header, n, row, end)
        if len(row) != len(header):
            bad(where, "wrong_field_count", f"expected {len(header)} comma-separated fields, got {len(row)}")
            continue
        yield where, dict(zip(header, row))


def item_list(rows, bad: BadRecords) -> tuple[list[str], list[str], list[str]]:
    """(where, item_id, title, description) rows of an item file -> (ids, titles, descriptions); an empty
    or repeated id is a bad record."""
    ids, titles, descs = [], [], []
    seen: set[str] = set()
    for where, item, title, desc in rows:
        item = item.strip()
        if not item:
            bad(where, "missing_id", "empty item_id")
            continue
        if item in seen:
            bad(where, "duplicate_item", f"item {item!r} listed twice")
            continue
        seen.add(item)
        ids.append(item)
        titles.append(title.strip())
        descs.append(desc.strip())
    return ids, titles, descs


def read_items(path: Path, bad: BadRecords) -> tuple[list[str], list[str], list[str]]:
    """items.csv -> (ids, titles, descriptions)."""
    rows = csv_rows(path, bad, ("item_id", "title"))
    return item_list(((where, f["item_id"], f["title"], f.get("description", "")) for where, f in rows), bad)


def interaction_record(where: str, order: int, get: dict[str, str], known_items: frozenset, item_file: str,
                       bounds: Optional[tuple[float, float]], bad: BadRecords, out: RowBatcher) -> None:
    """One interaction record (column -> text; REQUIRED columns present, OPTIONAL ones where the
    file has them) into `out`, or reported to `bad`."""
    user, item = get["user_id"].strip(), get["item_id"].strip()
    if not user or not item:
        bad(where, "missing_id", "empty user_id or item_id")
        return
    if item not in known_items:
        bad(where, "unknown_item", f"item {item!r} is not in {item_file}")
        return
    ts = _parse_time(get["timestamp"], where, bad)
    if ts is None:
        return
    rating = label = float("nan")
    r_text, l_text = get.get("rating", "").strip(), get.get("label", "").strip()
    if not r_text and not l_text:
        bad(where, "missing_rating", "neither rating nor label given")
        return
    if r_text or "label" not in get:
        r = parse_rating(r_text, where, bad, bounds)
        if r is None:
            return
        rating = r
    if l_text:
        lab = _parse_label(l_text, where, bad)
        if lab is None:
            return
        label = lab
    split = get.get("split", "").strip()
    if split and split not in SPLITS:
        bad(where, "bad_split", f"split {split!r} is not one of {', '.join(SPLITS)}")
        return
    out.add(user, item, ts, order, rating=rating, label=label, review=get.get("review", "").strip(),
            summary=get.get("summary", "").strip(), split=split)


def check_header(path: Path, header: list[str]) -> dict[str, int]:
    """Column -> position of the REQUIRED and OPTIONAL columns; a one-line DataError when one is missing."""
    for c in REQUIRED:
        if c not in header:
            raise DataError(f"{path}:1: missing column {c!r} (have {', '.join(header)})")
    if "rating" not in header and "label" not in header:
        raise DataError(f"{path}:1: needs a 'rating' or a 'label' column (have {', '.join(header)})")
    return {c: header.index(c) for c in REQUIRED + OPTIONAL if c in header}


def csv_header(path: Path) -> tuple[list[str], int, int]:
    """(header fields, byte offset where the body starts, line number of the body's first line)
    of a CSV file; blank lines before the header are skipped."""
    r = Range(str(path), 0, -1, 1)
    for _, fields, after, _ in iter_csv(r):
        return [c.strip() for c in fields], after, 1 + newline_count(Range(str(path), 0, after, 1))
    raise DataError(f"{path}: empty file (expected a header row)")


class ItemListSource(Source):
    """A source whose item file (ids, titles, descriptions) is read before the interactions."""

    item_ids: list[str]
    titles: list[str]
    descs: list[str]

    def items(self, used: set[str], bad: BadRecords) -> pd.DataFrame:
        keep = [k for k, i in enumerate(self.item_ids) if i in used]
        return items_frame([self.item_ids[k] for k in keep], [self.titles[k] for k in keep], [self.descs[k] for k in keep])

    def item_titles(self) -> Optional[dict[str, tuple[str, str]]]:
        return dict(zip(self.item_ids, zip(self.titles, self.descs)))


class CsvSource(ItemListSource):
    """``interactions.csv`` + ``items.csv`` in a folder (see the module docstring)."""

    has_split_column = True

    def __init__(self, folder: str | Path, bad: BadRecords, bounds: Optional[tuple[float, float]] = None):
        folder = Path(folder)
        self.folder, self.bounds = folder, bounds
        self.path = require_file(folder / "interactions.csv", "interactions file")
        items_path = require_file(folder / "items.csv", "items file")
        self.item_file = items_path.name
        self.item_ids, self.titles, self.descs = read_items(items_path, bad)
        self.known_items = frozenset(self.item_ids)
        self.header, self.body_start, self.body_line = csv_header(self.path)
        self.pos = check_header(self.path, self.header)
        self.n_fields = len(self.header)
        self.name = folder.name or "csv"
        self.empty_message = f"{self.path}: no interactions left after skipping bad records"

    def plan(self, block_bytes: int, run: Mapper = serial_map) -> list[ReadTask]:
        ranges = plan_ranges(self.path, self.body_start, self.body_line, block_bytes, run, True)
        return [ReadTask(k, r) for k, r in enumerate(ranges)]

    def where(self, order: int) -> str:
        return f"{self.path}:{order}"

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        out = RowBatcher()
        plain = plain_lines(task.range)
        records = ((n, line.split(","), 0, n) for n, line in plain) if plain is not None else iter_csv(task.range)
        for n, row, _, end in records:
            if plain is not None and not any(c.strip() for c in row):
                continue
            check_quoting(self.path, self.header, n, row, end)
            self._record(n, row, bad, out)
            if out.full():
                yield out.take()
        if len(out):
            yield out.take()

    def _record(self, n: int, row: list[str], bad: BadRecords, out: RowBatcher) -> None:
        where = f"{self.path}:{n}"
        if len(row) != self.n_fields:
            bad(where, "wrong_field_count", f"expected {self.n_fields} comma-separated fields, got {len(row)}")
            return
        interaction_record(where, n, {c: row[i] for c, i in self.pos.items()}, self.known_items, self.item_file,
                           self.bounds, bad, out)


def load_csv(folder: str | Path, on_bad_record: str = "error", bounds: Optional[tuple[float, float]] = None) -> RecData:
    """``interactions.csv`` + ``items.csv`` in `folder` -> RecData (split column kept when filled);
    ratings outside `bounds` (lo, hi: data.rating_scale) are bad records, any finite one without."""
    bad = BadRecords(on_bad_record)
    return read_all(CsvSource(folder, bad, bounds), on_bad_record, counts=bad.counts)
