"""Amazon review loader (McAuley et al. 2014 and 2018 JSON-lines releases) -> RecData.

One review per line: ``reviewerID``, ``asin``, ``overall`` (rating 1..5), ``unixReviewTime``,
``reviewText``, ``summary``. The 2018 release may omit the text fields: a missing
``reviewText`` or ``summary`` is "". ``.gz`` files are read directly; a line that is not JSON but a python literal (some 2014
files) is accepted too.

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
from typing import IO, Optional

from ckf_dist.data.errors import BadRecords, DataError, parse_rating, parse_timestamp, require_file
from ckf_dist.data.table import RecData, interactions_frame, items_frame

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


def read_metadata(path: str | Path, bad: BadRecords) -> dict[str, str]:
    """asin -> title from a metadata JSON-lines file; lines without a title are fine and ignored."""
    p = require_file(path, "Amazon metadata file")
    titles: dict[str, str] = {}
    with _open_text(p) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            bad_byte = _NOT_UTF8.search(line)
            if bad_byte:
                bad(where, "bad_encoding", f"byte 0x{ord(bad_byte.group()) - 0xDC00:02x} at column {bad_byte.start() + 1} is not UTF-8")
                continue
            try:
                rec = _parse_line(line)
            except ValueError as e:
                bad(where, "bad_json", str(e))
                continue
            if not isinstance(rec, dict) or not rec.get("asin"):
                bad(where, "missing_field", "metadata record without 'asin'")
                continue
            title = _clean(rec.get("title"))
            if title:
                titles[str(rec["asin"]).strip()] = title
    return titles


def load_amazon_json(path: str | Path, meta_path: Optional[str | Path] = None, on_bad_record: str = "error",
                     bounds: Optional[tuple[float, float]] = (1.0, 5.0)) -> RecData:
    """Reviews file (+ optional metadata) -> RecData with rating, review and summary set."""
    p = require_file(path, "Amazon reviews file")
    bad = BadRecords(on_bad_record)
    cols: dict[str, list] = {k: [] for k in ("user", "item", "timestamp", "rating", "review", "summary")}
    with _open_text(p) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            bad_byte = _NOT_UTF8.search(line)
            if bad_byte:
                bad(where, "bad_encoding", f"byte 0x{ord(bad_byte.group()) - 0xDC00:02x} at column {bad_byte.start() + 1} is not UTF-8")
                continue
            try:
                rec = _parse_line(line)
            except ValueError as e:
                bad(where, "bad_json", str(e))
                continue
            if not isinstance(rec, dict):
                bad(where, "bad_json", f"expected a JSON object, got {type(rec).__name__}")
                continue
            missing = [k for k in ("reviewerID", "asin", "overall", "unixReviewTime") if rec.get(k) in (None, "")]
            if missing:
                bad(where, "missing_field", f"missing field {missing[0]!r}")
                continue
            rating = parse_rating(rec["overall"], where, bad, bounds)
            if rating is None:
                continue
            ts = parse_timestamp(rec["unixReviewTime"], where, bad)
            if ts is None:
                continue
            cols["user"].append(str(rec["reviewerID"]).strip())
            cols["item"].append(str(rec["asin"]).strip())
            cols["timestamp"].append(ts)
            cols["rating"].append(rating)
            cols["review"].append(_clean(rec.get("reviewText")))
            cols["summary"].append(_clean(rec.get("summary")))
    if not cols["user"]:
        raise DataError(f"{p}: no reviews left after skipping bad records")
    titles = read_metadata(meta_path, bad) if meta_path else {}
    inter = interactions_frame(**cols)
    ids = sorted(set(cols["item"]))
    items = items_frame(ids, [titles.get(a, "") for a in ids])
    name = p.name.split(".")[0]
    bad.log_summary(name)
    return RecData(name=f"amazon-{name}", interactions=inter, items=items, skipped=bad.as_dict())
