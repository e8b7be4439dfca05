"""``train.init_from``: start a run from the weights of a trained model (fine-tuning).

Weights only: the optimizer, the LR schedule and the step counter start fresh (``resume_from``
continues a run; this starts a new one). The source is a model folder, a run ``out_dir`` (its
``final/``) or a Hub id, resolved like every ``--checkpoint`` (``training.record.resolve_checkpoint``).

- strict (``train.init_strict: true``, the default): the source must be the same model type with
  the same config (K, V, M, width, pattern, ...; the ``SHAPE_FREE`` keys such as dropout or
  context may differ); a mismatch is a ``ValueError`` naming both sides;
- partial (``init_strict: false``): the tensors whose name and shape match are loaded, the others
  (new, missing, or of another shape) keep their fresh init and are listed in the returned record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from whispergpt.errors import InputError

# config keys that change no tensor's shape or meaning: they may differ between source and run
SHAPE_FREE = frozenset({"dropout", "context", "rope_base", "semantic_lookahead", "mask_ratio", "span"})


def config_differences(source: dict[str, Any], run: dict[str, Any], label: str = "init_from",
                       free: frozenset[str] = SHAPE_FREE) -> list[str]:  # fmt: skip
    """``"key: SOURCE (label) vs RUN (this run)"`` for every key outside ``free`` that differs."""
    keys = sorted((set(source) | set(run)) - free)
    return [
        f"{k}: {source.get(k, '<absent>')!r} ({label}) vs {run.get(k, '<absent>')!r} (this run)"
        for k in keys
        if source.get(k) != run.get(k)
    ]


def check_resume_config(checkpoint: Path, model: torch.nn.Module) -> None:
    """A resumed checkpoint's ``config.json`` against this run's model, before any tensor is read:
    every differing key (all of them matter when a run continues) in one line, instead of a
    state_dict size-mismatch traceback."""
    saved = json.loads((checkpoint / "config.json").read_text())
    saved.pop("model_type", None)
    diffs = config_differences(saved, model.config.to_dict(), "checkpoint", frozenset())
    if diffs:
        raise InputError(
            "the checkpoint's model differs from the config: " + "; ".join(f"model.{d}" for d in diffs), checkpoint,
            "resume with the same model keys, or start over with train.resume_from=none or a new out_dir",
        )  # fmt: skip


def init_from_pretrained(
    model: torch.nn.Module, source: str | os.PathLike, strict: bool = True
) -> dict[str, Any]:
    """Load the weights of ``source`` into ``model`` (module docstring); returns the parent record
    for ``training_data.json``: ``{source, resolved, model_type, init, loaded, skipped}``."""
    from safetensors.torch import load_file

    from whispergpt.models.registry import model_type_of, strict_load
    from whispergpt.training.record import resolve_checkpoint

    directory = resolve_checkpoint(source)
    kind = model_type_of(directory)
    if kind != model.model_type:
        raise ValueError(
            f"train.init_from {source}: a {kind!r} model, this run trains a {model.model_type!r} model"
        )
    raw = json.loads((directory / "config.json").read_text())
    raw.pop("model_type", None)
    state = load_file(str(directory / "model.safetensors"))
    record: dict[str, Any] = dict(source=str(source), resolved=str(directory), model_type=kind)
    if strict:
        diffs = config_differences(raw, model.config.to_dict())
        if diffs:
            raise ValueError(
                f"train.init_from {source}: its config does not match this run's: "
                + "; ".join(diffs)
                + " (set train.init_strict=false to load only the tensors that match)"
            )
        strict_load(model, state, f"train.init_from {source}")
        return dict(record, init="full", loaded=len(state), skipped=[])
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = [f"{k} (not in {source})" for k in sorted(set(own) - set(state))]
    skipped += [f"{k} (not in this model)" for k in sorted(set(state) - set(own))]
    skipped += [
        f"{k} ({tuple(state[k].shape)} in {source} vs {tuple(own[k].shape)} here)"
        for k in sorted(set(own) & set(state))
        if k not in matching
    ]
    model.load_state_dict(matching, strict=False)
    return dict(record, init="partial", loaded=len(matching), skipped=skipped)


def prepare_weights(
    model: torch.nn.Module, tc: Any, zero_stage: int | None, precision: str, main: bool
) -> tuple[dict | None, dict | None]:
    """``train.init_from`` then ``train.lora`` on a freshly built ``model``: ``(parent, lora)``
    records for ``training_data.json`` (None when unset); the main process says what it did.
    ``zero_stage``: the DeepSpeed ZeRO stage, None without DeepSpeed."""
    parent = lora_info = None
    if tc.init_from is not None:  # weights only; a checkpoint of this run, if any, overrides them
        parent = init_from_pretrained(model, tc.init_from, tc.init_strict)
        if main:
            kept = f"; kept fresh: {', '.join(parent['skipped'])}" if parent["skipped"] else ""
            print(
                f"init_from {tc.init_from}: {parent['loaded']} tensors loaded ({parent['init']}){kept}",
                flush=True,
            )
    if tc.lora.r:
        # the merged export reads the live module: whole under ZeRO <= 2, and fp32 (not bf16 copies)
        if zero_stage is not None and (zero_stage > 2 or precision == "bf16"):
            raise ValueError(
                f"train.lora under DeepSpeed needs ZeRO stage <= 2 and fp32 (got stage {zero_stage}, {precision})"
            )
        from whispergpt.training.lora import apply_lora

        lora_info = apply_lora(model, tc.lora)
        if main:
            n, total = lora_info["trainable"], lora_info["total"]
            print(
                f"LoRA r={tc.lora.r}: {n:,} of {total:,} parameters train ({100 * n / total:.2f}%)",
                flush=True,
            )
    return parent, lora_info
