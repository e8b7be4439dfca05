"""SIGKILL and SIGTERM at seeded random points of real ``train`` and ``prepare`` processes; the
rerun must give the uninterrupted result (train: bit-identical final weights at 1 thread;
prepare: the same split and the same codes for every file)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.faults, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "whispergpt", *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def kill_when(proc: subprocess.Popen, ready, sig: int, extra_s: float, timeout: float = 300) -> bool:
    """Send ``sig`` once ``ready()`` holds, after ``extra_s`` more; False if the process ended first."""
    t0 = time.time()
    while not ready():
        if proc.poll() is not None or time.time() - t0 > timeout:
            return False
        time.sleep(0.02)
    time.sleep(extra_s)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return True


def finish(argv: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "whispergpt", *argv], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "tiny.yaml", f"data.dir={data}", f"out_dir={out}", "logging.wandb=false",
            "logging.progress=false", "train.max_steps=12", "train.save_every=2", "train.eval_every=4",
            "train.batch_size=2", "train.keep_last=10"]  # fmt: skip


def n_checkpoints(out: Path) -> int:
    d = out / "checkpoints"
    return sum(1 for p in d.iterdir() if p.name.startswith("step-")) if d.is_dir() else 0


@pytest.mark.case("train", "SIGKILL/SIGTERM, rerun")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_train_killed_at_a_random_point_reruns_to_the_same_weights(sig, tiny_dataset, tmp_path):
    rng = random.Random(f"train-{int(sig)}")
    ref = tmp_path / "ref"
    finish(train_args(tiny_dataset, ref))
    out = tmp_path / "killed"
    after, extra = rng.randint(1, 4), rng.uniform(0, 0.5)
    proc = start(train_args(tiny_dataset, out))
    killed = kill_when(proc, lambda: n_checkpoints(out) >= after, sig, extra)
    assert killed, "the run ended before the signal: raise max_steps"
    finish(train_args(tiny_dataset, out))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    def logged(run: Path) -> list[tuple[int, tuple[str, ...]]]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], tuple(sorted(r))) for r in rows]

    assert logged(out) == logged(ref)  # every record once, by the run that produced the weights


def shards_written(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def codes_by_file(out: Path) -> dict[str, np.ndarray]:
    m = json.loads((out / "manifest.json").read_text())
    found = {}
    for sh in m["shards"]:
        codes = np.load(out / "shards" / sh["name"] / "codes.npy")
        for e in json.loads((out / "shards" / sh["name"] / "index.json").read_text()):
            found[e["path"]] = (e["split"], codes[e["offset"] : e["offset"] + e["frames"]])
    return found


@pytest.mark.case("prepare", "SIGKILL/SIGTERM, rerun")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_prepare_killed_at_a_random_point_reruns_to_the_same_dataset(
    sig, tiny_dataset, tiny_codec_dir, tmp_path
):
    rng = random.Random(f"prepare-{int(sig)}")
    wav = tiny_dataset.parent / "wav"

    def args(out: Path) -> list[str]:
        return ["prepare", str(wav), "--out", str(out), "--codec", str(tiny_codec_dir), "--bandwidth", "1.5",
                "--device", "cpu", "--shard-seconds", "1", "--batch-seconds", "2", "--no-progress"]  # fmt: skip

    ref, out = tmp_path / "ref", tmp_path / "killed"
    finish(args(ref))
    after, extra = rng.randint(1, 3), rng.uniform(0, 0.2)
    proc = start(args(out))
    assert kill_when(proc, lambda: shards_written(out) >= after, sig, extra), "prepare ended first"
    finish(args(out))
    a, b = codes_by_file(ref), codes_by_file(out)
    assert a.keys() == b.keys()
    for path, (split, codes) in a.items():
        assert b[path][0] == split and np.array_equal(b[path][1], codes), path
