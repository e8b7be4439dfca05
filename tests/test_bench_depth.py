"""benchmarks/bench_depth.py smoke: rows for every section, depth matched to delay on parameters."""

import json
import sys
from pathlib import Path

import pytest
import torch

from whispergpt.models import WhisperGPT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_depth  # noqa: E402


def test_equal_parameters_within_two_percent():
    for K in (2, 8):
        cfgs = bench_depth.model_configs(bench_depth.SIZES["cpu"], K, "concat")
        assert cfgs["delay"].pattern == "delay" and cfgs["depth"].pattern == "depth"
        assert (
            cfgs["depth"].d_model == cfgs["delay"].d_model
            and cfgs["depth"].n_layers == cfgs["delay"].n_layers
        )
        with torch.device("meta"):
            a, b = (WhisperGPT(cfgs[n]).num_parameters() for n in ("delay", "depth"))
        assert abs(a - b) <= 0.02 * a, (K, a, b)


@pytest.mark.slow  # like the run.py --quick smoke test: ~10 s of CPU
def test_quick_run_writes_every_section(tmp_path, capsys):
    out = tmp_path / "depth.json"
    argv = [
        "--quick",
        "--device",
        "cpu",
        "--repeats",
        "1",
        "--batches",
        "1",
        "--fusions",
        "none",
        "--out",
        str(out),
    ]
    assert bench_depth.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    got = {(r["section"], r["model"]) for r in rows}
    assert got == {
        ("sampling", "delay"), ("sampling", "depth"), ("train", "delay"), ("train", "depth"),
        ("depth-steps", "depth/kv-cache"), ("depth-steps", "depth/recompute"),
    }  # fmt: skip
    for r in rows:
        assert (r.get("frames_per_s") or r.get("tokens_per_s")) > 0 and r["speedup"] > 0
    assert "| sampling |" in capsys.readouterr().out
