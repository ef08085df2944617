"""Reading a file in byte ranges: cuts at line starts, exact line numbers, CSV records that cross
range boundaries read once by the range they start in, compressed files as one range."""

import csv
import gzip
import io

import pytest

from ckf_dist.data.errors import BadRecords, DataError
from ckf_dist.data.generic_csv import CsvSource
from ckf_dist.data.ranges import Range, byte_ranges, iter_csv, iter_lines, plan_ranges
from ckf_dist.data.source import serial_map


def _reference(path):
    """(line where each record starts, fields) by one csv.reader over the whole file."""
    out, start = [], 1
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            line, start = start, reader.line_num + 1
            if row and any(c.strip() for c in row):
                out.append((line, row))
    return out


def test_ranges_start_at_lines_and_number_them(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"".join(b"line %d\r\n" % k if k % 3 else b"line %d\n" % k for k in range(1, 301)))
    for block in (1, 7, 100, 10_000):
        ranges = plan_ranges(p, 0, 1, block, serial_map, False)
        assert ranges[0].start == 0 and ranges[-1].end == p.stat().st_size
        got = [(n, raw.rstrip(b"\r\n")) for r in ranges for n, raw, _ in iter_lines(r)]
        assert got == [(k, b"line %d" % k) for k in range(1, 301)]
        assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("block", [1, 5, 17, 64, 333, 4096])
def test_csv_records_across_boundaries_are_read_once(tmp_path, block):
    p = tmp_path / "f.csv"
    rows = ['a,"x\ny",1', 'b,"a long\n\n\nquoted, field\nwith ""quotes""\n",2', "c,plain,3", "", 'd,"\n",4',
            'e,"tail\n', 'still tail",5', "f,z,6"]
    p.write_text("h1,h2,h3\n" + "\n".join(rows) + "\n")
    want = _reference(p)[1:]
    ranges = plan_ranges(p, 9, 2, block, serial_map, True)
    got = [(n, f) for r in ranges for n, f, _, _ in iter_csv(r)]
    assert got == want


def test_csv_bad_record_line_in_a_later_range(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    lines = ["user_id,item_id,timestamp,rating,review"] + [f'u{k},i1,{k},"{5 if k != 40 else "x"}",ok' for k in range(60)]
    lines[10] = 'u9,i1,9,4,"two\nlines"'  # a review over two lines shifts every later line number
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "items.csv").write_text("item_id,title\ni1,One\n")
    src = CsvSource(folder, BadRecords("error"))
    tasks = src.plan(64)
    assert len(tasks) > 5
    with pytest.raises(DataError, match=r"interactions\.csv:43: rating 'x' is not a number"):
        for t in tasks:
            list(src.read(t, BadRecords("error")))


def test_gzip_is_one_range(tmp_path):
    p = tmp_path / "f.json.gz"
    with gzip.open(p, "wb") as g:
        g.write(b"".join(b"%d\n" % k for k in range(1000)))
    (r,) = byte_ranges(p, 0, 10)
    assert r.whole
    assert [raw for _, raw, _ in iter_lines(Range(str(p), 0, -1, 1))][-1] == b"999\n"
