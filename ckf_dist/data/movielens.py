"""MovieLens loaders (GroupLens 100K, 1M and the current "latest" releases) -> RecData.

100K and 1M are explicit ratings 1..5; the current releases (ml-latest-small, ml-25m, ml-32m:
``ratings.csv`` + ``movies.csv`` with headers, UTF-8, CSV quoting) rate 0.5..5.0 in half stars.
None has review text: ``rating`` is set, ``label`` is NaN, reviews and summaries are "". Titles
come from the item file, genres become the item description. A file that is entirely valid is
read vectorised; otherwise it is parsed record by record so a bad record is reported with its
line number (``u.data:17: expected 4 tab-separated fields, got 3``) or skipped and counted.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd

from ckf_dist.data.errors import BadRecords, DataError, parse_rating, parse_timestamp, require_file
from ckf_dist.data.generic_csv import check_quoting, csv_header, csv_rows
from ckf_dist.data.ranges import Range, iter_csv, iter_lines, plain_lines, plan_ranges
from ckf_dist.data.source import BATCH_ROWS, Mapper, ReadTask, RowBatcher, Source, read_all, serial_map
from ckf_dist.data.table import RecData, items_frame

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def _lines(path: Path):
    """(line number, text without its ending) for each non-blank line; latin-1 as GroupLens ships it."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.decode("latin-1").rstrip("\r\n")
            if line.strip():
                yield n, line


Bounds = Optional[tuple[float, float]]


def _fast_ratings(lines: list[str], sep: str, known_items: frozenset, bounds: Bounds) -> Optional[dict[str, list]]:
    """Vectorised read of ratings lines that are all valid; None at the first doubt.

    The record reader (:meth:`RatingsSource.read`) is the reference (exact line numbers, skip
    counts); this path only accepts input on which it would report nothing, so both give the same rows.
    """
    text = "\n".join(lines)
    if sep != "\t":
        if "\t" in text:
            return None
        text = text.replace(sep, "\t")
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, keep_default_na=False, quoting=csv.QUOTE_NONE,
                         engine="c", dtype={0: str, 1: str, 2: np.float64, 3: np.int64}, skip_blank_lines=False)
    except (ValueError, OverflowError, pd.errors.ParserError):  # a non-numeric field, a bad line, no data
        return None
    if df.shape != (len(lines), 4) or df.isna().any().any():
        return None
    user, item = df[0].str.strip(), df[1].str.strip()
    rating = df[2].to_numpy(dtype=np.float64)
    ok = ((user.str.len() > 0).all() and (item.str.len() > 0).all() and item.isin(known_items).all()
          and np.isfinite(rating).all() and (bounds is None or ((rating >= bounds[0]) & (rating <= bounds[1])).all()))
    if not ok:
        return None
    return {"user": user.tolist(), "item": item.tolist(), "timestamp": df[3].tolist(), "rating": rating.tolist()}


class _Items:
    """An item file read on the driver: ids, titles, genre descriptions."""

    def __init__(self, ids: list[str], titles: list[str], descs: list[str]):
        self.frame = items_frame(ids, titles, descs)
        self.known = frozenset(ids)

    def used(self, used: set[str]) -> pd.DataFrame:
        return self.frame[self.frame["item"].isin(used)].reset_index(drop=True)


