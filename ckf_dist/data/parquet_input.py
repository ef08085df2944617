"""Parquet input (``data.format=parquet``) for large exports: the CSV format's columns, typed.

A folder holding::

    interactions.parquet   a file, or a folder of ``*.parquet`` files (read in name order), with the
                           columns of ``interactions.csv``: user_id, item_id, timestamp + rating
                           and/or label; optional review, summary, split
    items.parquet          item_id, title + optional description (or ``items.csv``)

Values may be typed (integer or timestamp ``timestamp``, float ``rating`` / ``label``) or text;
each record goes through the CSV format's record parser, so the rules and the bad-record reasons
are the same. A read task is one row group; a bad record is named by file, row group and row
(``interactions.parquet: row 17 (row group 3)``). Its input position is its row number in the
export (files in order), which breaks timestamp ties as file order does.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from ckf_dist.data.errors import BadRecords, DataError
from ckf_dist.data.generic_csv import ItemListSource, check_header, interaction_record, item_list, read_items
from ckf_dist.data.source import Mapper, ReadTask, RowBatcher, read_all, serial_map
from ckf_dist.data.table import RecData

FILE_BITS = 40
"""A row's input position is (file index << FILE_BITS) + its row number in the file."""


def _text(v: object) -> str:
    """A Parquet value as the text the CSV record parser reads ("" for null)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (pd.Timestamp, dt.datetime)):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return str(int(v.timestamp()))
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"{path}: no .parquet files in the folder")
        return files
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found")
    return [path]


def _items_table(folder: Path, bad: BadRecords) -> tuple[list[str], list[str], list[str], str]:
    pq_path, csv_path = folder / "items.parquet", folder / "items.csv"
    if pq_path.is_file():
        df = pd.read_parquet(pq_path)
        for c in ("item_id", "title"):
            if c not in df.columns:
                raise DataError(f"{pq_path}: missing column {c!r} (have {', '.join(map(str, df.columns))})")
        desc = df["description"].tolist() if "description" in df.columns else [""] * len(df)
        rows = ((f"{pq_path}: row {r}", _text(item), _text(title), _text(d))
                for r, (item, title, d) in enumerate(zip(df["item_id"].tolist(), df["title"].tolist(), desc)))
        ids, titles, descs = item_list(rows, bad)
        return ids, titles, descs, pq_path.name
    if csv_path.is_file():
        ids, titles, descs = read_items(csv_path, bad)
        return ids, titles, descs, csv_path.name
    raise DataError(f"{folder}: items file not found (items.parquet or items.csv)")


class ParquetSource(ItemListSource):
    has_split_column = True

    def __init__(self, folder: str | Path, bad: BadRecords, bounds: Optional[tuple[float, float]] = None):
        import pyarrow.parquet as pq

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder (data.path for data.format=parquet)")
        self.folder, self.bounds = folder, bounds
        self.files = [str(p) for p in parquet_files(folder / "interactions.parquet")]
        self.item_ids, self.titles, self.descs, self.item_file = _items_table(folder, bad)
        self.known_items = frozenset(self.item_ids)
        columns = None
        for f in self.files:
            names = pq.ParquetFile(f).schema_arrow.names
            if columns is not None and names != columns:
                raise DataError(f"{f}: columns {names} differ from {self.files[0]}'s {columns}")
            columns = names
        self.pos = check_header(Path(self.files[0]), list(columns))
        self.name = folder.name or "parquet"
        self.empty_message = f"{folder / 'interactions.parquet'}: no interactions left after skipping bad records"

    def plan(self, block_bytes: int, run: Mapper = serial_map) -> list[ReadTask]:
        import pyarrow.parquet as pq

        tasks = []
        for fi, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            first = 0
            for g in range(meta.num_row_groups):
                tasks.append(ReadTask(len(tasks), part=(fi, g, first)))
                first += meta.row_group(g).num_rows
        return tasks

    def size_hint(self, tasks: list[ReadTask]) -> int:
        import pyarrow.parquet as pq

        metas = {fi: pq.ParquetFile(f).metadata for fi, f in enumerate(self.files)}
        return sum(metas[fi].row_group(g).total_byte_size for fi, g, _ in (t.part for t in tasks))

    def where(self, order: int) -> str:
        return f"{self.files[order >> FILE_BITS]}: row {order & ((1 << FILE_BITS) - 1)}"

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        import pyarrow.parquet as pq

        fi, g, first = task.part
        path = self.files[fi]
        table = pq.ParquetFile(path).read_row_group(g, columns=list(self.pos))
        cols = {c: table.column(c).to_pylist() for c in self.pos}
        out = RowBatcher()
        for r in range(table.num_rows):
            get = {c: _text(v[r]) for c, v in cols.items()}
            interaction_record(f"{path}: row {first + r} (row group {g})", (fi << FILE_BITS) + first + r, get, self.known_items,
                               self.item_file, self.bounds, bad, out)
            if out.full():
                yield out.take()
        if len(out):
            yield out.take()


def load_parquet(folder: str | Path, on_bad_record: str = "error", bounds: Optional[tuple[float, float]] = None) -> RecData:
    bad = BadRecords(on_bad_record)
    return read_all(ParquetSource(folder, bad, bounds), on_bad_record, counts=bad.counts)
