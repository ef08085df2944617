"""Per-batch task segments for the multi-LoRA op: rows grouped by task once, shared by all layers.

Owns: turning per-row task ids into a stable grouping (``order``), per-task segment starts and
lengths, and the kernel-private tile map (every tile of ``block_m`` rows belongs to exactly one
task, because each segment is padded to a multiple of ``block_m``).

Must not know: models, modules, DeepSpeed. Nothing here is cached across calls: build one
``TaskSegments`` per batch (``build_segments``) and pass it to every ``multi_lora_linear`` call of
that batch, forward and backward.

Everything is computed on the device of ``task_ids`` with plain torch ops; the only host sync is
the range check of the ids (one per batch). The tile map has a host-known upper bound on its
length, ``cdiv(N, block_m) + T + 1``, so no sync is needed to size the kernel grids; tiles past
the real count are empty (``tile_start == tile_end``) and their programs return at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# NOTE: one tile height for every multi-LoRA kernel. 64 rows keep the interpreter's program
# count low (tests) and are a reasonable M tile for the fused base GEMM on H100; the padding
# waste is at most T + 1 partial tiles per batch.
DEFAULT_BLOCK_M = 64


@dataclass
class TaskSegments:
    """Rows of a batch grouped by task adapter.

    Public fields (the interface the model codes against):
      task_ids: [N] int64, task adapter index of each row, -1 = no task adapter on that row.
      order:    [N] int64, stable permutation: order[starts[t] : starts[t] + lengths[t]] are the
                rows of task t in their original order; rows with -1 come last.
      starts:   [T] int64, first position in ``order`` of each task's rows.
      lengths:  [T] int64, number of rows of each task (0 allowed).
      num_tasks: T.

    Kernel-private fields (built once per batch, used by the Triton kernels):
      block_m:     tile height the tile map was built for.
      seg_starts:  [T + 1] int32, like ``starts`` plus the no-task segment (index T) at the end.
      seg_lengths: [T + 1] int32, like ``lengths`` plus the number of rows with no task.
      tile_seg:    [max_tiles] int32, segment (0..T) of each tile of ``order``; T = no task.
      tile_start:  [max_tiles] int32, first position in ``order`` covered by the tile.
      tile_end:    [max_tiles] int32, one past the last position (== tile_start for unused tiles).
    """

    task_ids: torch.Tensor
    order: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    num_tasks: int
    block_m: int
    seg_starts: torch.Tensor
    seg_lengths: torch.Tensor
    tile_seg: torch.Tensor
    tile_start: torch.Tensor
    tile_end: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.task_ids.numel()

    @property
    def max_tiles(self) -> int:
        return self.tile_seg.numel()


def build_segments(task_ids: torch.Tensor, num_tasks: int, block_m: int = DEFAULT_BLOCK_M, check: bool = True) -> TaskSegments:
    """Group rows by task. task_ids: [N] integer, values in [-1, num_tasks), on the activations' device.

    ``check``: verify the range of the ids (reads the device from the host; callers that checked
    the ids on the CPU pass False). Nothing else here waits for the device."""
    if task_ids.dim() != 1:
        raise ValueError(f"task_ids must be 1-D [N], got shape {tuple(task_ids.shape)}")
    if task_ids.dtype.is_floating_point or task_ids.dtype == torch.bool:
        raise TypeError(f"task_ids must be an integer tensor, got {task_ids.dtype}")
    if num_tasks < 0:
        raise ValueError(f"num_tasks must be >= 0, got {num_tasks}")
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
    task_ids = task_ids.long()
    n = task_ids.numel()
    if check and n and bool(((task_ids < -1) | (task_ids >= num_tasks)).any()):
        bad = task_ids[(task_ids < -1) | (task_ids >= num_tasks)][0].item()
        raise ValueError(f"task id {bad} out of range: expected -1 (no task) or 0..{num_tasks - 1}")
    dev = task_ids.device
    key = torch.where(task_ids < 0, torch.full_like(task_ids, num_tasks), task_ids)
    order = torch.argsort(key, stable=True)
    # index_add, not bincount: bincount sizes its output from the data (a host read on CUDA)
    counts = torch.zeros(num_tasks + 1, dtype=torch.long, device=dev).index_add_(0, key, torch.ones_like(key))  # [T + 1]
    seg_starts = torch.cumsum(counts, 0) - counts

    # Tile map: segment s covers ceil(counts[s] / block_m) tiles; tiles are numbered segment by
    # segment. Sized by a host-side upper bound so no device->host sync is needed.
    tiles = (counts + block_m - 1) // block_m
    cum = torch.cumsum(tiles, 0)
    max_tiles = (n + block_m - 1) // block_m + num_tasks + 1
    idx = torch.arange(max_tiles, device=dev)
    seg = torch.searchsorted(cum, idx, right=True)  # [max_tiles], num_tasks + 1 = past the end
    valid = seg <= num_tasks
    seg_c = seg.clamp(max=num_tasks)
    first_tile = cum[seg_c] - tiles[seg_c]
    start = seg_starts[seg_c] + (idx - first_tile) * block_m
    end = torch.minimum(start + block_m, seg_starts[seg_c] + counts[seg_c])
    start = torch.where(valid, start, torch.zeros_like(start))
    end = torch.where(valid, end, torch.zeros_like(end))

    return TaskSegments(
        task_ids=task_ids,
        order=order,
        starts=seg_starts[:num_tasks].clone(),
        lengths=counts[:num_tasks].clone(),
        num_tasks=num_tasks,
        block_m=block_m,
        seg_starts=seg_starts.to(torch.int32),
        seg_lengths=counts.to(torch.int32),
        tile_seg=seg_c.to(torch.int32),
        tile_start=start.to(torch.int32),
        tile_end=end.to(torch.int32),
    )
