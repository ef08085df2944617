"""Small file-system helpers shared by every stage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


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