class RatingsSource(Source):
    """A MovieLens ratings file of `sep`-separated `user item rating timestamp` lines (100K, 1M),
    or the current releases' ratings.csv (CSV with a header naming the columns)."""

    def __init__(self, name: str, path: Path, items: _Items, bounds: Bounds, sep: str = "\t", sep_name: str = "tab",
                 users: Optional[tuple[Path, str, list[str]]] = None, columns: Optional[list[str]] = None,
                 body_start: int = 0, body_line: int = 1, item_file: str = ""):
        self.name, self.path, self._items, self.bounds = name, path, items, bounds
        self.sep, self.sep_name, self._users = sep, sep_name, users
        self.columns = columns
        """The CSV header (current releases); None for the separated 100K / 1M lines."""
        self.header = None if columns is None else {**_header_check(path, columns, LATEST_RATINGS), "_n": len(columns)}
        self.body_start, self.body_line, self.item_file = body_start, body_line, item_file
        self.known_items = items.known
        self.empty_message = f"{path}: no ratings left after skipping bad records"

    def plan(self, block_bytes: int, run: Mapper = serial_map) -> list[ReadTask]:
        ranges = plan_ranges(self.path, self.body_start, self.body_line, block_bytes, run, self.header is not None)
        return [ReadTask(k, r) for k, r in enumerate(ranges)]

    def where(self, order: int) -> str:
        return f"{self.path}:{order}"

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        if self.header is not None:
            yield from self._read_csv(task.range, bad)
            return
        out = RowBatcher()
        chunk: list[tuple[int, str]] = []
        for n, raw, _ in iter_lines(task.range):
            line = raw.decode("latin-1").rstrip("\r\n")
            if line.strip():
                chunk.append((n, line))
            if len(chunk) >= BATCH_ROWS:
                yield from self._parse(chunk, bad, out)
                chunk = []
        yield from self._parse(chunk, bad, out)
        if len(out):
            yield out.take()

    def _parse(self, chunk: list[tuple[int, str]], bad: BadRecords, out: RowBatcher) -> Iterator[dict[str, list]]:
        if not chunk:
            return
        fast = _fast_ratings([line for _, line in chunk], self.sep, self.known_items, self.bounds)
        if fast is not None:
            for (n, _), user, item, ts, rating in zip(chunk, fast["user"], fast["item"], fast["timestamp"], fast["rating"]):
                out.add(user, item, int(ts), n, rating=float(rating))
        else:
            for n, line in chunk:
                rec = self._record(line.split(self.sep), f"{self.path}:{n}", bad)
                if rec is not None:
                    out.add(rec[0], rec[1], rec[3], n, rating=rec[2])
        if out.full():
            yield out.take()

    def _record(self, parts: list[str], where: str, bad: BadRecords) -> Optional[tuple[str, str, float, int]]:
        """(user, item, rating, timestamp) of one record, or None after reporting it to `bad`."""
        h = self.header
        if h is None:
            if len(parts) != 4:
                bad(where, "wrong_field_count", f"expected 4 {self.sep_name}-separated fields, got {len(parts)}")
                return None
            user, item, r_text, t_text = parts[0].strip(), parts[1].strip(), parts[2], parts[3]
            empty, unknown = "empty user or item id", "is not in the item file"
        else:
            if len(parts) != h["_n"]:
                bad(where, "wrong_field_count", f"expected {h['_n']} comma-separated fields, got {len(parts)}")
                return None
            user, item = parts[h["userId"]].strip(), parts[h["movieId"]].strip()
            r_text, t_text = parts[h["rating"]], parts[h["timestamp"]]
            empty, unknown = "empty userId or movieId", f"is not in {self.item_file}"
        if not user or not item:
            bad(where, "missing_id", empty)
            return None
        if item not in self.known_items:
            bad(where, "unknown_item", f"item {item!r} {unknown}")
            return None
        rating = parse_rating(r_text, where, bad, self.bounds)
        if rating is None:
            return None
        ts = parse_timestamp(t_text, where, bad)
        if ts is None:
            return None
        return user, item, rating, ts

    def _read_csv(self, r: Range, bad: BadRecords) -> Iterator[dict[str, list]]:
        out = RowBatcher()
        plain = plain_lines(r)
        if plain is None:
            for n, fields, _, end in iter_csv(r):
                check_quoting(self.path, self.columns, n, fields, end)
                rec = self._record(fields, f"{self.path}:{n}", bad)
                if rec is not None:
                    out.add(rec[0], rec[1], rec[3], n, rating=rec[2])
                if out.full():
                    yield out.take()
        else:  # one record per line: the vectorised reader may take a chunk (see _fast_ratings)
            lines = [(n, line) for n, line in plain if any(c.strip() for c in line.split(","))]
            standard = [c for c in sorted(self.header, key=self.header.get) if c != "_n"] == LATEST_RATINGS and self.header["_n"] == 4
            for k in range(0, len(lines), BATCH_ROWS):
                chunk = lines[k:k + BATCH_ROWS]
                fast = None
                if standard and not any("\t" in line for _, line in chunk):
                    fast = _fast_ratings([line for _, line in chunk], ",", self.known_items, self.bounds)
                if fast is not None:
                    for (n, _), user, item, ts, rating in zip(chunk, fast["user"], fast["item"], fast["timestamp"], fast["rating"]):
                        out.add(user, item, int(ts), n, rating=float(rating))
                else:
                    for n, line in chunk:
                        rec = self._record(line.split(","), f"{self.path}:{n}", bad)
                        if rec is not None:
                            out.add(rec[0], rec[1], rec[3], n, rating=rec[2])
                if out.full():
                    yield out.take()
        if len(out):
            yield out.take()

    def items(self, used: set[str], bad: BadRecords) -> pd.DataFrame:
        return self._items.used(used)

    def item_titles(self) -> Optional[dict[str, tuple[str, str]]]:
        f = self._items.frame
        return dict(zip(f["item"], zip(f["title"], f["description"])))

    def users(self, bad: BadRecords) -> Optional[pd.DataFrame]:
        return _read_users(*self._users, bad) if self._users else None


def _new_item(where: str, item: str, title: str, seen: set[str], bad: BadRecords) -> bool:
    """True for an item line with an id and a title, seen for the first time (then remembered);
    else the line is reported to `bad`."""
    if not item or not title:
        bad(where, "missing_title", "empty item id or title")
        return False
    if item in seen:
        bad(where, "duplicate_item", f"item {item!r} listed twice")
        return False
    seen.add(item)
    return True


