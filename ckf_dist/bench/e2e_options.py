"""The typed options of ``ckf bench e2e``: ``bench.<key>=<value>`` beside the config overrides.

Owns: the option names, their types and checks, and splitting them from config overrides.
Must not know: how the benchmark uses them (unset options are None; the runners pick defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

from ckf_dist.config import ConfigError


@dataclass
class E2EOptions:
    """Bench-only options; None = the runner's default for the mode (quick or not, cpu or cuda)."""

    workers: Optional[list[int]] = None
    """Ray worker counts to measure (``[]`` skips Ray; a single int is a list of one). CPU."""
    repeats: Optional[int] = None
    """Interleaved repeats of every local measurement, the best kept. CPU."""
    data_batches: Optional[int] = None
    """Micro-batches timed for the data pipeline alone. CPU."""
    diagnose: Optional[bool] = None
    """Time the step on mixed / single-task / length-grouped batches without the DataLoader. CPU."""
    seq_len: Optional[int] = None
    """Sequence length of the synthetic batches (default 1024). CUDA."""
    micro_batch: Optional[int] = None
    """Micro batch (default 4; halved on out-of-memory). CUDA."""
    steps: Optional[int] = None
    """Timed steps (default 10, quick 4). CUDA."""
    warmup: Optional[int] = None
    """Untimed leading steps (default 3, quick 2). CUDA."""
    target_len: Optional[int] = None
    """Target tokens per row (the loss computes logits there only; default 16). CUDA."""

    def get(self, name: str, default):
        value = getattr(self, name)
        return default if value is None else value


BENCH_KEYS = frozenset(f.name for f in fields(E2EOptions))
_INTS = ("repeats", "data_batches", "seq_len", "micro_batch", "steps", "warmup", "target_len")


def split_bench_overrides(overrides: Sequence[str]) -> tuple[list[str], E2EOptions]:
    """Separate ``bench.<key>=value`` options (checked, typed) from config overrides."""
    import yaml

    config, raw = [], {}
    for text in overrides:
        if text.startswith("bench."):
            key, sep, value = text.partition("=")
            name = key[len("bench."):]
            if name not in BENCH_KEYS or not sep:
                raise ConfigError(f"command line: unknown bench option {key!r} (known: {', '.join(sorted('bench.' + k for k in BENCH_KEYS))})")
            raw[name] = yaml.safe_load(value)
        else:
            config.append(text)
    if "workers" in raw:
        w = raw["workers"]
        w = [w] if isinstance(w, int) else (w or [])
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in w):
            raise ConfigError(f"command line: bench.workers: expected a list of worker counts, got {raw['workers']!r}")
        raw["workers"] = list(w)
    if "diagnose" in raw and not isinstance(raw["diagnose"], bool):
        raise ConfigError(f"command line: bench.diagnose: expected true or false, got {raw['diagnose']!r}")
    for k in _INTS:
        if k in raw and not (isinstance(raw[k], int) and not isinstance(raw[k], bool) and raw[k] >= (0 if k == "warmup" else 1)):
            raise ConfigError(f"command line: bench.{k}: expected a positive integer, got {raw[k]!r}")
    return config, E2EOptions(**raw)
