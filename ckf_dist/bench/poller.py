"""A background sampler: calls `sample` every `every` seconds in a daemon thread while in its `with`."""

from __future__ import annotations

import threading


class Poller:
    """Subclasses implement `sample` (return False to stop early) and may override `finish`, which runs
    once after the thread has stopped."""

    def __init__(self, every: float):
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample() is not False:
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.finish()
