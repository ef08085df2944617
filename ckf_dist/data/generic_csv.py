"""Generic CSV loader -> RecData, for data sets that are neither MovieLens nor Amazon.

A folder holding two files (UTF-8, header row, comma-separated, standard CSV quoting)::

    interactions.csv   user_id,item_id,timestamp + rating and/or label (0/1)
                       optional: review, summary, split (train|valid|test)
    items.csv          item_id,title + optional description

``timestamp`` is integer seconds or an ISO-8601 date/time (naive = UTC). When the ``split``
column is filled it is honoured exactly, so it must then be filled on every row, and every user
in valid/test needs at least one train row. Items with an empty title get a pseudo-title from
training reviews at split time. Records are read with the csv module so that every problem is
reported with the line it starts on.

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

from ckf_dist.data.errors import BadRecords, DataError, parse_rating, parse_timestamp, require_file
from ckf_dist.data.table import SPLITS, RecData, interactions_frame, items_frame

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


def _read_items(path: Path, bad: BadRecords) -> tuple[list[str], list[str], list[str]]:
    ids, titles, descs = [], [], []
    seen: set[str] = set()
    for where, f in csv_rows(path, bad, ("item_id", "title")):
        item = f["item_id"].strip()
        if not item:
            bad(where, "missing_id", "empty item_id")
            continue
        if item in seen:
            bad(where, "duplicate_item", f"item {item!r} listed twice")
            continue
        seen.add(item)
        ids.append(item)
        titles.append(f["title"].strip())
        descs.append(f.get("description", "").strip())
    return ids, titles, descs


def load_csv(folder: str | Path, on_bad_record: str = "error", bounds: Optional[tuple[float, float]] = None) -> RecData:
    """``interactions.csv`` + ``items.csv`` in `folder` -> RecData (split column kept when filled);
    ratings outside `bounds` (lo, hi: data.rating_scale) are bad records, any finite one without."""
    folder = Path(folder)
    bad = BadRecords(on_bad_record)
    inter_path = require_file(folder / "interactions.csv", "interactions file")
    items_path = require_file(folder / "items.csv", "items file")
    item_ids, titles, descs = _read_items(items_path, bad)
    known_items = set(item_ids)

    header, rows = csv_records(inter_path)
    for c in REQUIRED:
        if c not in header:
            raise DataError(f"{inter_path}:1: missing column {c!r} (have {', '.join(header)})")
    if "rating" not in header and "label" not in header:
        raise DataError(f"{inter_path}:1: needs a 'rating' or a 'label' column (have {', '.join(header)})")
    pos = {c: header.index(c) for c in REQUIRED + OPTIONAL if c in header}

    recs: list[dict] = []
    for n, row, end in rows:
        where = f"{inter_path}:{n}"
        check_quoting(inter_path, header, n, row, end)
        if len(row) != len(header):
            bad(where, "wrong_field_count", f"expected {len(header)} comma-separated fields, got {len(row)}")
            continue
        get = {c: row[i] for c, i in pos.items()}
        user, item = get["user_id"].strip(), get["item_id"].strip()
        if not user or not item:
            bad(where, "missing_id", "empty user_id or item_id")
            continue
        if item not in known_items:
            bad(where, "unknown_item", f"item {item!r} is not in {items_path.name}")
            continue
        ts = _parse_time(get["timestamp"], where, bad)
        if ts is None:
            continue
        rating = label = float("nan")
        r_text, l_text = get.get("rating", "").strip(), get.get("label", "").strip()
        if not r_text and not l_text:
            bad(where, "missing_rating", "neither rating nor label given")
            continue
        if r_text or "label" not in pos:
            r = parse_rating(r_text, where, bad, bounds)
            if r is None:
                continue
            rating = r
        if l_text:
            lab = _parse_label(l_text, where, bad)
            if lab is None:
                continue
            label = lab
        split = get.get("split", "").strip()
        if split and split not in SPLITS:
            bad(where, "bad_split", f"split {split!r} is not one of {', '.join(SPLITS)}")
            continue
        recs.append({"line": n, "user": user, "item": item, "timestamp": ts, "rating": rating, "label": label,
                     "review": get.get("review", "").strip(), "summary": get.get("summary", "").strip(),
                     "split": split})

    if any(r["split"] for r in recs):
        kept = []
        for r in recs:
            if r["split"]:
                kept.append(r)
            else:
                bad(f"{inter_path}:{r['line']}", "missing_split", "empty split while other rows set one")
        recs = kept  # held-out users without a train row are kept: the `new` group

    if not recs:
        raise DataError(f"{inter_path}: no interactions left after skipping bad records")
    cols = {c: [r[c] for r in recs] for c in ("user", "item", "timestamp", "rating", "label", "review", "summary", "split")}
    inter = interactions_frame(**cols)
    used = set(cols["item"])
    keep = [k for k, i in enumerate(item_ids) if i in used]
    items = items_frame([item_ids[k] for k in keep], [titles[k] for k in keep], [descs[k] for k in keep])
    bad.log_summary(folder.name or str(folder))
    return RecData(name=folder.name or "csv", interactions=inter, items=items, skipped=bad.as_dict())
