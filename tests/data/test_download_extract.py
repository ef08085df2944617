"""download.extract_archive on zips built here (the download itself needs the network)."""

import zipfile

from pathlib import Path

import pytest

from ckf_dist.data.download import URLS, download, extract_archive
from ckf_dist.data.errors import DataError


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_extract_single_top_folder(tmp_path, ml100k_dir):
    members = {"ml-100k/u.data": (ml100k_dir / "u.data").read_text()[:2000],
               "ml-100k/u.item": (ml100k_dir / "u.item").read_bytes()[:500].decode("latin-1")}
    z = _zip(tmp_path / "ml-100k.zip", members)
    out = extract_archive(z, tmp_path / "data")
    assert out == tmp_path / "data" / "ml-100k"
    assert (out / "u.data").read_text() == members["ml-100k/u.data"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-100k"]  # no temp folder left
    (out / "marker").write_text("x")
    assert extract_archive(z, tmp_path / "data") == out and (out / "marker").exists()  # kept as is


def test_extract_flat_archive_uses_zip_stem(tmp_path):
    z = _zip(tmp_path / "flat.zip", {"a.txt": "a", "b/c.txt": "c"})
    out = extract_archive(z, tmp_path / "d")
    assert out == tmp_path / "d" / "flat" and (out / "b" / "c.txt").read_text() == "c"


def test_extract_refuses_unsafe_and_broken(tmp_path):
    z = _zip(tmp_path / "evil.zip", {"../evil.txt": "x"})
    with pytest.raises(DataError, match="unsafe member"):
        extract_archive(z, tmp_path / "d")
    (tmp_path / "junk.zip").write_text("not a zip")
    with pytest.raises(DataError, match="junk.zip"):
        extract_archive(tmp_path / "junk.zip", tmp_path / "d")


def test_download_known_names_and_existing_folder(tmp_path):
    assert set(URLS) == {"movielens-100k", "movielens-1m", "movielens-latest-small", "movielens-25m", "movielens-32m"}
    # each release unpacks to the folder its data.format reads
    assert {Path(u).stem for u in URLS.values()} == {"ml-100k", "ml-1m", "ml-latest-small", "ml-25m", "ml-32m"}
    with pytest.raises(DataError, match="unknown dataset"):
        download("netflix", tmp_path)
    (tmp_path / "ml-1m").mkdir()
    assert download("movielens-1m", tmp_path) == tmp_path / "ml-1m"  # present: no network touched
