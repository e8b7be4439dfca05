"""SIGKILL and SIGTERM at seeded random points of the real long-running commands (``train``,
``prepare``, ``codec train``, ``compare``, ``quickstart``); the rerun must give the uninterrupted
result: bit-identical weights at 1 thread, the same split and codes, the same reports. A killed
pipeline (quickstart, compare) must take its running step with it: an orphaned step would keep
writing, and hold its folder's lock against the rerun."""

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


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped by a container's init) holds no locks and writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pipeline(proc: subprocess.Popen, ready, sig: int, extra_s: float) -> None:
    """``kill_when`` for a pipeline: the signal goes to the pipeline process alone (as from
    ``kill PID``), while one of its steps runs; that step must end with it."""
    assert kill_when(proc, lambda: ready() and children(proc.pid), sig, extra_s), "it ended first"
    steps = children(proc.pid) or []
    t0 = time.time()
    while any(alive(c) for c in steps) and time.time() - t0 < 30:
        time.sleep(0.05)
    assert not [c for c in steps if alive(c)], "the killed pipeline left its running step behind"


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


CODEC_TINY = ["model.num_filters=4", "model.hidden_size=16", "model.codebook_size=64",
              "model.target_bandwidths=[0.9, 1.8]", "quantizer.kmeans_batches=2", "quantizer.kmeans_iters=3",
              "data.segment_seconds=0.2", "data.batch_size=2", "train.progress=false", "train.ckpt_every=3",
              "train.keep_checkpoints=1000", "train.log_every=1", "train.max_steps=24"]  # fmt: skip


@pytest.fixture(scope="module")
def codec_ref(tiny_dataset, tmp_path_factory) -> Path:
    """An uninterrupted ``codec train`` run (shared by both signals)."""
    ref = tmp_path_factory.mktemp("codec-ref") / "run"
    finish(["codec", "train", str(tiny_dataset.parent / "wav"), *CODEC_TINY, "--out", str(ref)])
    return ref


@pytest.mark.case("codec train", "SIGKILL/SIGTERM, rerun")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_codec_train_killed_at_a_random_point_reruns_to_the_same_codec(
    sig, tiny_dataset, codec_ref, tmp_path
):
    from whispergpt.codec.checkpoint import CODEC_STATE

    rng = random.Random(f"codec-{int(sig)}")
    wav = tiny_dataset.parent / "wav"
    ref, out = codec_ref, tmp_path / "killed"

    def saved() -> int:
        d = out / "checkpoints"
        return sum(1 for p in d.iterdir() if (p / CODEC_STATE).is_file()) if d.is_dir() else 0

    after, extra = rng.randint(1, 5), rng.uniform(0, 0.3)
    proc = start(["codec", "train", str(wav), *CODEC_TINY, "--out", str(out)])
    assert kill_when(proc, lambda: saved() >= after, sig, extra), "codec train ended first: raise max_steps"
    finish(["codec", "train", str(wav), *CODEC_TINY, "--out", str(out)])
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def compare_args(data: Path, out: Path) -> list[str]:
    # --launcher: every step is a child process, the case where a killed pipeline can orphan one
    return ["compare", "--speech", str(data), "--music", str(data), "--out", str(out), "--launcher",
            sys.executable, "--tokens", str(8 * 4 * 16), "--prompts", "1", "--prompt-seconds", "0.1",
            "--seconds", "0.1", "model.context=16", "train.batch_size=4", "train.eval_every=0",
            "train.save_every=2"]  # fmt: skip


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        str(p.parent.relative_to(folder)): load_file(p)
        for p in sorted(folder.rglob("final/model.safetensors"))
    }


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for run in wa:
        assert [k for k in wa[run] if not torch.equal(wa[run][k], wb[run][k])] == [], run


