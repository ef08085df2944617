"""Where the recipe's checkpoints go: what a launcher hands the recipe besides its engine.

- :class:`RunCheckpoints` (local and `deepspeed` launchers): ``run.dir/train/checkpoints/step-N``,
  the ``latest`` pointer and pruning to ``dist.keep_checkpoints`` on rank 0; a restarted process
  resumes from :meth:`ckf_dist.run.Run.latest_checkpoint`.
- :class:`ReportedCheckpoints` (Ray Train): each rank writes into its own temporary folder and
  hands it to a report callback (Ray uploads it to its storage, keeps ``num_to_keep``, and gives
  the latest back to a restarted worker group).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Protocol

from ckf_dist.fsutil import write_manifest
from ckf_dist.run import Run

ReportFn = Callable[[dict, Optional[Path]], None]
"""Ray's report: (metrics, checkpoint folder or None)."""


class CheckpointSink(Protocol):
    def folder(self, run: Run, step: int) -> Path:
        """Where the engine saves the checkpoint of `step`."""

    def seal(self, folder: Path, rank: int, world_size: int) -> None:
        """Write the sha256 manifest of what was saved, last (every rank calls it)."""

    def commit(self, run: Run, folder: Path, step: int, metrics: dict, rank: int) -> None:
        """The engine has saved into `folder` (on every rank)."""


class RunCheckpoints:
    """Checkpoints in the run directory, newest named by the `latest` pointer."""

    def __init__(self, keep: int):
        self.keep = keep

    def folder(self, run: Run, step: int) -> Path:
        return run.checkpoint(step)

    def seal(self, folder: Path, rank: int, world_size: int) -> None:
        """Every rank wrote into the one folder: after a barrier, rank 0 writes `manifest.json`."""
        import torch.distributed as dist

        if world_size > 1 and dist.is_initialized():
            dist.barrier()
        if rank == 0:
            write_manifest(folder)

    def commit(self, run: Run, folder: Path, step: int, metrics: dict, rank: int) -> None:
        if rank != 0:
            return
        run.mark_latest(folder)
        for old in run.checkpoints()[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temporaries(root: Path) -> None:
    """`ckf-step-N-pidP-*` folders under `root` whose process P is gone (the temp folder is local
    to the node, so is the process id)."""
    for p in root.glob("ckf-step-*-pid*-*"):
        m = re.match(r"ckf-step-\d+-pid(\d+)-", p.name)
        if m and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


class ReportedCheckpoints:
    """Checkpoints handed to a report callback (Ray Train), one temporary folder per rank."""

    def __init__(self, report: ReportFn):
        self.report = report

    def folder(self, run: Run, step: int) -> Path:
        """A fresh temporary folder named with this process id; those of dead processes (a worker
        killed between saving and Ray's upload) are removed first."""
        _remove_dead_temporaries(Path(tempfile.gettempdir()))
        return Path(tempfile.mkdtemp(prefix=f"ckf-{Run.checkpoint_name(step)}-pid{os.getpid()}-"))

    def seal(self, folder: Path, rank: int, world_size: int) -> None:
        """Each rank's own folder gets its own manifest (Ray merges the folders into one)."""
        write_manifest(folder, f"manifest-rank{rank}.json")

    def commit(self, run: Run, folder: Path, step: int, metrics: dict, rank: int) -> None:
        self.report({**metrics, "step": step}, folder)
