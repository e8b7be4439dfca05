"""Codec training checkpoints (atomic, resumable) and the ``save_pretrained`` export."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from whispergpt import checkpoint as ckpt_io
from whispergpt.config_io import to_dict
from whispergpt.runtime import write_atomic, write_json_atomic, writing

if TYPE_CHECKING:
    from whispergpt.codec.trainable import TrainableCodec


def _state_to_safetensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_safetensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


CODEC_STATE = "state.json"  # step + resolved config; marks a complete codec checkpoint


def latest_checkpoint(out: Path) -> Path | None:
    return ckpt_io.latest_checkpoint(out, CODEC_STATE)


def save_checkpoint(out: Path, step: int, gen: TrainableCodec, disc, opt_g, opt_d, cfg, keep: int) -> Path:
    """Write a checkpoint into a temp dir, with ``files.json`` (sizes + sha256) last, then rename it
    into place (atomic on one filesystem). A failed write (a full disk) is one line; the previous
    checkpoints stay as they were."""
    ckpt_io.remove_temp_checkpoints(out)
    tmp = ckpt_io.temp_checkpoint_dir(out, step)
    with writing(
        tmp, f"the step-{step} codec checkpoint", ckpt_io.resume_hint(out, CODEC_STATE), cleanup=tmp
    ):
        tmp.mkdir(parents=True)
        _state_to_safetensors(gen, tmp / "generator.safetensors")
        if disc is not None:
            _state_to_safetensors(disc, tmp / "discriminator.safetensors")
        torch.save(
            {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict() if opt_d is not None else {}},
            tmp / "optimizer.pt",
        )
        write_json_atomic(tmp / CODEC_STATE, {"step": step, "config": to_dict(cfg)}, indent=1)
        ckpt_io.write_files_manifest(tmp)
    final = ckpt_io.publish_checkpoint(tmp, step)
    ckpt_io.prune_checkpoints(out, keep, CODEC_STATE)
    return final


def resume_checkpoint(out: Path, acc: Any) -> Path | None:
    """The newest codec checkpoint that verifies against its ``files.json``: the main process moves
    newer broken ones aside (with a warning naming each), then every rank reads the survivor."""
    if acc.is_main_process:
        ckpt_io.select_resume_checkpoint(out, CODEC_STATE)
    acc.wait_for_everyone()
    return latest_checkpoint(out)


def compact_safetensors(path: str | os.PathLike) -> None:
    """Store the quantiser's ``embed_avg`` (a training-only EMA statistic) in float16, in place.

    It is ~20% of a small codec's file; ``Codec``/``EncodecModel`` load it back into float32
    buffers and never read it, and ``rvq_for_encodec`` rebuilds it from ``embed * cluster_size``
    when fine-tuning, so codes and audio are unchanged.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {"format": "pt"}
    sd = load_file(str(path))
    sd = {k: v.half() if k.endswith("codebook.embed_avg") else v for k, v in sd.items()}
    write_atomic(path, save(sd, metadata=meta))


def export_codec(gen: TrainableCodec, out: Path) -> None:
    """Write ``OUT/config.json`` + ``OUT/model.safetensors`` (EncodecModel layout) atomically."""
    model = gen.export()
    tmp = out / f".tmp-export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(tmp, "the exported codec", "free disk space and rerun: it resumes from the last checkpoint",
                 cleanup=tmp):  # fmt: skip
        model.save_pretrained(str(tmp))
        compact_safetensors(tmp / "model.safetensors")
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