@pytest.mark.case("compare", "SIGKILL/SIGTERM, rerun")
def test_compare_killed_twice_reruns_to_the_same_table(tiny_dataset, tmp_path):
    """SIGTERM, rerun, SIGKILL, rerun: the table and every model equal an uninterrupted run's."""
    rng = random.Random("compare")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    finish(compare_args(tiny_dataset, ref))

    def finals() -> int:
        try:
            return sum(1 for _ in out.rglob("final/model.safetensors"))
        except FileNotFoundError:  # a checkpoint's temp folder renamed while the walk was in it
            return finals()

    first = rng.randint(0, 3)
    for sig, after in ((signal.SIGTERM, first), (signal.SIGKILL, rng.randint(first + 1, 5))):
        kill_pipeline(
            start(compare_args(tiny_dataset, out)), lambda n=after: finals() >= n, sig, rng.uniform(0.5, 2)
        )
    finish(compare_args(tiny_dataset, out))
    assert_same_weights(ref, out)
    rows = lambda run: json.loads((run / "compare.json").read_text())["rows"]  # noqa: E731
    assert rows(out) == rows(ref)
    assert (out / "compare.md").read_text() == (ref / "compare.md").read_text()


@pytest.mark.case("quickstart", "SIGKILL/SIGTERM, rerun")
def test_quickstart_killed_twice_reruns_to_the_same_result(pipeline_corpus, tiny_codec_dir, tmp_path):
    """SIGTERM, rerun, SIGKILL, rerun, each while a seeded random step runs: the models, the
    reports and the samples equal an uninterrupted run's."""
    import soundfile as sf

    rng = random.Random("quickstart")
    argv = ["quickstart", "--quick", "--corpus", str(pipeline_corpus), "--codec", str(tiny_codec_dir),
            "--no-install", "--prompts", "1"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "killed"
    finish([*argv, "--out", str(ref)])
    done = lambda: len(list((out / ".done").glob("*"))) if (out / ".done").is_dir() else 0  # noqa: E731
    first = rng.randint(1, 5)
    for sig, after in ((signal.SIGTERM, first), (signal.SIGKILL, rng.randint(first + 1, 10))):
        kill_pipeline(
            start([*argv, "--out", str(out)]), lambda n=after: done() >= n, sig, rng.uniform(0.5, 3)
        )
    finish([*argv, "--out", str(out)])
    assert_same_weights(ref / "train", out / "train")

    def metrics(report: Path) -> list[list[dict]]:
        return [
            [e["metrics"] for e in c["evaluations"]] for c in json.loads(report.read_text())["checkpoints"]
        ]

    for m in ("speech", "music"):
        assert metrics(out / "eval" / f"{m}.json") == metrics(ref / "eval" / f"{m}.json"), m
        assert np.array_equal(sf.read(out / "samples" / m / "sample_0.wav")[0],
                              sf.read(ref / "samples" / m / "sample_0.wav")[0])  # fmt: skip
        assert (out / "score" / f"{m}.md").read_text() == (ref / "score" / f"{m}.md").read_text()


ORPHAN = "import subprocess, sys\nfrom whispergpt.runtime import run_child\n" \
         "run = run_child if sys.argv[1] == 'run_child' else subprocess.run\nrun(['sleep', '600'])\n"  # fmt: skip


@pytest.mark.parametrize("runner", ["run_child", "subprocess.run"])
def test_a_killed_pipeline_takes_its_running_step_with_it(runner):
    """``runtime.run_child``'s step dies with its pipeline; ``subprocess.run``'s (the control,
    showing that the check can fail) is orphaned and keeps running."""
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, runner], cwd=REPO, env=ENV)
    t0 = time.time()
    while not children(proc.pid) and time.time() - t0 < 60:
        time.sleep(0.02)
    (step,) = children(proc.pid)
    try:
        proc.kill()
        proc.wait()
        t0 = time.time()
        while alive(step) and time.time() - t0 < 10:
            time.sleep(0.02)
        assert alive(step) == (runner == "subprocess.run")
    finally:
        if alive(step):
            os.kill(step, signal.SIGKILL)
