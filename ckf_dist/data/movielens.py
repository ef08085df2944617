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
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ckf_dist.data.errors import BadRecords, DataError, parse_rating, parse_timestamp, require_file
from ckf_dist.data.generic_csv import csv_rows
from ckf_dist.data.table import RecData, interactions_frame, items_frame

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def _lines(path: Path):
    """(line number, text without newline) for each non-blank line; latin-1 as GroupLens ships it."""
    with open(path, encoding="latin-1", newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield n, line


Bounds = Optional[tuple[float, float]]


def _fast_ratings(path: Path, sep: str, known_items: set[str], bounds: Bounds) -> Optional[dict[str, list]]:
    """Vectorised read of a ratings file that is entirely valid; None at the first doubt.

    The line-by-line reader below is the reference (exact line numbers, skip counts); this path
    only accepts input on which it would report nothing, so both give the same RecData.
    """
    text = path.read_text(encoding="latin-1")
    if sep != "\t":
        if "\t" in text:
            return None
        text = text.replace(sep, "\t")
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, keep_default_na=False, quoting=csv.QUOTE_NONE,
                         engine="c", dtype={0: str, 1: str, 2: np.float64, 3: np.int64})
    except (ValueError, OverflowError, pd.errors.ParserError):  # a non-numeric field, a bad line, no data
        return None
    if df.shape[1] != 4 or df.isna().any().any():
        return None
    user, item = df[0].str.strip(), df[1].str.strip()
    rating = df[2].to_numpy(dtype=np.float64)
    ok = ((user.str.len() > 0).all() and (item.str.len() > 0).all() and item.isin(known_items).all()
          and np.isfinite(rating).all() and (bounds is None or ((rating >= bounds[0]) & (rating <= bounds[1])).all()))
    if not ok:
        return None
    return {"user": user.tolist(), "item": item.tolist(), "timestamp": df[3].tolist(), "rating": rating.tolist()}


def _read_ratings(path: Path, sep: str, sep_name: str, bad: BadRecords, known_items: set[str],
                  bounds: Bounds) -> dict[str, list]:
    """Ratings of known items; bad records reported with their line (see _fast_ratings for valid files)."""
    fast = _fast_ratings(path, sep, known_items, bounds)
    if fast is not None:
        return fast
    cols: dict[str, list] = {"user": [], "item": [], "timestamp": [], "rating": []}
    for n, line in _lines(path):
        where = f"{path}:{n}"
        parts = line.split(sep)
        if len(parts) != 4:
            bad(where, "wrong_field_count", f"expected 4 {sep_name}-separated fields, got {len(parts)}")
            continue
        user, item = parts[0].strip(), parts[1].strip()
        if not user or not item:
            bad(where, "missing_id", "empty user or item id")
            continue
        if item not in known_items:
            bad(where, "unknown_item", f"item {item!r} is not in the item file")
            continue
        rating = parse_rating(parts[2], where, bad, bounds)
        if rating is None:
            continue
        ts = parse_timestamp(parts[3], where, bad)
        if ts is None:
            continue
        cols["user"].append(user)
        cols["item"].append(item)
        cols["rating"].append(rating)
        cols["timestamp"].append(ts)
    return cols


def _finish(name: str, path: Path, cols: dict[str, list], items: pd.DataFrame,
            users: Optional[pd.DataFrame], bad: BadRecords) -> RecData:
    if not cols["user"]:
        raise DataError(f"{path}: no ratings left after skipping bad records")
    inter = interactions_frame(cols["user"], cols["item"], cols["timestamp"], rating=cols["rating"])
    used = set(inter["item"])
    items = items[items["item"].isin(used)].reset_index(drop=True)
    if users is not None:
        users = users[users["user"].isin(set(inter["user"]))].reset_index(drop=True)
    bad.log_summary(name)
    return RecData(name=name, interactions=inter, items=items, users=users, skipped=bad.as_dict())


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


def _read_items(path: Path, sep: str, n_fields: int, genres: Callable[[list[str]], list[str]], bad: BadRecords):
    """Item lines `id SEP title SEP ...` -> (ids, titles, genre descriptions); `genres` reads the rest."""
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
    return ids, titles, descs, seen


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


