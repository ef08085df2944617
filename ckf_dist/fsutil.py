"""Small file-system helpers shared by every stage."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path.tmp` in the same folder, then rename it over `path`: readers see the
    old file or the new one, never a partial write (a crash leaves at most the `.tmp`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)
    return p
