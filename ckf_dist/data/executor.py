"""Where the tasks of `ckf data prepare` run: this process, or Ray Data tasks on a cluster.

An executor maps a module-level function over a list of arguments and returns the results in
argument order. Both run the same functions on the same arguments, which is why the two engines
write the same bytes. Errors keep the local engine's order: when tasks fail, the failure of the
earliest argument is raised (a :class:`~ckf_dist.data.errors.DataError` stays one, with its
file:line), later tasks are cancelled and earlier ones are awaited.

The Ray executor is a Ray Data map over the task arguments (one row and one block per task): at
most `workers` tasks at once, one CPU each, rows read back in argument order; large arguments
shared by every task go to the object store once (:meth:`RayExecutor.share`). Task results are small
(counts, paths): data moves through files under the run directory, which on several nodes must
be a filesystem every node mounts, as training already requires.
"""

from __future__ import annotations

import logging
import os
import pickle
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
    """Ray Data tasks (one CPU each, at most `workers` in flight)."""

    def __init__(self, address: Optional[str], workers: int, env_vars: Optional[dict[str, str]] = None):
        import ray

        from ckf_dist.raycluster import init_ray

        self.started = init_ray(address, num_cpus=workers or (os.cpu_count() or 1), include_dashboard=False,
                                env_vars=env_vars)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers, cpus) if workers else cpus)
        self.worker_peak_mb = 0.0

    def share(self, value: Any) -> Any:
        """`value` in the object store (each task receives the stored copy)."""
        import ray

        return ray.put(value)

    def map(self, fn: Callable, shared: Any, args: Sequence) -> list:
        """[fn(shared, a) for a in args] as a Ray Data map: one row (and one block) per argument, at most
        `workers` tasks at once, rows read back in argument order; the first failure in that order stops
        the dataset (later tasks are cancelled) and is raised."""
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        args = list(args)
        if not args:
            return []

        def run_one(row: dict) -> dict:
            k = int(row["k"])
            try:
                arg = pickle.loads(row["arg"])  # this row's own argument (the closure carries none)
                value, peak = _call(fn, ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared, arg)
                out = (value, peak, None)
            except Exception as e:  # re-raised on the driver, in argument order
                out = (None, peak_rss_mb(), e)
            # one opaque cell: Ray Data would otherwise turn lists and dicts into Arrow columns
            return {"k": k, "out": pickle.dumps(out)}

        ds = ray.data.from_items([{"k": k, "arg": pickle.dumps(a)} for k, a in enumerate(args)],
                                 override_num_blocks=len(args))
        results = []
        for row in ds.map(run_one, num_cpus=1, concurrency=min(self.workers, len(args)), max_retries=0).iter_rows():
            value, peak, error = pickle.loads(row["out"])  # written by this map's own tasks just above
            if error is not None:
                raise error
            self.worker_peak_mb = max(self.worker_peak_mb, peak)
            results.append(value)
        return results

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
