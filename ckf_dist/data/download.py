"""Fetch a MovieLens release from GroupLens and unpack it atomically.

``download("movielens-100k", Path("data"))`` -> ``data/ml-100k`` (ready for
``data.format=movielens-100k data.path=data/ml-100k``); the current releases
(``movielens-latest-small``, ``movielens-25m``, ``movielens-32m``) are read with
``data.format=movielens-latest``. The archive is streamed to a ``.part``
file with a progress bar, then extracted into a temporary folder beside the destination and
renamed into place, so an interrupted run never leaves a half-extracted data set that a later
run would mistake for a complete one. Tests exercise :func:`extract_archive` only (no network).
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from ckf_dist.data.errors import DataError

URLS = {
    "movielens-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "movielens-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "movielens-latest-small": "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
    "movielens-25m": "https://files.grouplens.org/datasets/movielens/ml-25m.zip",
    "movielens-32m": "https://files.grouplens.org/datasets/movielens/ml-32m.zip",
}
FORMAT_OF = {"movielens-100k": "movielens-100k", "movielens-1m": "movielens-1m", "movielens-latest-small": "movielens-latest",
             "movielens-25m": "movielens-latest", "movielens-32m": "movielens-latest"}
"""The data.format that reads each downloadable release."""


def extract_archive(zip_path: str | Path, dest: str | Path) -> Path:
    """Unpack `zip_path` under `dest` atomically; returns the extracted folder.

    An archive with one top-level folder (GroupLens zips) yields ``dest/<that folder>``; any
    other layout yields ``dest/<zip stem>``. An existing target is left untouched and returned.
    Members that would escape the folder (absolute paths, ``..``) are refused.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path}: not a readable zip archive ({e})") from None
    with zf:
        names = [n for n in zf.namelist() if n and not n.startswith("__MACOSX/")]
        for n in names:
            p = Path(n)
            if p.is_absolute() or ".." in p.parts:
                raise DataError(f"{zip_path}: unsafe member path {n!r}")
        tops = {Path(n).parts[0] for n in names}
        single = len(tops) == 1 and all(len(Path(n).parts) > 1 or n.endswith("/") for n in names)
        name = next(iter(tops)) if single else zip_path.stem
        target = dest / name
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest))
        try:
            for n in names:
                zf.extract(n, tmp)
            src = tmp / name if single else tmp
            if single:
                src.rename(target)
            else:
                tmp.rename(target)
                tmp = None  # moved: nothing left to clean
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def download(name: str, dest: str | Path) -> Path:
    """Download and extract GroupLens `name` (a key of URLS) under `dest`."""
    if name not in URLS:
        raise DataError(f"unknown dataset {name!r} (downloadable: {', '.join(URLS)})")
    from tqdm import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    url = URLS[name]
    folder = dest / Path(url).stem
    if folder.exists():
        return folder
    zip_path = dest / Path(url).name
    if not zip_path.is_file():
        part = zip_path.with_suffix(".zip.part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=zip_path.name) as bar:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: download failed ({e})") from None
        part.replace(zip_path)
    return extract_archive(zip_path, dest)
