"""The training record: what a model was trained on, written next to its weights.

Every checkpoint training writes (``checkpoints/step-*`` and ``final/``) holds
``training_data.json`` (``TRAINING_DATA_FILE``): the codec and bandwidth the data was prepared
with, K, V, M, sample rate and frame rate, the mel source (``data.mel_source`` as resolved: truth,
decoded, or decoded_coarse for a coarse model: the mel of codebook 0 alone), the data directories,
the step and, when the data stores the semantic stream, its tokenizer (``semantic_tokenizer``: the
folder, clusters, rate, MAE checkpoint). Sampling picks the same codec from it (and checks that
the stages of ``sample --semantic-lm`` share a tokenizer), evaluation reports the mel source;
neither needs the trainer.

Legacy runs wrote the record into ``final/`` only: for their step checkpoints the record of the
run's ``final/`` is used, else the codec is traced through the run's ``config.yaml`` ->
``data.dir`` -> ``manifest.json`` (``training_codec``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRAINING_DATA_FILE = "training_data.json"


def write_training_record(
    directory: str | os.PathLike,
    manifest: dict[str, Any],
    mel_source: str,
    data_dirs: Iterable[str | os.PathLike],
    steps: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/training_data.json`` atomically from the training data's ``manifest``;
    ``extra`` (the trainer's: task, command, val, parent) is merged in, and ``data`` summarises
    the datasets (files and hours per split, domains) for the model card."""
    from whispergpt.checkpoint import write_json_atomic

    path = Path(directory) / TRAINING_DATA_FILE
    data_dirs = [str(d) for d in data_dirs]  # read twice below
    record = dict(
        codec=manifest.get("codec"),
        bandwidth=manifest.get("bandwidth"),
        num_codebooks=manifest["num_codebooks"],
        codebook_size=manifest["codebook_size"],
        n_mels=manifest["n_mels"],
        sample_rate=manifest["sample_rate"],
        mel_source=mel_source,
        data_dirs=data_dirs,
        steps=int(steps),
    )
    if "frame_rate" in manifest:  # the grid the stages of `sample --semantic-lm` must share
        record["frame_rate"] = manifest["frame_rate"]
    tokenizer = semantic_tokenizer_of(manifest)
    if tokenizer is not None:
        record["semantic_tokenizer"] = tokenizer
    record["data"] = data_summary(data_dirs)
    record.update(extra or {})
    write_json_atomic(path, record)
    return path