def _read_items(path: Path, sep: str, n_fields: int, genres: Callable[[list[str]], list[str]], bad: BadRecords) -> _Items:
    """Item lines `id SEP title SEP ...` -> ids, titles, genre descriptions; `genres` reads the rest."""
    ids, titles, descs = [], [], []
    seen: set[str] = set()
    for n, line in _lines(path):
        where = f"{path}:{n}"
        parts = line.split(sep)
        if len(parts) != n_fields:
            bad(where, "wrong_field_count", f"expected {n_fields} {sep!r}-separated fields, got {len(parts)}")
            continue
        item, title = parts[0].strip(), parts[1].strip()
        if _new_item(where, item, title, seen, bad):
            ids.append(item)
            titles.append(title)
            descs.append(", ".join(genres(parts)))
    return _Items(ids, titles, descs)


def _read_users(path: Path, sep: str, columns: list[str], bad: BadRecords) -> Optional[pd.DataFrame]:
    """Optional user file: one line per user with exactly len(columns) fields."""
    if not path.is_file():
        return None
    rows = []
    for n, line in _lines(path):
        parts = line.split(sep)
        if len(parts) != len(columns):
            bad(f"{path}:{n}", "wrong_field_count", f"expected {len(columns)} {sep!r}-separated fields, got {len(parts)}")
            continue
        rows.append(parts)
    return pd.DataFrame(rows, columns=columns)


def movielens_100k_source(folder: str | Path, bad: BadRecords, bounds: Bounds = (1.0, 5.0)) -> RatingsSource:
    """MovieLens 100K: ``u.data`` (tab-separated), ``u.item`` ('|', latin-1), optional ``u.user``."""
    folder = Path(folder)
    data_path = require_file(folder / "u.data", "MovieLens-100K ratings file")
    item_path = require_file(folder / "u.item", "MovieLens-100K item file")

    def genres(parts: list[str]) -> list[str]:
        return [g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag.strip() == "1" and g != "unknown"]

    items = _read_items(item_path, "|", 5 + len(ML100K_GENRES), genres, bad)
    return RatingsSource("movielens-100k", data_path, items, bounds,
                         users=(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip"]))


def movielens_1m_source(folder: str | Path, bad: BadRecords, bounds: Bounds = (1.0, 5.0)) -> RatingsSource:
    """MovieLens 1M: ``ratings.dat``, ``movies.dat``, optional ``users.dat``; '::'-separated, latin-1."""
    folder = Path(folder)
    data_path = require_file(folder / "ratings.dat", "MovieLens-1M ratings file")
    item_path = require_file(folder / "movies.dat", "MovieLens-1M movies file")
    items = _read_items(item_path, "::", 3, lambda parts: [g for g in parts[2].split("|") if g], bad)
    return RatingsSource("movielens-1m", data_path, items, bounds, sep="::", sep_name="'::'",
                         users=(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip"]))


LATEST_RATINGS = ["userId", "movieId", "rating", "timestamp"]
LATEST_MOVIES = ["movieId", "title", "genres"]
LATEST_MOVIES_FILE = "movies.csv"


def _header_check(path: Path, header: list[str], need: list[str]) -> dict[str, int]:
    missing = [c for c in need if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column {missing[0]!r} (have {', '.join(header)})")
    return {c: header.index(c) for c in need}


def _latest_movies(path: Path, bad: BadRecords) -> _Items:
    ids, titles, descs, seen = [], [], [], set()
    for where, f in csv_rows(path, bad, tuple(LATEST_MOVIES)):
        item, title = f["movieId"].strip(), f["title"].strip()
        if _new_item(where, item, title, seen, bad):
            ids.append(item)
            titles.append(title)
            descs.append(", ".join(g for g in f["genres"].split("|") if g and g != "(no genres listed)"))
    return _Items(ids, titles, descs)


def movielens_latest_source(folder: str | Path, bad: BadRecords, bounds: Bounds = (0.5, 5.0)) -> RatingsSource:
    """A current GroupLens release (ml-latest-small, ml-25m, ml-32m): ``ratings.csv`` (userId,
    movieId, rating in half stars 0.5..5.0, timestamp) and ``movies.csv`` (movieId, title, genres
    separated by '|'); the other files of the release are not read."""
    folder = Path(folder)
    data_path = require_file(folder / "ratings.csv", "MovieLens ratings file")
    item_path = require_file(folder / LATEST_MOVIES_FILE, "MovieLens movies file")
    items = _latest_movies(item_path, bad)
    columns, body_start, body_line = csv_header(data_path)
    return RatingsSource(f"movielens-{folder.name}", data_path, items, bounds, columns=columns,
                         body_start=body_start, body_line=body_line, item_file=LATEST_MOVIES_FILE)


def _load(make: Callable[[BadRecords], RatingsSource], on_bad_record: str) -> RecData:
    bad = BadRecords(on_bad_record)
    source = make(bad)
    return read_all(source, on_bad_record, counts=bad.counts)


def load_movielens_100k(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (1.0, 5.0)) -> RecData:
    return _load(lambda bad: movielens_100k_source(folder, bad, bounds), on_bad_record)


def load_movielens_1m(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (1.0, 5.0)) -> RecData:
    return _load(lambda bad: movielens_1m_source(folder, bad, bounds), on_bad_record)


def load_movielens_latest(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (0.5, 5.0)) -> RecData:
    return _load(lambda bad: movielens_latest_source(folder, bad, bounds), on_bad_record)
