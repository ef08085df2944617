"""Parallel reading of one text file: byte ranges cut at line starts, with exact line numbers.

A file is cut into ranges of about `block_bytes`, each starting at the beginning of a line, so
that workers read them independently (:func:`byte_ranges`). Line numbers stay exact: each range
counts its newlines (:func:`newline_count`) and the prefix sums give every range the number of its
first line. A line ends at ``\\n`` (a ``\\r`` before it is part of the line ending), in every engine.

CSV records may span lines (a quoted field with a newline), so a range's first line need not
start a record. A record belongs to the range its first byte is in; a reader of a range parses on
past the range's end to finish its last record (:func:`iter_csv`). Where each range's records really
start is settled before parsing, from the ranges' own scans (:func:`csv_range_end`: where the last
record beginning in the range ends if the range starts a record) and :func:`resolve_csv_starts`:
range k's first record starts where range k-1's last one ends, which only needs rescanning the
ranges after a record that crossed a boundary (none in most files). Compressed (``.gz``) files
are one range: gzip streams cannot be entered in the middle.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ckf_dist.data.errors import DataError

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of `path` (end -1 = to the end); `line` = number of the line at `start`."""

    path: str
    start: int
    end: int
    line: int = 1

    @property
    def whole(self) -> bool:
        return self.end < 0


