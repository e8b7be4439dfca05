"""Training checkpoints: atomic step directories, RNG state without pickle, retention, discovery.

Layout of one run directory (``out_dir``)::

    out_dir/config.yaml                      # resolved run config
    out_dir/metrics.jsonl                    # one JSON object per logged step / eval
    out_dir/checkpoints/step-0000100/        # complete checkpoints only (renamed into place)
        config.json, model.safetensors       # HF layout, loadable with WhisperGPT.from_pretrained
        optimizer.pt, scheduler.pt           # torch.save of state dicts (loaded weights_only=True)
        rng-<rank>.safetensors               # python / numpy / torch RNG states of each rank
        trainer_state.json                   # step, tokens seen, best val, wandb run id
        deepspeed/                           # DeepSpeed runs only: accelerate.save_state output
    out_dir/checkpoints/.tmp-step-0000200/   # a checkpoint being written (ignored, cleaned up)
    out_dir/final/                           # the final model, HF layout

A checkpoint directory is written under a temporary name and ``os.replace``d into place, so a
directory named ``step-NNNNNNN`` is always complete; a run killed mid-save leaves only a temp dir.

Everything we write ourselves loads without unpickling (safetensors, JSON, ``torch.load(...,
weights_only=True)``). The ``deepspeed/`` subdirectory is DeepSpeed's own format, torch pickles
that DeepSpeed loads with full unpickling: resume only from run directories you produced yourself.
The HF files (``config.json`` + ``model.safetensors``) next to it are always safe to share.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..runtime import write_json_atomic  # noqa: F401  (re-exported: the old home of this helper)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
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
