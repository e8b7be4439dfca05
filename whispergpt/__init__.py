"""whispergpt: a hybrid log-mel + EnCodec-token audio language model (Whisper-GPT style)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported lazily so that `import whispergpt` stays cheap and never needs
# optional packages (deepspeed, torchaudio, matplotlib) until they are used.
_EXPORTS = {
    "load_audio": "audio",
    "save_audio": "audio",
    "log_mel": "audio",
    "AudioLoadError": "audio",
    "SAMPLE_RATE": "audio",
    "HOP_LENGTH": "audio",
    "FRAME_RATE": "audio",
    "Codec": "codec",
    "PreparedDataset": "data",
    "WhisperGPT": "models",
    "WhisperGPTConfig": "models",
    "EnCodecMAE": "models",
    "EnCodecMAEConfig": "models",
    "generate": "inference.generate",
    "Pipeline": "inference.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'whispergpt' has no attribute {name!r}")
