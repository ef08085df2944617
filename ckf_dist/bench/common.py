"""What every benchmark shares: the device's name and telemetry, the machine's load, the output files.

Owns: every ``torch.cuda`` query the benchmarks make (name, synchronize, peak memory), behind
:class:`DeviceProbe`, so one test can exercise the CUDA branch with those queries mocked at the
torch API boundary; the date stamp; writing a benchmark's rows as CSV and its result as JSON.
Must not know: what a benchmark measures.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ckf_dist.config import ConfigError
from ckf_dist.fsutil import atomic_write_text


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_avg() -> Optional[float]:
    """The 1-minute load average (None where the OS has none): shared machines skew timings."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def utc_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class DeviceProbe:
    """The timing and memory queries of one device kind ("cpu" or "cuda"); no-ops on CPU."""

    kind: str

    def __post_init__(self):
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.kind!r}")

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    def require(self, what: str) -> None:
        """A one-line ConfigError when ``what`` asks for CUDA and there is none."""
        if self.cuda and not torch.cuda.is_available():
            raise ConfigError(f"{what} --device cuda: no CUDA device is available")

    def name(self) -> str:
        return device_name(self.kind)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak_memory(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_memory_gib(self) -> Optional[float]:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def release_cached_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def write_rows(out_dir: Path, stem: str, rows: Sequence[dict], result: dict[str, Any],
               columns: Optional[Sequence[str]] = None) -> tuple[Path, Path]:
    """``<stem>.csv`` (the rows; ``columns`` or the first row's keys) and ``<stem>.json`` (the result)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    fields = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(json_path, json.dumps(result, indent=1, default=str))
    print(f"wrote {csv_path} and {json_path}")
    return csv_path, json_path


MASK_KEYS = ("attention_mask", "text_attention_mask")
"""The masks of a collated CKF batch: the CF prompt and, with the curriculum, its text twin."""


def batch_tokens(batch: dict[str, Any], keys: Sequence[str] = MASK_KEYS) -> tuple[int, int]:
    """(non-pad tokens, padded slots) over the masks of ``batch`` that are present (host tensors)."""
    masks = [batch[k] for k in keys if k in batch]
    return sum(int(m.sum()) for m in masks), sum(int(m.numel()) for m in masks)
