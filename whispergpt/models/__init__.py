"""Model code only (no I/O, no optimizer, no logging): blocks, codebook patterns, the decoder.

``load_pretrained`` opens any model's ``save_pretrained`` directory as its own class: the lookup
lives here, above the model modules, because ``registry`` is imported by each of them.
"""

from __future__ import annotations

import os

from torch import nn

from whispergpt.models.encodecmae import EnCodecMAE, EnCodecMAEConfig
from whispergpt.models.fine import FineConfig, FineModel, FineOutput
from whispergpt.models.loss import nll_per_codebook
from whispergpt.models.registry import HubModel, WrongModelType, model_type_of
from whispergpt.models.semantic_lm import SemanticLM, SemanticLMConfig
from whispergpt.models.whispergpt import WhisperGPT, WhisperGPTCache, WhisperGPTConfig, WhisperGPTOutput

__all__ = [
    "EnCodecMAE",
    "EnCodecMAEConfig",
    "FineConfig",
    "FineModel",
    "FineOutput",
    "HubModel",
    "WrongModelType",
    "load_pretrained",
    "model_type_of",
    "SemanticLM",
    "SemanticLMConfig",
    "WhisperGPT",
    "WhisperGPTCache",
    "WhisperGPTConfig",
    "WhisperGPTOutput",
    "nll_per_codebook",
]


def model_classes() -> dict[str, type[nn.Module]]:
    """``model_type -> class`` of every model the package defines."""
    kinds = (WhisperGPT, FineModel, EnCodecMAE, SemanticLM)
    classes: dict[str, type[nn.Module]] = {cls.model_type: cls for cls in kinds}
    return classes


def load_pretrained(
    directory: str | os.PathLike, device: str | None = None, revision: str | None = None
) -> nn.Module:
    """Open any model's ``save_pretrained`` directory (or Hub id) as its own class."""
    from whispergpt.hub import resolve_model_dir

    directory = resolve_model_dir(directory, revision)
    kind = model_type_of(directory)
    classes = model_classes()
    if kind not in classes:
        raise WrongModelType(f"{directory}: unknown model_type {kind!r}; known: {sorted(classes)}")
    return classes[kind].from_pretrained(directory, device=device)
