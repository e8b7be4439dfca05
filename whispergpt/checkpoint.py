"""Training checkpoints of every trainer (the LM trainer, the codec trainer): atomic step directories,
RNG state without pickle, retention, discovery.

Layout of one run directory (``out_dir``)::

    out_dir/config.yaml                      # resolved run config
    out_dir/metrics.jsonl                    # one JSON object per logged step / eval
    out_dir/checkpoints/step-0000100/        # complete checkpoints only (renamed into place)
        config.json, model.safetensors       # HF layout, loadable with WhisperGPT.from_pretrained
        optimizer.pt, scheduler.pt           # torch.save of state dicts (loaded weights_only=True)
        rng-<rank>.safetensors               # python / numpy / torch RNG states of each rank
        trainer_state.json                   # step, tokens seen, best val, wandb run id
        training_data.json                   # what the model was trained on (record.py)
        deepspeed/                           # DeepSpeed runs only: accelerate.save_state output
        files.json                           # byte size + sha256 of every other file (written last)
    out_dir/checkpoints/.tmp-step-0000200/   # a checkpoint being written (ignored, cleaned up)
    out_dir/checkpoints/.bad-step-0000300/   # failed verification on resume: moved aside, never deleted
    out_dir/final/                           # the final model, HF layout (+ files.json)

A checkpoint directory is written under a temporary name and ``os.replace``d into place, so a
directory named ``step-NNNNNNN`` is always complete; a run killed mid-save leaves only a temp dir.

Verification
------------
The rename protects against a kill, not against a disk error, a bad copy or an rsync cut short.
``files.json`` lists the byte size and sha256 of every file of the checkpoint; it is written
after all of them and before the rename. ``verify_checkpoint`` re-hashes everything: sha256 runs at
roughly 0.5-1 GB/s, so even a GPT-L checkpoint (weights + AdamW moments, a few GB) costs seconds,
negligible next to a resume, so there is no size-only shortcut for big files. A checkpoint without
``files.json`` (written before it existed) is accepted if its trainer state parses.
``select_resume_checkpoint`` moves a checkpoint that fails aside (``.bad-step-N``) and falls back to
the newest one that verifies.

Everything we write ourselves loads without unpickling (safetensors, JSON, ``torch.load(...,
weights_only=True)``). The ``deepspeed/`` subdirectory is DeepSpeed's own format, torch pickles
that DeepSpeed loads with full unpickling: resume only from run directories you produced yourself.
The HF files (``config.json`` + ``model.safetensors``) next to it are always safe to share.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from whispergpt.errors import InputError
from whispergpt.runtime import (  # write_json_atomic: also re-exported (its old home)
    move_aside,
    write_json_atomic,
)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
FILES_MANIFEST = "files.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoints_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(out_dir: str | os.PathLike, marker: str = TRAINER_STATE) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as ``(step, path)``; ``marker`` is the state
    file every complete checkpoint holds (the codec trainer's is ``state.json``)."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        # The rename makes a step-* directory complete; the state file is a second guard against
        # directories copied by hand.
        if m and p.is_dir() and (p / marker).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike, marker: str = TRAINER_STATE) -> Path | None:
    ckpts = list_checkpoints(out_dir, marker)
    return ckpts[-1][1] if ckpts else None


def resume_hint(out_dir: str | os.PathLike, marker: str = TRAINER_STATE) -> str:
    """What to do after a failed checkpoint write: the newest checkpoint is the last good state."""
    last = latest_checkpoint(out_dir, marker)
    if last is None:
        return "free disk space and rerun (no earlier checkpoint: it starts over)"
    return f"free disk space (or move {out_dir} to a disk with room) and rerun to resume from {last.name}"


def temp_checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """The (deterministic, so that every rank agrees on it) temp directory for ``step``."""
    return checkpoints_dir(out_dir) / f"{_TMP_PREFIX}{checkpoint_name(step)}"


def remove_temp_checkpoints(out_dir: str | os.PathLike) -> None:
    """Delete leftovers of saves that were interrupted (call on the main process only)."""
    root = checkpoints_dir(out_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> Path:
    """Rename the fully written directory ``tmp`` to ``final``, replacing an existing ``final``
    (moved aside first, then deleted: at every instant ``final`` is absent or complete)."""
    if final.exists():  # e.g. re-saving a step after a resume
        old = final.parent / f"{_TMP_PREFIX}old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def publish_checkpoint(tmp: Path, step: int) -> Path:
    """Atomically rename a fully written temp dir to its final ``step-NNNNNNN`` name."""
    return replace_dir(tmp, tmp.parent / checkpoint_name(step))


def prune_checkpoints(out_dir: str | os.PathLike, keep_last: int, marker: str = TRAINER_STATE) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted."""
    if keep_last <= 0:
        return []
    ckpts = list_checkpoints(out_dir, marker)
    doomed = [p for _, p in ckpts[:-keep_last]]
    for p in doomed:
        # Rename first so that a crash mid-delete never leaves a half-deleted step-* directory.
        tmp = p.parent / f"{_TMP_PREFIX}del-{p.name}"
        os.replace(p, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed


def read_trainer_state(ckpt: str | os.PathLike) -> dict:
    with open(Path(ckpt) / TRAINER_STATE) as f:
        return json.load(f)


# --- verification --------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _payload_files(directory: Path) -> list[str]:
    """Every file under ``directory`` but ``files.json``, as sorted POSIX relative paths."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != FILES_MANIFEST
    )


def write_files_manifest(directory: str | os.PathLike) -> Path:
    """Record size + sha256 of every file of ``directory`` in ``files.json`` (call last, before publishing)."""
    directory = Path(directory)
    files = {
        rel: dict(size=(directory / rel).stat().st_size, sha256=_sha256(directory / rel))
        for rel in _payload_files(directory)
    }
    return write_json_atomic(directory / FILES_MANIFEST, dict(format_version=1, files=files))


def verify_checkpoint(directory: str | os.PathLike, marker: str | None = TRAINER_STATE) -> str | None:
    """None when every file of the checkpoint ``directory`` matches its ``files.json``, else why not.

    A legacy checkpoint (no ``files.json``) passes when its ``marker`` JSON parses. Files added
    after the save (none are) would be ignored; a listed file that is missing, of another size or
    hash fails.
    """
    directory = Path(directory)
    listing = directory / FILES_MANIFEST
    if not listing.is_file():
        if marker is None:
            return None
        try:
            json.loads((directory / marker).read_text())
        except (OSError, ValueError) as e:
            return f"{marker} is unreadable ({e})"
        return None
    try:
        files = json.loads(listing.read_text())["files"]
        items = [(str(rel), int(f["size"]), str(f["sha256"])) for rel, f in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{FILES_MANIFEST} is unreadable ({e})"
    for rel, size, digest in items:
        path = directory / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} bytes, {size} were written"
        if _sha256(path) != digest:
            return f"{rel} does not match its sha256 (corrupted)"
    return None


def select_resume_checkpoint(out_dir: str | os.PathLike, marker: str = TRAINER_STATE) -> Path | None:
    """The newest checkpoint of ``out_dir`` that verifies; each newer one that fails is moved aside
    with a warning naming it, the checkpoint used instead and the steps lost. Main process only."""
    ckpts = list_checkpoints(out_dir, marker)
    bad: list[tuple[int, Path, str, Path]] = []
    chosen: tuple[int, Path] | None = None
    for step, path in reversed(ckpts):
        problem = verify_checkpoint(path, marker)
        if problem is None:
            chosen = (step, path)
            break
        bad.append((step, path, problem, move_aside(path)))
    for step, path, problem, moved in bad:
        if chosen is None:
            instead = f"no valid checkpoint left: starting from step 0 ({step} steps lost)"
        else:
            instead = f"resuming from {chosen[1].name} instead ({step - chosen[0]} steps lost)"
        print(
            f"warning: checkpoint {path} failed verification: {problem}; moved aside to {moved.name}; {instead}",
            file=sys.stderr,
            flush=True,
        )
    return None if chosen is None else chosen[1]


def resolve_resume_from(resume_from: str, marker: str = TRAINER_STATE) -> Path:
    """``train.resume_from=PATH``: a checkpoint directory, or a run directory (its newest checkpoint
    that verifies, nothing moved). An explicit choice that fails verification is an error."""
    p = Path(resume_from).expanduser()
    if not p.is_dir():
        raise InputError(
            "train.resume_from: no such checkpoint directory", p, "pass a checkpoints/step-N folder"
        )
    if not (p / marker).is_file():
        for _, candidate in reversed(list_checkpoints(p, marker)):
            if verify_checkpoint(candidate, marker) is None:
                return candidate
        raise InputError(
            f"train.resume_from: not a checkpoint (no {marker}) nor a run with a valid checkpoint",
            p,
            "pass a checkpoints/step-N folder",
        )
    problem = verify_checkpoint(p, marker)
    if problem is not None:
        raise InputError(
            f"train.resume_from: checkpoint failed verification: {problem}",
            p,
            "pick another checkpoint (train.resume_from=PATH) or omit the key to use the newest valid one",
        )
    return p


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- RNG state as tensors (safetensors, no pickle) ---------------------------------------------


def rng_state() -> dict[str, torch.Tensor]:
    """Python, numpy, torch (CPU and CUDA) RNG states as tensors."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    assert np_kind == "MT19937", np_kind
    out = {
        "python.internal": torch.tensor(py_internal, dtype=torch.int64),
        "python.meta": torch.tensor([py_version], dtype=torch.int64),
        "python.gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
        "numpy.keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy.meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy.gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "torch.cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch.cuda.{i}"] = s
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    gauss = float(state["python.gauss"][0])
    random.setstate(
        (
            int(state["python.meta"][0]),
            tuple(int(x) for x in state["python.internal"].tolist()),
            None if gauss != gauss else gauss,
        )
    )
    pos, has_gauss = (int(x) for x in state["numpy.meta"].tolist())
    np.random.set_state(
        (
            "MT19937",
            state["numpy.keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy.gauss"][0]),
        )
    )
    torch.set_rng_state(state["torch.cpu"])
    cuda = [state[k] for k in sorted(state, key=_cuda_index) if k.startswith("torch.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _cuda_index(key: str) -> int:
    return int(key.rsplit(".", 1)[1]) if key.startswith("torch.cuda.") else -1


def save_rng_state(ckpt: str | os.PathLike, rank: int) -> None:
    save_file(rng_state(), str(Path(ckpt) / f"rng-{rank}.safetensors"))


def load_rng_state(ckpt: str | os.PathLike, rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for ``rank``
    (e.g. resuming with more processes than the run that saved it)."""
    path = Path(ckpt) / f"rng-{rank}.safetensors"
    if not path.is_file():
        return False
    set_rng_state(load_file(str(path)))
    return True
