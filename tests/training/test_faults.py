"""Faults around checkpoints: a kill or a full disk during a save, a corrupted checkpoint file,
``train.resume_from``, a killed DDP worker. Faults are injected by the fixtures here
(monkeypatched writers, bytes flipped on disk); product code reads no fault switch."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from whispergpt import checkpoint as ckpt_io
from whispergpt.cli.train import main
from whispergpt.errors import InputError
from whispergpt.models import WhisperGPT
from whispergpt.training import trainer
from whispergpt.training.record import resolve_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


class Killed(BaseException):
    """Stands for SIGKILL inside a save: nothing in the product catches a BaseException."""


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip bytes in the middle: same size, other content
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 4]) + data[mid + 4 :])


# --- verification and selection, on hand-made checkpoints (fast) ---------------------------------


def fake_checkpoint(out: Path, step: int) -> Path:
    """A checkpoint with the files of a real one (small contents), files.json included."""
    tmp = ckpt_io.temp_checkpoint_dir(out, step)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text('{"d_model": 8}\n')
    save_file({"w": torch.full((16,), float(step))}, str(tmp / "model.safetensors"))
    torch.save({"state": {}, "step": step}, tmp / "optimizer.pt")
    torch.save({"last_epoch": step}, tmp / "scheduler.pt")
    ckpt_io.save_rng_state(tmp, 0)
    ckpt_io.write_json_atomic(tmp / "training_data.json", {"steps": step})
    ckpt_io.write_json_atomic(tmp / ckpt_io.TRAINER_STATE, {"step": step})
    ckpt_io.write_files_manifest(tmp)
    return ckpt_io.publish_checkpoint(tmp, step)


CKPT_FILES = [
    "config.json",
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng-0.safetensors",
    "training_data.json",
    ckpt_io.TRAINER_STATE,
    ckpt_io.FILES_MANIFEST,
]


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", CKPT_FILES)
def test_corrupt_newest_checkpoint_is_moved_aside_and_older_one_used(tmp_path, capsys, name, how):
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    assert ckpt_io.verify_checkpoint(newest) is None
    corrupt(newest / name, how)
    assert ckpt_io.verify_checkpoint(newest) is not None

    chosen = ckpt_io.select_resume_checkpoint(tmp_path)
    assert chosen is not None and chosen.name == "step-0000002"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("warning:")
    assert "step-0000004" in err and "step-0000002" in err and "2 steps lost" in err
    bad = ckpt_io.checkpoints_dir(tmp_path) / ".bad-step-0000004"
    assert bad.is_dir() and (bad / name).exists()  # moved aside, never deleted
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path)] == [2]
    ckpt_io.remove_temp_checkpoints(tmp_path)  # the clean-up of a resume leaves it alone
    assert bad.is_dir()


def test_missing_file_and_all_broken(tmp_path, capsys):
    a, b = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    (b / "scheduler.pt").unlink()
    assert "scheduler.pt is missing" in ckpt_io.verify_checkpoint(b)
    corrupt(a / "model.safetensors", "flip")
    assert ckpt_io.select_resume_checkpoint(tmp_path) is None
    err = capsys.readouterr().err
    assert "starting from step 0 (4 steps lost)" in err and "starting from step 0 (2 steps lost)" in err
    fake_checkpoint(tmp_path, 2)  # a later run saves step 2 again: the broken copy gets a new name
    corrupt(ckpt_io.checkpoints_dir(tmp_path) / "step-0000002" / "optimizer.pt", "truncate")
    ckpt_io.select_resume_checkpoint(tmp_path)
    names = sorted(p.name for p in ckpt_io.checkpoints_dir(tmp_path).iterdir())
    assert names == [".bad-step-0000002", ".bad-step-0000002-1", ".bad-step-0000004"]


def test_legacy_checkpoint_without_files_json_is_accepted(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 2)
    (ckpt / ckpt_io.FILES_MANIFEST).unlink()
    assert ckpt_io.verify_checkpoint(ckpt) is None
    (ckpt / ckpt_io.TRAINER_STATE).write_text("{not json")
    assert "unreadable" in ckpt_io.verify_checkpoint(ckpt)


def test_resume_from_path(tmp_path):
    older, newer = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert ckpt_io.resolve_resume_from(str(older)) == older
    assert ckpt_io.resolve_resume_from(str(tmp_path)) == newer  # a run dir: its newest valid one
    corrupt(newer / "model.safetensors", "flip")
    assert ckpt_io.resolve_resume_from(str(tmp_path)) == older
    with pytest.raises(InputError, match="failed verification: model.safetensors"):
        ckpt_io.resolve_resume_from(str(newer))  # an explicit choice is never swapped silently
    assert newer.is_dir()  # and nothing is moved: it may not be this run's
    with pytest.raises(InputError, match="no such checkpoint"):
        ckpt_io.resolve_resume_from(str(tmp_path / "nope"))


def test_resolve_checkpoint_skips_unverifiable(tmp_path, capsys):
    older, newer = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert resolve_checkpoint(tmp_path) == newer
    corrupt(newer / "model.safetensors", "truncate")
    assert resolve_checkpoint(tmp_path) == older
    assert "skipping" in capsys.readouterr().err
    with pytest.raises(InputError, match="model.safetensors has"):
        resolve_checkpoint(newer)  # an explicit model dir that fails: one clear line, not a Rust traceback


# --- faults during real runs (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tiny_dataset) -> Path:
    return tiny_dataset


def run_args(data_dir: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        str(TINY),
        f"data.dir={data_dir}",
        f"out_dir={out}",
        "logging.wandb=false",
        "logging.progress=false",
        f"train.max_steps={steps}",
        "train.save_every=2",
        "train.eval_every=2",
        "train.batch_size=2",
        "train.eval_batches=1",
        "train.keep_last=3",
        "model.context=32",
        *extra,
    ]


@pytest.fixture(scope="module")
def run_at_2(data_dir, tmp_path_factory) -> Path:
    """A run stopped after its step-2 checkpoint; tests copy it."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(run_args(data_dir, out, 2)) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# Every file write of a checkpoint save, in order; call i of these raises (the writer's own
