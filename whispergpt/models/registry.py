"""Which model class a ``save_pretrained`` directory holds: ``config.json``'s ``"model_type"``.

Every model saves ``{"model_type": ..., **config}``; directories written before the key existed
are WhisperGPT decoders. ``load_pretrained`` opens any of them; a class's own ``from_pretrained``
refuses a directory of another type with a message naming both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

DEFAULT_MODEL_TYPE = "whispergpt"  # config.json without "model_type" (written before it existed)


class WrongModelType(ValueError):
    """A checkpoint of one model type opened as another."""


def model_type_of(directory: str | os.PathLike) -> str:
    """``"model_type"`` of a ``save_pretrained`` directory (the default when absent)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise OSError(f"{directory} is not a save_pretrained directory: config.json is missing")
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return str(raw.get("model_type", DEFAULT_MODEL_TYPE))


def check_model_type(directory: str | os.PathLike, raw: dict, expected: str) -> None:
    """Pop ``raw["model_type"]`` and raise :class:`WrongModelType` unless it is ``expected``."""
    found = str(raw.pop("model_type", DEFAULT_MODEL_TYPE))
    if found != expected:
        raise WrongModelType(
            f"{directory} holds a {found!r} model, expected a {expected!r} model (config.json model_type)"
        )


def write_pretrained(directory: str | os.PathLike, model_type: str, config: dict, model: nn.Module) -> None:
    """``config.json`` (``{"model_type": ..., **config}``) + ``model.safetensors`` of ``model``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": model_type, **config}, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def read_pretrained(directory: str | os.PathLike, model_type: str) -> tuple[dict, dict]:
    """``(config without model_type, state dict)`` of a ``write_pretrained`` directory (no pickle);
    :class:`WrongModelType` when it holds another model type."""
    from safetensors.torch import load_file

    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            raise OSError(f"{d} is not a save_pretrained directory: {name} is missing")
    raw = json.loads((d / "config.json").read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{d / 'config.json'}: expected a JSON object")
    check_model_type(d, raw, model_type)
    return raw, load_file(str(d / "model.safetensors"))


class PretrainedIO:
    """``save_pretrained`` / ``from_pretrained`` for a model whose ``config`` is a dataclass with
    ``to_dict``: the subclass names its ``model_type``, ``config_class`` and ``config_section``
    (the run config's section, for error messages)."""

    model_type: str
    config_class: type
    config_section: str

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        write_pretrained(directory, self.model_type, self.config.to_dict(), self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None):
        """Load a ``save_pretrained`` directory (no pickle); refuses other model types."""
        from whispergpt.config_io import from_dict

        raw, state = read_pretrained(directory, cls.model_type)
        model = cls(from_dict(cls.config_class, raw, cls.config_section))
        model.load_state_dict(state)
        return model if device is None else model.to(device)
