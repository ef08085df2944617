"""benchmarks/ctr_probe.py: the cross-validated R² of a ridge probe."""

import numpy as np


def test_probe_finds_a_linear_signal_and_nothing_in_noise(benchmark_script):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    w = rng.normal(size=16)
    probe = benchmark_script("ctr_probe")
    assert probe.probe_r2(x, x @ w + 0.01 * rng.normal(size=400), folds=5) > 0.99
    # a target independent of x: out-of-fold R² at or below 0, never a fitted-in-sample 1
    assert probe.probe_r2(x, rng.normal(size=400), folds=5) < 0.05
    # half the variance explained: R² near 0.5
    y = x @ w
    assert 0.35 < probe.probe_r2(x, y + rng.normal(size=400) * y.std(), folds=5) < 0.65
