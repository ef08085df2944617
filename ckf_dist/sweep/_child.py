"""`python -m ckf_dist.sweep._child PARENT_PID ARGS...`: `ckf ARGS...` in a process that dies with
its parent (the Ray Tune trial actor), so an interrupted sweep leaves no orphaned training.

On Linux the kernel sends SIGTERM when the parent exits (prctl PR_SET_PDEATHSIG); set here, in
the fresh single-threaded process, rather than in a `preexec_fn` of a threaded Ray worker.
"""

from __future__ import annotations

import os
import signal
import sys


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent and os.getppid() != parent:  # the parent died before the prctl took effect
        sys.exit(143)


def main() -> int:
    parent = int(sys.argv[1])
    _die_with_parent(parent)
    from ckf_dist.cli import main as ckf_main

    return ckf_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
