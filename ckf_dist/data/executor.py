"""Where the tasks of `ckf data prepare` run: this process, or Ray tasks on a cluster.

An executor maps a module-level function over a list of arguments and returns the results in
argument order. Both run the same functions on the same arguments, which is why the two engines
write the same bytes. Errors keep the local engine's order: when tasks fail, the failure of the
earliest argument is raised (a :class:`~ckf_dist.data.errors.DataError` stays one, with its
file:line), later tasks are cancelled and earlier ones are awaited.

The Ray executor runs at most `workers` tasks at once, one CPU each; large arguments shared by
every task go to the object store once (:meth:`RayExecutor.share`). Task results are small
(counts, paths): data moves through files under the run directory, which on several nodes must
be a filesystem every node mounts, as training already requires.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _call(fn: Callable, shared: Any, arg: Any) -> tuple[Any, float]:
    return fn(shared, arg), peak_rss_mb()


class LocalExecutor:
    """Every task in this process, in order."""

    workers = 1

    def __init__(self):
        self.worker_peak_mb = 0.0

    def share(self, value: Any) -> Any:
        return value

    def map(self, fn: Callable, shared: Any, args: Sequence) -> list:
        """[fn(shared, a) for a in args]."""
        out = [fn(shared, a) for a in args]
        self.worker_peak_mb = max(self.worker_peak_mb, peak_rss_mb())
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray tasks (one CPU each, at most `workers` in flight)."""

    def __init__(self, address: Optional[str], workers: int, env_vars: Optional[dict[str, str]] = None):
        import ray

        from ckf_dist.raycluster import init_ray

        self.started = init_ray(address, num_cpus=workers or (os.cpu_count() or 1), include_dashboard=False,
                                env_vars=env_vars)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers, cpus) if workers else cpus)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        self.worker_peak_mb = 0.0

    def share(self, value: Any) -> Any:
        """`value` in the object store (each task receives the stored copy)."""
        import ray

        return ray.put(value)

    def map(self, fn: Callable, shared: Any, args: Sequence) -> list:
        import ray

        results: dict[int, Any] = {}
        failed: Optional[tuple[int, BaseException]] = None
        pending: dict[Any, int] = {}
        nxt = 0
        while nxt < len(args) or pending:
            while nxt < len(args) and len(pending) < self.workers and (failed is None or nxt < failed[0]):
                pending[self._remote.remote(fn, shared, args[nxt])] = nxt
                nxt += 1
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                k = pending.pop(ref)
                try:
                    value, peak = ray.get(ref)
                    results[k] = value
                    self.worker_peak_mb = max(self.worker_peak_mb, peak)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    if failed is None or k < failed[0]:
                        failed = (k, cause)
                    for r, j in list(pending.items()):
                        if j > k:
                            ray.cancel(r, force=True)
                            pending.pop(r)
        if failed is not None:
            raise failed[1]
        return [results[k] for k in range(len(args))]

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
