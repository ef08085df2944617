"""What every benchmark records beside its numbers: the device's name and the machine's load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

import torch


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
