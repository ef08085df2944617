"""Amazon review loader (McAuley et al. 2014 and 2018 JSON-lines releases) -> RecData.

One review per line: ``reviewerID``, ``asin``, ``overall`` (rating 1..5), ``unixReviewTime``,
``reviewText``, ``summary``. The 2018 release may omit the text fields: a missing
``reviewText`` or ``summary`` is "". ``.gz`` files are read directly (as one read task: a gzip
stream cannot be entered in the middle; decompress a large file to read it in parallel byte
ranges); a line that is not JSON but a python literal (some 2014 files) is accepted too.

Titles come from an optional metadata file (``data.meta_path``; lines with ``asin`` and
``title``). The 2014 metadata is python-literal rather than JSON, so each line is tried as JSON
first, then with :func:`ast.literal_eval`. Items without a metadata title keep title "": the
split derives readable pseudo-titles for them from *training* reviews only
(:func:`ckf_dist.data.splits.pseudo_titles`), because deriving them here would leak
held-out review words into every prompt.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from pathlib import Path
from typing import IO, Iterator, Optional

import pandas as pd

from ckf_dist.data.errors import BadRecords, parse_rating, parse_timestamp, require_file
from ckf_dist.data.ranges import iter_lines, plan_ranges
from ckf_dist.data.source import Mapper, ReadTask, RowBatcher, Source, read_all, serial_map
from ckf_dist.data.table import RecData, items_frame

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


_NOT_UTF8 = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as surrogateescape keeps them (distinct per byte, never merged)."""


def _open_text(path: Path) -> IO[str]:
    # surrogateescape, not replace: "AXX\xffZ" and "AXX\xfeZ" must not become the same id; a line
    # holding such bytes is a bad record (see load_amazon)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def _clean(text: object) -> str:
    """Text field -> one line of plain text (HTML entities and tags removed, whitespace collapsed)."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()


def _parse_line(line: str) -> object:
    """JSON first; python-literal (2014 metadata) second; raises ValueError when neither parses."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        first = e
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError(f"invalid JSON ({first.msg} at column {first.colno})") from None


_SKIP = object()


def _json_record(line: str, where: str, bad: BadRecords):
    """One JSON-lines record, or _SKIP for a blank line or a bad one (counted): the line must be UTF-8
    (read with surrogateescape) and valid JSON."""
    if not line.strip():
        return _SKIP
    bad_byte = _NOT_UTF8.search(line)
    if bad_byte:
        bad(where, "bad_encoding", f"byte 0x{ord(bad_byte.group()) - 0xDC00:02x} at column {bad_byte.start() + 1} is not UTF-8")
        return _SKIP
    try:
        return _parse_line(line)
    except ValueError as e:
        bad(where, "bad_json", str(e))
        return _SKIP


def read_metadata(path: str | Path, bad: BadRecords) -> dict[str, str]:
    """asin -> title from a metadata JSON-lines file; lines without a title are fine and ignored."""
    p = require_file(path, "Amazon metadata file")
    titles: dict[str, str] = {}
    with _open_text(p) as f:
        for n, line in enumerate(f, 1):
            where = f"{p}:{n}"
            rec = _json_record(line, where, bad)
            if rec is _SKIP:
                continue
            if not isinstance(rec, dict) or not rec.get("asin"):
                bad(where, "missing_field", "metadata record without 'asin'")
                continue
            title = _clean(rec.get("title"))
            if title:
                titles[str(rec["asin"]).strip()] = title
    return titles


_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")


class AmazonSource(Source):
    """A reviews JSON-lines file (``.gz`` read as one range) and an optional metadata file."""

    def __init__(self, path: str | Path, meta_path: Optional[str | Path] = None,
                 bounds: Optional[tuple[float, float]] = (1.0, 5.0)):
        self.path = require_file(path, "Amazon reviews file")
        self.meta_path, self.bounds = meta_path, bounds
        self.name = f"amazon-{self.path.name.split('.')[0]}"
        self.empty_message = f"{self.path}: no reviews left after skipping bad records"

    def plan(self, block_bytes: int, run: Mapper = serial_map) -> list[ReadTask]:
        return [ReadTask(k, r) for k, r in enumerate(plan_ranges(self.path, 0, 1, block_bytes, run, False))]

    def where(self, order: int) -> str:
        return f"{self.path}:{order}"

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        out = RowBatcher()
        for n, raw, _ in iter_lines(task.range):
            # surrogateescape, not replace: "AXX\xffZ" and "AXX\xfeZ" must not become the same id
            line = raw.decode("utf-8", errors="surrogateescape")
            where = f"{self.path}:{n}"
            rec = _json_record(line, where, bad)
            if rec is _SKIP:
                continue
            if not isinstance(rec, dict):
                bad(where, "bad_json", f"expected a JSON object, got {type(rec).__name__}")
                continue
            missing = [k for k in _FIELDS if rec.get(k) in (None, "")]
            if missing:
                bad(where, "missing_field", f"missing field {missing[0]!r}")
                continue
            rating = parse_rating(rec["overall"], where, bad, self.bounds)
            if rating is None:
                continue
            ts = parse_timestamp(rec["unixReviewTime"], where, bad)
            if ts is None:
                continue
            out.add(str(rec["reviewerID"]).strip(), str(rec["asin"]).strip(), ts, n, rating=rating,
                    review=_clean(rec.get("reviewText")), summary=_clean(rec.get("summary")))
            if out.full():
                yield out.take()
        if len(out):
            yield out.take()

    def titles(self, bad: BadRecords) -> dict[str, str]:
        """asin -> title from the metadata file (none without one)."""
        return read_metadata(self.meta_path, bad) if self.meta_path else {}

    def items(self, used: set[str], bad: BadRecords) -> pd.DataFrame:
        titles = self.titles(bad)
        ids = sorted(used)
        return items_frame(ids, [titles.get(a, "") for a in ids])


def load_amazon_json(path: str | Path, meta_path: Optional[str | Path] = None, on_bad_record: str = "error",
                     bounds: Optional[tuple[float, float]] = (1.0, 5.0)) -> RecData:
    """Reviews file (+ optional metadata) -> RecData with rating, review and summary set."""
    return read_all(AmazonSource(path, meta_path, bounds), on_bad_record)
