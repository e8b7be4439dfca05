"""benchmarks/bench_mae_tools.py: the rows it reports (no timing assertions)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_mae_tools  # noqa: E402


def test_embed_and_kmeans_rows():
    (row,) = bench_mae_tools.run_embed_benchmark("quick", seconds=0.5, batch=1, repeats=1, inputs=("mel",))
    assert row["model"] == "EnCodecMAE D64 L2" and row["x_real_time"] > 0 and len(row["wall_s_all"]) == 1
    (row,) = bench_mae_tools.run_kmeans_benchmark(hours=0.005, dim=8, clusters=4, threads=(1,))
    assert row["threads"] == 1 and row["frames"] == 450 and row["fit_s"] > 0
