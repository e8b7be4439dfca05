"""A real full disk (a small tmpfs, mounted by the test where it may: root on Linux) during
``train``, ``prepare``, ``codec train``, ``compare`` and ``quickstart``: one line naming the path
and the free space, no traceback, the last good state loadable, and the folder moved to a disk
with space resumes. A pipeline (compare, quickstart) prints its failed step's line, then its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from whispergpt import checkpoint as ckpt_io

pytestmark = [pytest.mark.faults, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


@pytest.fixture
def small_disk(tmp_path):
    """A mounted tmpfs of the requested size (KiB); skipped where the test may not mount one."""
    mounted = []

    def mount(kib: int) -> Path:
        d = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


def whispergpt(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whispergpt", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def assert_one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    for w in ("could not write", "free", *words):
        assert w in line, line
    return line


def train_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "tiny.yaml", f"data.dir={data}", f"out_dir={out}", "logging.wandb=false",
            "logging.progress=false", f"train.max_steps={steps}", "train.save_every=1", "train.eval_every=1000",
            "train.keep_last=1000", "train.batch_size=2"]  # fmt: skip


@pytest.mark.case("train", "full disk (tmpfs)")
def test_train_on_a_full_disk_stops_with_one_line_and_resumes_elsewhere(small_disk, tiny_dataset, tmp_path):
    disk = small_disk(6 * 1024)
    out = disk / "run"
    line = assert_one_line(whispergpt(*train_args(tiny_dataset, out, 60)), "checkpoint")
    last = ckpt_io.latest_checkpoint(out)
    assert last is not None, line  # it wrote some before the disk filled
    assert ckpt_io.verify_checkpoint(last) is None
    assert not any(p.name.startswith(".tmp-") for p in ckpt_io.checkpoints_dir(out).iterdir())
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = whispergpt(*train_args(tiny_dataset, moved, 60))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {moved}" in r.stdout + r.stderr or "resum" in r.stdout + r.stderr
    assert ckpt_io.read_trainer_state(ckpt_io.latest_checkpoint(moved))["step"] == 60
    assert (moved / "final" / "model.safetensors").is_file()


@pytest.mark.case("prepare", "full disk (tmpfs)")
def test_prepare_on_a_full_disk_stops_with_one_line_and_resumes_elsewhere(small_disk, tiny_dataset, tiny_codec_dir,
                                                                           tmp_path):  # fmt: skip
    wav = tiny_dataset.parent / "wav"
    disk = small_disk(200)  # the tiny set's shards take about 450 KiB
    out = disk / "prepared"
    args = ["--codec", str(tiny_codec_dir), "--bandwidth", "1.5", "--shard-seconds", "1", "--device", "cpu"]
    assert_one_line(whispergpt("prepare", str(wav), "--out", str(out), *args), "shard")
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = whispergpt("prepare", str(wav), "--out", str(moved), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = tmp_path / "fresh"
    assert whispergpt("prepare", str(wav), "--out", str(fresh), *args).returncode == 0
    from whispergpt.data import read_manifest

    a, b = read_manifest(moved), read_manifest(fresh)
    assert a["splits"] == b["splits"] and a["skipped"] == b["skipped"]


CODEC_TINY = ["model.num_filters=4", "model.hidden_size=16", "model.codebook_size=64",
              "model.target_bandwidths=[0.9, 1.8]", "quantizer.kmeans_batches=2", "quantizer.kmeans_iters=3",
              "data.segment_seconds=0.2", "data.batch_size=2", "train.progress=false", "train.ckpt_every=1",
              "train.keep_checkpoints=1000", "train.log_every=1"]  # fmt: skip


@pytest.mark.case("codec train", "full disk (tmpfs)")
def test_codec_train_on_a_full_disk_stops_with_one_line_and_resumes_elsewhere(
    small_disk, tiny_dataset, tmp_path
):
    wav = tiny_dataset.parent / "wav"
    disk = small_disk(4096)
    out = disk / "codec"
    args = ["codec", "train", str(wav), *CODEC_TINY]
    line = assert_one_line(whispergpt(*args, "train.max_steps=400", "--out", str(out)))
    assert "codec" in line, line
    from whispergpt.codec.checkpoint import CODEC_STATE

    last = ckpt_io.latest_checkpoint(out, CODEC_STATE)
    assert last is not None and ckpt_io.verify_checkpoint(last, CODEC_STATE) is None
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    done = int(json.loads((last / CODEC_STATE).read_text())["step"])
    r = whispergpt(*args, f"train.max_steps={done + 2}", "--out", str(moved))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(step {done})" in r.stdout


def assert_step_line(r: subprocess.CompletedProcess, step: str) -> None:
    """A pipeline's failure on a full disk: exit 2, the step's one write-error line, then the
    pipeline's line naming the step; no traceback anywhere."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert any("could not write" in x and "free there" in x for x in lines), r.stderr[-3000:]
    assert step in lines[-1] and "failed" in lines[-1], lines[-1]


