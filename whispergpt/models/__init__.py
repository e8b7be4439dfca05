"""Model code only (no I/O, no optimizer, no logging): blocks, codebook patterns, the decoder."""

from whispergpt.models.encodecmae import EnCodecMAE, EnCodecMAEConfig
from whispergpt.models.fine import FineConfig, FineModel, FineOutput
from whispergpt.models.loss import nll_per_codebook
from whispergpt.models.registry import WrongModelType, load_pretrained, model_type_of
from whispergpt.models.semantic_lm import SemanticLM, SemanticLMConfig
from whispergpt.models.whispergpt import WhisperGPT, WhisperGPTCache, WhisperGPTConfig, WhisperGPTOutput

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
