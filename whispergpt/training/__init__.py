"""Training: the Trainer, its checkpoints, and the record of what a model was trained on.

Names are loaded on first use, so that sampling and eval (which read ``training.record``) do not
import the trainer, accelerate or wandb.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TRAINING_DATA_FILE": "record",
    "NonFiniteLossError": "trainer",
    "TrainCrops": "schedule",
    "Trainer": "trainer",
    "lr_at": "schedule",
    "sample_seed": "schedule",
    "train": "trainer",
    "val_indices": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
