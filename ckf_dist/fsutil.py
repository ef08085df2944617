"""Small file-system helpers shared by every stage."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` with a temporary path in the same folder, then rename it over `path`:
    readers see the old file or the new one, never a partial write (a crash leaves at most the
    temporary file). The one place the package writes a file atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    write(tmp)
    os.replace(tmp, p)
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`text` written to `path` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def temp_dir_beside(final: str | Path) -> Path:
    """A fresh, empty hidden folder next to `final` (same file system, so :func:`replace_dir` is a
    rename); a leftover of an earlier crash of this process id is cleared first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished folder `tmp` to `final`, replacing what was there: the old folder is
    renamed aside first and removed after, so `final` is never a half-written mix."""
    tmp, final = Path(tmp), Path(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def copy_dir(src: str | Path, final: str | Path, ignore: tuple[str, ...] = (), manifest: bool = False) -> Path:
    """Copy the folder `src` to `final` through a temporary sibling (:func:`replace_dir`), leaving out
    top-level entries named in `ignore`; `manifest`: write the copy's manifest (:func:`write_manifest`)
    before it takes `final`'s place. `final` is the whole copy or what it was before."""
    src = Path(src)
    tmp = temp_dir_beside(final)
    shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=lambda d, names: [n for n in names if Path(d) == src and n in ignore])
    if manifest:
        write_manifest(tmp)
    return replace_dir(tmp, final)


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on the file `path` (created if missing) for the block;
    waits while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Digest manifests: what a folder held when its writer finished


MANIFEST_PREFIX = "manifest"
"""A folder's digest manifests are `manifest.json` (one writer) or `manifest-<part>.json` (one per
writer of a shared folder, e.g. each rank of a Ray checkpoint)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_manifest(rel: str) -> bool:
    return "/" not in rel and rel.startswith(MANIFEST_PREFIX) and rel.endswith(".json")


def _files(folder: Path) -> list[str]:
    """Relative paths of the plain files under `folder` (hidden names left out: temporaries)."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out.append(rel)
    return sorted(out)


def write_manifest(folder: str | Path, name: str = "manifest.json") -> Path:
    """Write `folder/name`: the sha256 of every file under `folder` (other manifests excepted).
    Written last, atomically: a folder whose writer died before has no (or an incomplete) manifest."""
    folder = Path(folder)
    files = {rel: sha256_file(folder / rel) for rel in _files(folder) if not _is_manifest(rel)}
    return atomic_write_text(folder / name, json.dumps({"sha256": files}, indent=1, sort_keys=True))


def verify_manifest(folder: str | Path) -> Optional[str]:
    """None when every file under `folder` is listed in its manifest(s) with a matching sha256;
    else the first problem, in words (no manifest, a file missing, changed or unlisted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    listed: dict[str, str] = {}
    manifests = [rel for rel in _files(folder) if _is_manifest(rel)]
    if not manifests:
        return "no manifest.json (its writer did not finish)"
    for rel in manifests:
        try:
            listed.update(json.loads((folder / rel).read_text())["sha256"])
        except (ValueError, KeyError, TypeError):
            return f"{rel} is unreadable"
    for rel, digest in sorted(listed.items()):
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if sha256_file(p) != digest:
            return f"{rel} does not match its sha256 in the manifest (changed or truncated)"
    extra = [rel for rel in _files(folder) if not _is_manifest(rel) and rel not in listed]
    if extra:
        return f"{extra[0]} is not in the manifest"
    return None