def load_movielens_100k(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (1.0, 5.0)) -> RecData:
    """MovieLens 100K: ``u.data`` (tab-separated), ``u.item`` ('|', latin-1), optional ``u.user``."""
    folder = Path(folder)
    bad = BadRecords(on_bad_record)
    data_path = require_file(folder / "u.data", "MovieLens-100K ratings file")
    item_path = require_file(folder / "u.item", "MovieLens-100K item file")

    def genres(parts: list[str]) -> list[str]:
        return [g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag.strip() == "1" and g != "unknown"]

    ids, titles, descs, seen = _read_items(item_path, "|", 5 + len(ML100K_GENRES), genres, bad)
    cols = _read_ratings(data_path, "\t", "tab", bad, seen, bounds)
    users = _read_users(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip"], bad)
    return _finish("movielens-100k", data_path, cols, items_frame(ids, titles, descs), users, bad)


def load_movielens_1m(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (1.0, 5.0)) -> RecData:
    """MovieLens 1M: ``ratings.dat``, ``movies.dat``, optional ``users.dat``; '::'-separated, latin-1."""
    folder = Path(folder)
    bad = BadRecords(on_bad_record)
    data_path = require_file(folder / "ratings.dat", "MovieLens-1M ratings file")
    item_path = require_file(folder / "movies.dat", "MovieLens-1M movies file")
    ids, titles, descs, seen = _read_items(item_path, "::", 3, lambda parts: [g for g in parts[2].split("|") if g], bad)
    cols = _read_ratings(data_path, "::", "'::'", bad, seen, bounds)
    users = _read_users(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip"], bad)
    return _finish("movielens-1m", data_path, cols, items_frame(ids, titles, descs), users, bad)


LATEST_RATINGS = ["userId", "movieId", "rating", "timestamp"]
LATEST_MOVIES = ["movieId", "title", "genres"]
LATEST_MOVIES_FILE = "movies.csv"


def _latest_movies(path: Path, bad: BadRecords) -> tuple[list[str], list[str], list[str]]:
    ids, titles, descs, seen = [], [], [], set()
    for where, f in csv_rows(path, bad, tuple(LATEST_MOVIES)):
        item, title = f["movieId"].strip(), f["title"].strip()
        if _new_item(where, item, title, seen, bad):
            ids.append(item)
            titles.append(title)
            descs.append(", ".join(g for g in f["genres"].split("|") if g and g != "(no genres listed)"))
    return ids, titles, descs


def _fast_latest_ratings(path: Path, known_items: set[str], bounds: Bounds) -> Optional[dict[str, list]]:
    """Vectorised read of a ratings.csv on which the record reader would report nothing; else None."""
    try:
        df = pd.read_csv(path, dtype={"userId": str, "movieId": str, "rating": np.float64, "timestamp": np.int64},
                         keep_default_na=False, engine="c", encoding="utf-8")
    except (ValueError, OverflowError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    if list(df.columns[:4]) != LATEST_RATINGS or df.shape[1] != 4 or df.isna().any().any():
        return None
    user, item = df["userId"].str.strip(), df["movieId"].str.strip()
    rating = df["rating"].to_numpy(dtype=np.float64)
    ok = ((user.str.len() > 0).all() and (item.str.len() > 0).all() and item.isin(known_items).all()
          and np.isfinite(rating).all() and (bounds is None or ((rating >= bounds[0]) & (rating <= bounds[1])).all()))
    if not ok:
        return None
    return {"user": user.tolist(), "item": item.tolist(), "timestamp": df["timestamp"].tolist(), "rating": rating.tolist()}


def _latest_ratings(path: Path, known_items: set[str], bounds: Bounds, bad: BadRecords) -> dict[str, list]:
    fast = _fast_latest_ratings(path, known_items, bounds)
    if fast is not None:
        return fast
    cols: dict[str, list] = {"user": [], "item": [], "timestamp": [], "rating": []}
    for where, f in csv_rows(path, bad, tuple(LATEST_RATINGS)):
        user, item = f["userId"].strip(), f["movieId"].strip()
        if not user or not item:
            bad(where, "missing_id", "empty userId or movieId")
            continue
        if item not in known_items:
            bad(where, "unknown_item", f"item {item!r} is not in {LATEST_MOVIES_FILE}")
            continue
        rating = parse_rating(f["rating"], where, bad, bounds)
        if rating is None:
            continue
        ts = parse_timestamp(f["timestamp"], where, bad)
        if ts is None:
            continue
        cols["user"].append(user)
        cols["item"].append(item)
        cols["rating"].append(rating)
        cols["timestamp"].append(ts)
    return cols


def load_movielens_latest(folder: str | Path, on_bad_record: str = "error", bounds: Bounds = (0.5, 5.0)) -> RecData:
    """A current GroupLens release (ml-latest-small, ml-25m, ml-32m): ``ratings.csv`` (userId,
    movieId, rating in half stars 0.5..5.0, timestamp) and ``movies.csv`` (movieId, title, genres
    separated by '|'); the other files of the release are not read."""
    folder = Path(folder)
    bad = BadRecords(on_bad_record)
    data_path = require_file(folder / "ratings.csv", "MovieLens ratings file")
    item_path = require_file(folder / LATEST_MOVIES_FILE, "MovieLens movies file")
    ids, titles, descs = _latest_movies(item_path, bad)
    cols = _latest_ratings(data_path, set(ids), bounds, bad)
    return _finish(f"movielens-{folder.name}", data_path, cols, items_frame(ids, titles, descs), None, bad)
