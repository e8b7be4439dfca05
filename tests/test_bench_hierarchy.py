"""benchmarks/bench_hierarchy.py runs (quick mode) and reports the three-stage sampler's real-time
factor with each stage's share; no speed asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_hierarchy  # noqa: E402


def test_quick_hierarchy_benchmark_rows(tmp_path):
    (row,) = bench_hierarchy.run_hierarchy_benchmark("quick", "cpu", repeats=1)
    assert row["models"] == "tiny" and row["batch"] == 1 and row["seconds_audio"] == 1.0
    shares = [row[f"share_{s}"] for s in bench_hierarchy.STAGES]
    assert all(x > 0 for x in shares) and sum(shares) == pytest.approx(1.0)
    assert row["seconds"] == pytest.approx(sum(row[f"{s}_s"] for s in bench_hierarchy.STAGES))
    assert row["x_real_time"] == pytest.approx(row["batch"] * row["seconds_audio"] / row["seconds"])
    assert bench_hierarchy.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "h.json")]) == 0
    assert (tmp_path / "h.md").read_text().startswith("| models |")
