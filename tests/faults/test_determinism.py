"""Bit-exact reruns at 2 threads: two separate processes, every tensor compared (weights, optimizer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from whispergpt import checkpoint as ckpt_io

pytestmark = [pytest.mark.faults, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def train(data: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "WANDB_MODE": "offline"}
    argv = [sys.executable, "train.py", "configs/tiny.yaml", f"data.dir={data}", f"out_dir={out}",
            "logging.wandb=false", "logging.progress=false", "train.max_steps=30", "train.save_every=30"]  # fmt: skip
    r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 threads" in r.stdout + r.stderr  # the start-of-run line states the condition


def test_two_2_thread_processes_are_bit_identical(tiny_dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny_dataset, a)
    train(tiny_dataset, b)
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    oa, ob = (torch.load(ckpt_io.latest_checkpoint(d) / "optimizer.pt", weights_only=True) for d in (a, b))
    for key, sa in oa["state"].items():
        for name, t in sa.items():
            assert torch.equal(t, ob["state"][key][name]), (key, name)