def compressed(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def _open(path: str) -> "gzip.GzipFile | object":
    return gzip.open(path, "rb") if compressed(path) else open(path, "rb")


def byte_ranges(path: str | Path, start: int, block_bytes: int) -> list[Range]:
    """Ranges of about `block_bytes` from byte `start` to the end, each beginning at a line start
    (line numbers not yet known: see :func:`number_ranges`). A compressed file is one range."""
    path = str(path)
    if compressed(path):
        return [Range(path, start, -1)]
    size = os.path.getsize(path)
    cuts = [start]
    with open(path, "rb") as f:
        at = start + block_bytes
        while at < size:
            f.seek(at)
            f.readline()  # to the end of the line holding byte `at`
            nxt = f.tell()
            if nxt >= size:
                break
            if nxt > cuts[-1]:
                cuts.append(nxt)
            at = nxt + block_bytes
    cuts.append(size)
    return [Range(path, a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [Range(path, start, size)]


def newline_count(r: Range) -> int:
    """Newlines in the range's bytes."""
    n = 0
    with _open(r.path) as f:
        if not r.whole:
            f.seek(r.start)
        left = None if r.whole else r.end - r.start
        while left is None or left > 0:
            chunk = f.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
            if not chunk:
                break
            n += chunk.count(b"\n")
            if left is not None:
                left -= len(chunk)
    return n


def number_ranges(ranges: list[Range], first_line: int, counts: list[int]) -> list[Range]:
    """The ranges with their first line numbers, from each range's newline count."""
    out, line = [], first_line
    for r, n in zip(ranges, counts):
        out.append(Range(r.path, r.start, r.end, line))
        line += n
    return out


def iter_lines(r: Range, beyond: bool = False) -> Iterator[tuple[int, bytes, int]]:
    """(line number, raw line with its ending, byte offset of the line) for each line starting in
    the range (every line to the end of the file when `beyond`)."""
    with _open(r.path) as f:
        pos = r.start
        if not r.whole:
            f.seek(r.start)
        line = r.line
        while beyond or r.whole or pos < r.end:
            raw = f.readline()
            if not raw:
                return
            yield line, raw, pos
            pos += len(raw)
            line += 1


def strip_eol(raw: bytes) -> bytes:
    return raw[:-1] if raw.endswith(b"\n") else raw


def decode_utf8(raw: bytes, path: str, line: int) -> str:
    """A line as UTF-8 text; a byte that is not UTF-8 stops with file:line whatever the bad-record policy."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8 "
                        "(save the file as UTF-8)") from None


class _CsvLines:
    """The lines fed to csv.reader, remembering where the next unread line starts."""

    def __init__(self, r: Range, bom: bool):
        self.it = iter_lines(r, beyond=True)
        self.path = r.path
        self.next_pos, self.next_line = r.start, r.line
        self.bom = bom

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line, raw, pos = next(self.it)
        self.next_pos, self.next_line = pos + len(raw), line + 1
        text = decode_utf8(raw, self.path, line)
        if self.bom and pos == 0 and text.startswith("\ufeff"):
            text = text[1:]
        return text


def iter_csv(r: Range, stop: Optional[int] = None) -> Iterator[tuple[int, list[str], int, int]]:
    """(line number where the record starts, fields, byte offset after the record, line number
    where it ends) for each CSV record starting in [r.start, stop) (default stop = r.end; to the end
    of the file when the range is whole); blank records are skipped. A record that starts in the
    range is read to its end."""
    stop = (None if r.whole else r.end) if stop is None else stop
    lines = _CsvLines(r, bom=r.start == 0)
    reader = csv.reader(lines)
    while True:
        if stop is not None and lines.next_pos >= stop:
            return
        start_line = lines.next_line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{r.path}:{lines.next_line - 1}: malformed CSV ({e})") from None
        if row and any(c.strip() for c in row):
            yield start_line, row, lines.next_pos, lines.next_line - 1


def csv_range_end(r: Range) -> int:
    """Byte offset where the last record starting in the range ends (at least the range's end),
    assuming the range starts a record. A range without a quote character has one record per line.
    Malformed CSV stops the scan: parsing the range reports it with its line."""
    with open(r.path, "rb") as f:
        f.seek(r.start)
        quoted = b'"' in f.read(r.end - r.start)
    end = r.end
    if quoted:
        try:
            for _, _, after, _ in iter_csv(r):
                end = max(end, after)
        except DataError:
            pass
    return end


def resolve_csv_starts(ranges: list[Range], ends: list[int], rescan: Callable[[Range], int]) -> list[int]:
    """Where the first record of each range really starts: range k starts where range k-1's last
    record ends. `ends[k]` assumed range k starts a record; a range that does not is rescanned from
    its real start (`rescan(range)` -> the end of its last record)."""
    starts = [ranges[0].start]
    for k, r in enumerate(ranges[:-1]):
        s = starts[k]
        if s >= r.end:  # a record from an earlier range covers all of this one
            starts.append(s)
        elif s == r.start:
            starts.append(ends[k])
        else:
            starts.append(rescan(Range(r.path, s, r.end, r.line)))
    return starts


def advance(r: Range, start: int) -> Range:
    """The range from byte `start` (>= r.start, a record start) to r.end, with its first line number."""
    if start == r.start:
        return r
    skipped = newline_count(Range(r.path, r.start, start, r.line))
    return Range(r.path, start, max(start, r.end), r.line + skipped)


def plan_ranges(path: str | Path, start: int, line: int, block_bytes: int, run: Callable, csv_records: bool) -> list[Range]:
    """The numbered ranges of a file's body from byte `start` (line `line`); with `csv_records`
    every range starts at a record (an empty range owns none). `run(fn, items)` maps fn over items,
    in parallel where it can."""
    ranges = byte_ranges(path, start, block_bytes)
    ranges = number_ranges(ranges, line, run(newline_count, ranges))
    if csv_records and len(ranges) > 1 and not ranges[0].whole:
        starts = resolve_csv_starts(ranges, run(csv_range_end, ranges), csv_range_end)
        ranges = [advance(r, s) if s < r.end else Range(r.path, r.end, r.end, r.line) for r, s in zip(ranges, starts)]
    return ranges


def plain_lines(r: Range) -> Optional[list[tuple[int, str]]]:
    """(line number, UTF-8 text without its ending) of each line of a range with no quote
    character (then every line is one CSV record); None when the range has one."""
    if r.whole:
        return None
    with open(r.path, "rb") as f:
        f.seek(r.start)
        data = f.read(r.end - r.start)
    if b'"' in data or b"\r" in data.replace(b"\r\n", b""):
        return None
    if not data:
        return []
    out = []
    for k, raw in enumerate(data.split(b"\n")[: data.count(b"\n") + (0 if data.endswith(b"\n") else 1)]):
        n = r.line + k
        text = decode_utf8(raw, r.path, n)
        if r.start == 0 and k == 0 and text.startswith("\ufeff"):
            text = text[1:]
        out.append((n, text[:-1] if text.endswith("\r") else text))
    return out