@pytest.mark.case("compare", "full disk (tmpfs)")
def test_compare_on_a_full_disk_stops_with_one_line_and_resumes_elsewhere(small_disk, tiny_dataset, tmp_path):
    disk = small_disk(3 * 1024)
    out = disk / "cmp"
    argv = ["compare", "--speech", str(tiny_dataset), "--music", str(tiny_dataset), "--tokens", str(8 * 4 * 16),
            "--prompts", "1", "--prompt-seconds", "0.1", "--seconds", "0.1", "model.context=16",
            "train.batch_size=4", "train.eval_every=0", "train.save_every=1", "train.keep_last=1000"]  # fmt: skip
    assert_step_line(whispergpt(*argv, "--out", str(out)), "whispergpt train")
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = whispergpt(*argv, "--out", str(moved))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((moved / "compare.json").read_text())["rows"]
    assert len(rows) == 4 and all(r["speech"]["nll"] > 0 for r in rows)


@pytest.mark.case("quickstart", "full disk (tmpfs)")
def test_quickstart_on_a_full_disk_stops_with_one_line_and_resumes_elsewhere(small_disk, pipeline_corpus,
                                                                              tiny_codec_dir, tmp_path):  # fmt: skip
    disk = small_disk(8 * 1024)  # the run takes ~45 MB: it fills while training
    out = disk / "qs"
    argv = ["quickstart", "--quick", "--corpus", str(pipeline_corpus), "--codec", str(tiny_codec_dir),
            "--no-install", "--prompts", "1"]  # fmt: skip
    assert_step_line(whispergpt(*argv, "--out", str(out)), "step 'train-")
    done = sorted(p.name for p in (out / ".done").iterdir())
    assert done[:2] == ["prepare-music", "prepare-speech"], done
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = whispergpt(*argv, "--out", str(moved))
    assert r.returncode == 0, r.stderr[-3000:]
    for p in done:
        assert f"{p}: done already, skipping" in r.stdout
    assert (moved / "quickstart.json").is_file() and (moved / "score" / "music.md").is_file()


@pytest.mark.case(("train", "prepare", "codec train", "compare", "quickstart"), "read-only folder")
def test_a_read_only_output_folder_is_one_line(small_disk, tiny_dataset, tiny_codec_dir, pipeline_corpus):
    disk = small_disk(1024)
    (disk / "out").mkdir()
    if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only here")
    wav, out = tiny_dataset.parent / "wav", disk / "out"
    runs = {
        "train": train_args(tiny_dataset, out, 2),
        "prepare": [
            "prepare",
            str(wav),
            "--out",
            str(out),
            "--codec",
            str(tiny_codec_dir),
            "--bandwidth",
            "1.5",
        ],
        "codec train": ["codec", "train", str(wav), *CODEC_TINY, "train.max_steps=2", "--out", str(out)],
        "compare": [
            "compare",
            "--speech",
            str(tiny_dataset),
            "--music",
            str(tiny_dataset),
            "--out",
            str(out),
        ],
        "quickstart": [
            "quickstart",
            "--quick",
            "--corpus",
            str(pipeline_corpus),
            "--codec",
            str(tiny_codec_dir),
            "--no-install",
            "--out",
            str(out),
        ],
    }
    for name, argv in runs.items():
        r = whispergpt(*argv)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        line = r.stderr.strip().splitlines()[-1]
        assert "Read-only file system" in line and str(out) in line, (name, line)