def data_summary(data_dirs: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Files and hours per split over the prepared ``data_dirs``, and their domains (a manifest's
    ``domain``, else the dataset folder's name) with their train files; unreadable manifests are skipped."""
    out: dict[str, Any] = {
        "train": {"files": 0, "hours": 0.0},
        "val": {"files": 0, "hours": 0.0},
        "domains": {},
    }
    for d in data_dirs:
        try:
            manifest = json.loads((Path(d) / "manifest.json").read_text())
            splits = manifest["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for split in ("train", "val"):
            s = splits.get(split) or {}
            out[split]["files"] += int(s.get("files", 0))
            out[split]["hours"] += float(s.get("seconds", 0.0)) / 3600
        name = str(manifest.get("domain") or Path(d).name)
        out["domains"][name] = out["domains"].get(name, 0) + int((splits.get("train") or {}).get("files", 0))
    return out


def semantic_tokenizer_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The semantic tokenizer a dataset was prepared with (``prepare --semantic DIR``): its folder
    (``dir``) + what the manifest records of it (clusters, layer, rate, group, mae_checkpoint, ...);
    None without a semantic stream."""
    info = manifest.get("semantic_tokenizer")
    if not isinstance(info, dict) or not manifest.get("semantic"):
        return None
    return {"dir": str(manifest["semantic"]), **{k: v for k, v in info.items() if k != "dir"}}


def _run_dir(checkpoint: Path) -> Path:
    """The training ``out_dir`` a checkpoint lies in (``out/final`` or ``out/checkpoints/step-*``)."""
    from whispergpt.checkpoint import CHECKPOINTS

    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def read_training_record(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the checkpoint ``directory``, else (legacy runs) of its run's ``final/``;
    None when neither exists or parses."""
    checkpoint = Path(directory)
    for path in (checkpoint / TRAINING_DATA_FILE, _run_dir(checkpoint) / "final" / TRAINING_DATA_FILE):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``save_pretrained`` dir, a Hub model id (``org/name[@rev]``: its snapshot in the Hub cache,
    ``hub.resolve_model_dir``), or a training ``out_dir`` (-> its ``final``, else newest checkpoint).

    Directories with a ``files.json`` are verified (``checkpoint.verify_checkpoint``): an explicit
    model dir that fails is an ``InputError``; in a run dir, a ``final`` or checkpoint that fails is
    skipped, with a warning on stderr, in favour of the newest one that verifies.
    """
    from whispergpt.checkpoint import list_checkpoints, verify_checkpoint
    from whispergpt.errors import InputError
    from whispergpt.hub import is_hub_id, resolve_model_dir

    p = resolve_model_dir(path) if is_hub_id(path) else Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--checkpoint {p}: no such directory (nor a Hub id org/name)")
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        problem = verify_checkpoint(p, marker=None)
        if problem is not None:
            raise InputError(
                f"--checkpoint failed verification: {problem}", p, "copy it again or pick another checkpoint"
            )
        return p
    candidates = [p / "final"] if (p / "final" / "config.json").is_file() else []
    candidates += [c for _, c in reversed(list_checkpoints(p))]
    for c in candidates:
        problem = verify_checkpoint(c, marker=None)
        if problem is None:
            return c
        print(f"warning: skipping {c}: failed verification: {problem}", file=sys.stderr)
    if candidates:
        raise InputError(
            "--checkpoint: no final/ or checkpoint in this run passes verification",
            p,
            "copy the run again or pick another checkpoint",
        )
    raise ValueError(
        f"--checkpoint {p}: expected a model directory (config.json + model.safetensors) or a training "
        "out_dir with final/ or checkpoints/step-*"
    )


def open_stage(path: str | os.PathLike, cls: type, flag: str, hint: str) -> tuple[Path, Any]:
    """``(checkpoint dir, model)`` of a sampling stage given as ``flag PATH`` (a model dir or a run
    out_dir, ``resolve_checkpoint``): InputError (exit 2) naming both types unless the checkpoint
    holds ``cls.model_type``; ``hint`` says how to train the right one."""
    from whispergpt.errors import InputError
    from whispergpt.models.registry import model_type_of

    ckpt = resolve_checkpoint(path)
    kind = model_type_of(ckpt)
    if kind != cls.model_type:
        raise InputError(f"{flag} expects a {cls.model_type!r} model, this is a {kind!r} model", ckpt, hint)
    return ckpt, cls.from_pretrained(ckpt)


def training_codec(checkpoint: str | os.PathLike) -> tuple[str, float] | None:
    """``(codec, bandwidth)`` the checkpoint's training data was prepared with, or None.

    From the training record (``read_training_record``); for legacy runs without one, from the
    run's ``config.yaml`` -> ``data.dir`` (one directory or a list; all must agree) ->
    ``manifest.json``. None when any link is missing.
    """
    checkpoint = Path(checkpoint)
    record = read_training_record(checkpoint)
    if record is not None:
        try:
            return str(record["codec"]), float(record["bandwidth"])
        except (KeyError, TypeError, ValueError):
            pass
    return _codec_from_run_config(_run_dir(checkpoint))


def _codec_from_run_config(run: Path) -> tuple[str, float] | None:
    """Legacy: the codec of the manifests of the run config's ``data.dir``."""
    import yaml

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        dirs = (yaml.safe_load(cfg_path.read_text()) or {})["data"]["dir"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    found = set()
    for data_dir in dirs if isinstance(dirs, list) else [dirs]:
        data_dir = Path(str(data_dir))
        manifests = [d / "manifest.json" for d in (data_dir, run / data_dir, run.parent / data_dir)]
        m = next((m for m in manifests if m.is_file()), None)
        if m is None:
            return None
        try:
            manifest = json.loads(m.read_text())
            found.add((str(manifest["codec"]), float(manifest["bandwidth"])))
        except (ValueError, KeyError, TypeError):
            return None
    return found.pop() if len(found) == 1 else None