# nesting: save_pretrained writes config.json, then calls save_file for model.safetensors).
SAVE_POINTS = [
    ("rng-0.safetensors", ckpt_io, "save_file"),
    ("config.json", WhisperGPT, "save_pretrained"),
    ("model.safetensors", safetensors.torch, "save_file"),
    ("optimizer.pt", torch, "save"),
    ("scheduler.pt", torch, "save"),
    ("training_data.json", trainer, "write_training_record"),
    ("trainer_state.json", trainer, "write_json_atomic"),
    ("files.json", ckpt_io, "write_files_manifest"),
    ("the rename", ckpt_io, "publish_checkpoint"),
]


def fail_at(monkeypatch, index: int, exc: BaseException) -> None:
    """Patch every writer of SAVE_POINTS; the ``index``-th call among them raises ``exc``."""
    calls = [0]
    for owner, attr in dict.fromkeys((o, a) for _, o, a in SAVE_POINTS):  # torch.save once
        real = getattr(owner, attr)

        def wrapped(*args, _real=real, **kwargs):
            calls[0] += 1
            if calls[0] == index + 1:
                raise exc
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, attr, wrapped)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SAVE_POINTS)), ids=[n for n, _, _ in SAVE_POINTS])
def test_kill_during_save_keeps_previous_checkpoint_and_resumes(
    data_dir, run_at_2, tmp_path, monkeypatch, capsys, index
):
    out = copy_run(run_at_2, tmp_path / "run")
    with monkeypatch.context() as m:
        fail_at(m, index, Killed())
        with pytest.raises(Killed):
            main(run_args(data_dir, out, 4))
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2]
    assert ckpt_io.verify_checkpoint(ckpt_io.latest_checkpoint(out)) is None
    capsys.readouterr()
    assert main(run_args(data_dir, out, 4)) == 0
    assert "(step 2)" in capsys.readouterr().out
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2, 4]
    assert not list(ckpt_io.checkpoints_dir(out).glob(".tmp-*"))
    assert ckpt_io.verify_checkpoint(out / "final", marker=None) is None


@pytest.mark.slow
def test_enospc_during_save_one_line_and_last_checkpoint_kept(
    data_dir, run_at_2, tmp_path, monkeypatch, capsys
):
    out = copy_run(run_at_2, tmp_path / "run")
    capsys.readouterr()
    with monkeypatch.context() as m:
        fail_at(m, 2, OSError(errno.ENOSPC, "No space left on device"))  # model.safetensors
        assert main(run_args(data_dir, out, 4)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert (
        "could not write the step-4 checkpoint (No space left on device; " in line
        and "MiB free there" in line
    )
    assert "step-0000002" in line and "free disk space" in line
    assert not list(ckpt_io.checkpoints_dir(out).glob(".tmp-*"))
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2]
    assert ckpt_io.verify_checkpoint(ckpt_io.latest_checkpoint(out)) is None
    assert main(run_args(data_dir, out, 4)) == 0


@pytest.mark.slow
def test_corrupt_newest_checkpoint_resumes_from_older_one(data_dir, run_at_2, tmp_path, capsys):
    out = copy_run(run_at_2, tmp_path / "run")
    assert main(run_args(data_dir, out, 4)) == 0
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2, 4]
    corrupt(ckpt_io.checkpoints_dir(out) / "step-0000004" / "model.safetensors", "flip")
    capsys.readouterr()
    assert main(run_args(data_dir, out, 6)) == 0
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if line.startswith("warning: checkpoint"))
    assert "step-0000004" in warning and "step-0000002" in warning and "2 steps lost" in warning
    assert "(step 2)" in captured.out
    assert (ckpt_io.checkpoints_dir(out) / ".bad-step-0000004").is_dir()
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2, 4, 6]
    assert all(ckpt_io.verify_checkpoint(p) is None for _, p in ckpt_io.list_checkpoints(out))


@pytest.mark.slow
def test_resume_from_none_and_path(data_dir, run_at_2, tmp_path, capsys):
    out = copy_run(run_at_2, tmp_path / "run")
    assert main(run_args(data_dir, out, 4, "train.resume_from=none")) == 2
    assert "train.resume_from=none but out_dir already holds checkpoints" in capsys.readouterr().err
    # a fresh out_dir starting from another run's checkpoint
    fresh = tmp_path / "fresh"
    step2 = ckpt_io.latest_checkpoint(run_at_2)
    assert main(run_args(data_dir, fresh, 4, f"train.resume_from={step2}")) == 0
    assert f"resuming from {step2} (step 2)" in capsys.readouterr().out
    assert [s for s, _ in ckpt_io.list_checkpoints(fresh)] == [4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_killed_ddp_worker_ends_the_job(data_dir, tmp_path):
    # rank 1 dies (SIGKILL) in step 3; the launcher must tear rank 0 down rather than leave it
    # waiting in a collective. The timeout only catches a hang (it ends in seconds).
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"),
        "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(Path(__file__).with_name("kill_fault.py")), "1", "3",
        *run_args(data_dir, out, 6),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-2000:]
    assert [s for s, _ in ckpt_io.list_checkpoints(out)] == [2]  # the last good state
    assert ckpt_io.verify_checkpoint(ckpt_io.latest_checkpoint(out)) is None
    assert not (out / "final").exists()
