"""Model code only (no I/O, no optimizer, no logging): blocks, codebook patterns, the decoder."""

from .encodecmae import EnCodecMAE, EnCodecMAEConfig
from .fine import FineConfig, FineModel, FineOutput
from .registry import WrongModelType, load_pretrained, model_type_of
from .semantic_lm import SemanticLM, SemanticLMConfig
from .whispergpt import WhisperGPT, WhisperGPTCache, WhisperGPTConfig, WhisperGPTOutput, nll_per_codebook

__all__ = [
    "EnCodecMAE",
    "EnCodecMAEConfig",
    "FineConfig",
    "FineModel",
    "FineOutput",
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
