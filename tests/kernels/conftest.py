"""Kernel tests: make the interpreter enforce the NVIDIA backend's tl.dot shape rule.

The interpreter accepts ``tl.dot`` with M, N or K below 16; the NVIDIA backend rejects it at
compile time. Every kernel test runs with the interpreter's dot wrapped to fail on such shapes,
so a kernel that would not compile on a GPU fails here too.
"""

import pytest

try:
    from triton.runtime.interpreter import InterpreterBuilder
except Exception:  # triton missing or a layout we do not know: nothing to enforce
    InterpreterBuilder = None

DOTS_CHECKED = {"count": 0}


@pytest.fixture(autouse=True)
def nvidia_dot_shapes(monkeypatch):
    if InterpreterBuilder is None or not hasattr(InterpreterBuilder, "create_dot"):
        yield
        return
    original = InterpreterBuilder.create_dot

    def checked_dot(self, a, b, d, *args, **kwargs):
        m, k = a.data.shape[-2:]
        n = b.data.shape[-1]
        assert min(m, n, k) >= 16, f"tl.dot of [{m}, {k}] x [{k}, {n}]: the NVIDIA backend needs M, N, K >= 16"
        DOTS_CHECKED["count"] += 1
        return original(self, a, b, d, *args, **kwargs)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", checked_dot)
    yield
