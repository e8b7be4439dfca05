"""benchmarks/bench_fine.py runs (quick mode) and reports the fine stage's real-time factor; no speed asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_fine  # noqa: E402


def test_quick_fine_benchmark_rows():
    (row,) = bench_fine.run_fine_benchmark("quick", "cpu", repeats=1)
    assert (
        row["model"] == "fine_tiny" and row["stages"] == 1 and row["windows"] == 3
    )  # 150 frames, context 64
    assert row["x_real_time"] == pytest.approx(row["batch"] * row["seconds_audio"] / row["seconds"])
    assert len(row["times_s"]) == 1
