"""Smoke test of `ckf bench data`: two tiny sizes, both engines; it reports every field, the
engines prepare the same samples, and the slopes come from the rows. Nothing is timed against a
target here (the targets are benchmarks, recorded in BENCHMARKS.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ckf_dist.bench.data_scale import parse_options, slope, summarize
from ckf_dist.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_options_and_slopes():
    config, opts = parse_options(["bench.sizes=[10,40]", "bench.engines=ray", "seed=3"], quick=False)
    assert config == ["seed=3"] and opts.sizes == [10, 40] and opts.engines == ["ray"] and opts.workers == [1, 2]
    with pytest.raises(ConfigError, match="bench.engines"):
        parse_options(["bench.engines=[spark]"], quick=False)
    with pytest.raises(ConfigError, match="unknown bench option"):
        parse_options(["bench.size=3"], quick=False)
    assert slope([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert slope([1, 2, 4], [5, 5, 5]) == pytest.approx(0.0)
    rows = [{"engine": "ray", "workers": 2, "interactions": n, "seconds": t, "us_per_interaction": 1e6 * t / n,
             "driver_peak_mb": m, "max_process_mb": 2 * m} for n, t, m in ((1000, 2.0, 100.0), (4000, 8.4, 110.0))]
    (s,) = summarize(rows)
    assert s["time_slope"] == pytest.approx(1.035, abs=1e-3) and s["driver_rss_flat"] and s["time_per_interaction_flat"]
    assert s["driver_rss_change"] == pytest.approx(0.1) and s["under_3gb"]


@pytest.mark.slow
@pytest.mark.integration
def test_quick_bench_both_engines(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "ckf_dist.cli", "bench", "data", "--quick", "--out", str(out),
         "bench.sizes=[1500,3000]", "bench.workers=[2]", "bench.items=80"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads((out / "data_scale.json").read_text())
    rows = res["rows"]
    assert [(r["engine"], r["workers"]) for r in rows] == [("local", 1), ("ray", 2)] * 2
    for size in (1500, 3000):
        local, ray = [r for r in rows if r["size"] == size]
        assert local["samples"] == ray["samples"] > 0 and local["shard_mb"] == ray["shard_mb"]
        assert local["interactions"] == ray["interactions"] > size // 2
        for r in (local, ray):
            assert r["seconds"] > 0 and r["driver_peak_mb"] > 0 and r["worker_peak_mb"] > 0 and r["max_process_mb"] > 0
    assert {(s["engine"], s["workers"]) for s in res["summary"]} == {("local", 1), ("ray", 2)}
    assert all(s["time_slope"] is not None for s in res["summary"])
    assert not any(p.name.startswith("run-") for p in out.iterdir())  # run folders removed
    assert "| engine | workers |" in (out / "data_scale.md").read_text()
