"""One writer per output folder: every long-running command takes ``runtime.folder_lock``.

A real second process holds the lock; each command run against the folder exits 2 with one line
naming the holder; a SIGKILLed holder's lock is free at once (the OS drops ``flock`` locks)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from whispergpt.errors import FolderInUse
from whispergpt.runtime import LOCK_NAME, folder_lock

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parents[2]
HOLD = "import sys, time; from whispergpt.runtime import folder_lock\n" \
       "with folder_lock(sys.argv[1], 'train'):\n    print('held', flush=True); time.sleep(600)\n"  # fmt: skip


@pytest.fixture
def held(tmp_path):
    """A folder whose lock a live child process holds: (folder, the child)."""
    folder = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    yield folder, child
    child.kill()
    child.wait()


def commands(folder: Path, data: Path, codec: Path, wav: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", "tiny.yaml", f"data.dir={data}", f"out_dir={folder}", "logging.wandb=false"],
        "prepare": ["prepare", str(wav), "--out", str(folder), "--codec", str(codec), "--bandwidth", "1.5"],
        "codec train": ["codec", "train", str(wav), "--out", str(folder)],
        "compare": ["compare", "--speech", str(data), "--music", str(data), "--out", str(folder)],
        "quickstart": ["quickstart", "--corpus", str(wav), "--out", str(folder)],
    }


@pytest.mark.case(("train", "prepare", "codec train", "compare", "quickstart"), "second writer")
@pytest.mark.slow
def test_a_second_writer_exits_2_naming_the_holder(held, tiny_dataset, tiny_codec_dir):
    folder, child = held
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, argv in commands(folder, tiny_dataset, tiny_codec_dir, tiny_dataset.parent / "wav").items():
        r = subprocess.run([sys.executable, "-m", "whispergpt", *argv], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr[-2000:])
        assert len(lines) == 1 and f"pid {child.pid} on " in lines[0], (name, r.stderr)
        assert str(folder) in lines[0] and "whispergpt train" in lines[0], lines[0]
    assert not (folder / "checkpoints").exists() and not (folder / "manifest.json").exists()


@pytest.mark.case("train (2 ranks, accelerate)", "second writer")
@pytest.mark.slow
def test_launched_ranks_all_stop_when_rank_0_finds_the_folder_held(held, tiny_dataset):
    """Rank 0 asks for the lock; the other rank waits for its answer and stops with it (no rank
    trains, nothing is written). The launcher then adds its own failure report after our lines."""
    import socket

    folder, child = held
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"), "--num_processes", "2",
           "--main_process_port", str(port), str(REPO / "train.py"), str(REPO / "configs" / "tiny.yaml"),
           f"data.dir={tiny_dataset}", f"out_dir={folder}", "logging.wandb=false", "train.max_steps=2"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode != 0
    ours = [x for x in r.stderr.splitlines() if x.startswith("whispergpt train: error:")]
    assert 1 <= len(ours) <= 2 and all(
        f"in use by whispergpt train (pid {child.pid} on " in x for x in ours
    ), r.stderr
    # Both ranks raise FolderInUse and exit 2; whichever exits first, the launcher SIGTERMs the
    # other, which may not have exited yet (either rank, seen both ways). Neither trained anything.
    codes = re.findall(r"rank\s+: (\d) \(local_rank: \d\)\n\s+exitcode\s+: (-?\d+)", r.stderr)
    assert any(c == "2" for _, c in codes) and all(c in ("2", "-15") for _, c in codes), r.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]


@pytest.mark.case(("train", "prepare", "codec train", "compare", "quickstart"), "killed lock holder")
def test_a_killed_holder_frees_the_folder_at_once(held):
    folder, child = held
    with pytest.raises(FolderInUse, match=f"pid {child.pid}"):
        with folder_lock(folder, "prepare"):
            pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    with folder_lock(folder, "prepare"):  # no wait, no stale lock to clean up
        assert (folder / LOCK_NAME).is_file()


def test_the_lock_is_held_within_one_process_too(tmp_path):
    """An in-process second caller (a notebook running two trainers) is refused as well."""
    with folder_lock(tmp_path, "train"):
        with pytest.raises(FolderInUse, match="whispergpt train"):
            with folder_lock(tmp_path, "train"):
                pass
    with folder_lock(tmp_path, "train"):  # released on exit
        pass


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with pytest.warns(RuntimeWarning, match="cannot lock"):
        with folder_lock(tmp_path, "train"):
            ran.append(True)
    assert ran == [True]
