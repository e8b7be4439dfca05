"""Model code only (no I/O, no optimizer, no logging): blocks, codebook patterns, the decoder."""

from .whispergpt import WhisperGPT, WhisperGPTCache, WhisperGPTConfig, WhisperGPTOutput, nll_per_codebook

__all__ = ["WhisperGPT", "WhisperGPTCache", "WhisperGPTConfig", "WhisperGPTOutput", "nll_per_codebook"]
