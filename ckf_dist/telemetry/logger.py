"""Training telemetry: TensorBoard scalars (rank 0), a JSON-lines twin, and throughput / MFU meters.

Metric names follow one scheme everywhere: `train/<task>/loss`, `train/loss`, `train/lr`,
`train/grad_norm`, `eval/<task>/<metric>`, `perf/tokens_per_s`, `perf/samples_per_s`,
`perf/tokens_per_s_per_worker`, `perf/mfu`, `perf/mfu_6n`, `perf/data_wait_frac`,
`perf/step_s`, `mem/peak_gib`, `data/bad_shards`, `ckpt/save_s`.

TensorBoard sorts scalar groups (the part of a tag before its first `/`) alphabetically, so the
housekeeping groups (`ckpt`, `data`, `dist`, `mem`, `model`) used to come before `eval`, `perf`
and `train`. In TensorBoard they are filed under those three (:data:`TB_TAGS`, :func:`tb_tag`:
`ckpt/save_s` -> `perf/ckpt_save_s`, `data/bad_shards` -> `train/bad_shards`, ...); the
`metrics.jsonl` twin keeps the names above, which scripts and tests read.

Tokens are the non-pad tokens actually processed (attention-mask sum), not padded lengths.
MFU uses the LoRA-aware count (frozen base: forward 2N + backward-to-inputs 2N = 4N per token,
plus attention 12 * layers * seq * hidden for fwd+bwd), and logs the 6N convention beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Dense bf16 peak FLOP/s by device name fragment (datasheet values).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device_name: str) -> Optional[float]:
    for key, v in PEAK_FLOPS.items():
        if key in device_name:
            return v
    return None


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, lora_aware: bool = True) -> float:
    """Training FLOPs per token: 4N (frozen base, LoRA-aware) or 6N, plus causal attention."""
    attn = 12 * n_layers * hidden * seq_len / 2  # causal: half the score matrix, fwd + bwd
    return (4 if lora_aware else 6) * n_params + attn


TB_TAGS = {
    "ckpt/save_s": "perf/ckpt_save_s",
    "mem/peak_gib": "perf/mem_peak_gib",
    "data/bad_shards": "train/bad_shards",
    "dist/world_size": "train/world_size",
}
"""TensorBoard tag for a logged name whose group would sort before eval/perf/train."""
TB_GROUP_PREFIXES = {"model/": "train/model_", "ckpt/": "perf/ckpt_", "mem/": "perf/mem_", "data/": "train/data_", "dist/": "train/dist_"}
"""Fallback for other names of those groups: `model/trainable_params` -> `train/model_trainable_params`."""


def tb_tag(name: str) -> str:
    """The TensorBoard tag of a logged scalar (see the module docstring); other names pass unchanged."""
    if name in TB_TAGS:
        return TB_TAGS[name]
    for prefix, repl in TB_GROUP_PREFIXES.items():
        if name.startswith(prefix):
            return repl + name[len(prefix):].replace("/", "_")
    return name


class MetricsLogger:
    """Writes scalars to TensorBoard (rank 0 only, tags through :func:`tb_tag`) and to
    `metrics.jsonl` beside it (names as logged)."""

    def __init__(self, log_dir: str | Path, rank: int = 0, jsonl: str | Path | None = None):
        """`jsonl`: the JSON-lines file (default: metrics.jsonl in `log_dir`)."""
        self.rank = rank
        self.dir = Path(log_dir)
        self.writer = None
        self.jsonl = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.dir))
            self.jsonl = open(jsonl or self.dir / "metrics.jsonl", "a")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in scalars.items():
            if v is not None:
                self.writer.add_scalar(tb_tag(k), float(v), step)
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items() if v is not None}}) + "\n")
        self.jsonl.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()
            self.writer = None


@dataclass
class Throughput:
    """Accumulates tokens, samples and time split into data wait vs compute between reports."""

    tokens: int = 0
    samples: int = 0
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    steps: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    def add(self, tokens: int, samples: int, data_wait_s: float, compute_s: float) -> None:
        self.tokens += tokens
        self.samples += samples
        self.data_wait_s += data_wait_s
        self.compute_s += compute_s
        self.steps += 1

    def report(self, world_size: int = 1) -> dict[str, float]:
        """Rates over the window since the last report (totals across ranks if already reduced)."""
        wall = max(1e-9, time.perf_counter() - self._t0)
        out = {
            "perf/tokens_per_s": self.tokens / wall,
            "perf/samples_per_s": self.samples / wall,
            "perf/tokens_per_s_per_worker": self.tokens / wall / max(1, world_size),
            "perf/data_wait_frac": self.data_wait_s / max(1e-9, self.data_wait_s + self.compute_s),
            "perf/step_s": (self.data_wait_s + self.compute_s) / max(1, self.steps),
            "perf/tokens": float(self.tokens),
            "perf/samples": float(self.samples),
            "perf/window_s": wall,
        }
        self.tokens = self.samples = self.steps = 0
        self.data_wait_s = self.compute_s = 0.0
        self._t0 = time.perf_counter()
        return out
