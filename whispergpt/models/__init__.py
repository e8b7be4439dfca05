"""Model code only (no I/O, no optimizer, no logging): blocks, codebook patterns, the decoder."""

from .registry import WrongModelType, load_pretrained, model_type_of
from .whispergpt import WhisperGPT, WhisperGPTCache, WhisperGPTConfig, WhisperGPTOutput, nll_per_codebook

__all__ = [
    "WrongModelType",
    "load_pretrained",
    "model_type_of",
    "WhisperGPT",
    "WhisperGPTCache",
    "WhisperGPTConfig",
    "WhisperGPTOutput",
    "nll_per_codebook",
]
