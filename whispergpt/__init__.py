"""whispergpt: a hybrid log-mel + EnCodec-token audio language model (Whisper-GPT style)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

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
    "generate": "generate",
}

# Modules that moved when the package got one folder per concern: the old import paths keep
# working (the same module object is returned, so monkeypatching either name patches both).
_MOVED = {
    "whispergpt.model": "whispergpt.models.whispergpt",
    "whispergpt.patterns": "whispergpt.models.patterns",
    "whispergpt.prepare": "whispergpt.data.prepare",
    "whispergpt.checkpoint": "whispergpt.training.checkpoint",
    "whispergpt.sampling": "whispergpt.generate",
    "whispergpt.demo": "whispergpt.tools.demo",
    "whispergpt.quickstart": "whispergpt.tools.quickstart",
    "whispergpt.compare": "whispergpt.tools.compare",
    "whispergpt.codec_train": "whispergpt.codec",
    "whispergpt.codec_train.rvq": "whispergpt.codec.rvq",
    "whispergpt.codec_train.train": "whispergpt.codec.train",
    "whispergpt.codec_train.eval": "whispergpt.codec.eval",
    "whispergpt.codec_train.cli": "whispergpt.codec.cli",
}

__all__ = sorted(_EXPORTS)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(_MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if f"{__name__}.{name}" in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'whispergpt' has no attribute {name!r}")
