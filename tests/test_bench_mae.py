"""benchmarks/bench_mae.py: rows and the FLOP count (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_mae  # noqa: E402


def test_rows_and_flops(tmp_path, capsys):
    size = bench_mae.MAESize("t", 16, 1, 2, 1, num_codebooks=2, codebook_size=8, frames=10, batch=2, in_dim=4)
    model = bench_mae.build(size)
    # encoder over the 5 visible frames, decoder over 10, heads on all 10 (visible_weight > 0)
    enc = 4 * 16 + 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16
    dec = 16 * 16 + 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16
    want = 2 * 5 * (6 * enc + 12 * 16 * 5) + 2 * 10 * (6 * dec + 12 * 16 * 10) + 6 * (16 * 16) * 2 * 10
    assert bench_mae.step_flops(model, size) == want
    masked_only = bench_mae.build(size, masked_weight=1.0, visible_weight=0.0)
    assert bench_mae.step_flops(masked_only, size) == want - 6 * (16 * 16) * 2 * 5

    out = tmp_path / "mae.json"
    assert bench_mae.main(["--quick", "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["model"] for r in res["rows"]] == ["mae", "mae-masked-only"]
    for r in res["rows"]:
        assert r["tokens_per_s"] > 0 and r["mfu"] is None and len(r["step_s_all"]) == 1
    assert "| mae-masked-only |" in capsys.readouterr().out and out.with_suffix(".md").is_file()
