"""Saving and loading every model, once: :class:`HubModel`, on ``huggingface_hub.PyTorchModelHubMixin``.

A model folder (local, or a Hub repo) holds ``config.json`` (``{"model_type": ..., **config}``) and
``model.safetensors``; training adds ``training_data.json`` and ``README.md`` (the model card).
``Model.from_pretrained(id_or_path, revision=, token=)`` reads a folder or a Hub id (through
``whispergpt.hub.resolve_model_dir``), ``save_pretrained(dir)`` writes one and ``push_to_hub(repo)``
uploads it. The mixin's defaults are loose where ours are strict, so they are overridden:

- the config is strict: an unknown key is an error naming it (the mixin drops unknown keys);
- the weights load strictly: a missing or unexpected tensor, or a shape mismatch, is an error
  naming them (the mixin defaults to ``strict=False``);
- ``config.json``'s ``model_type`` must be the class's (``WrongModelType`` names both); folders
  written before the key existed are WhisperGPT decoders;
- safetensors only: no pickle fallback.

``model_type_of`` tells which class a folder holds (``models.load_pretrained`` dispatches on it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin

from whispergpt.hub import HUB_TAGS, LIBRARY_NAME, REPO_URL, resolve_model_dir

DEFAULT_MODEL_TYPE = "whispergpt"  # config.json without "model_type" (written before it existed)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class WrongModelType(ValueError):
    """A checkpoint of one model type opened as another."""


def model_type_of(directory: str | os.PathLike) -> str:
    """``"model_type"`` of a ``save_pretrained`` directory (the default when absent)."""
    path = Path(directory) / CONFIG_FILE
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


def strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, every tensor accounted for: a ``ValueError`` lists the
    missing and unexpected names and the shapes that differ (both sides) before anything is copied."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes))
    if problems:
        raise ValueError(
            f"{source}: weights do not match the {type(model).__name__} config: " + ", ".join(problems)
        )
    model.load_state_dict(state)


class HubModel(
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    repo_url=REPO_URL,
    tags=list(HUB_TAGS),
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` of a model whose ``config`` is a
    dataclass with ``to_dict``. The subclass names its ``model_type``, ``config_class`` and
    ``config_section`` (the run config's section, for error messages)."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config_section: ClassVar[str]

    # -- save ---------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json (model_type first) + model.safetensors; the mixin adds README.md."""
        from safetensors.torch import save_file

        config = {"model_type": self.model_type, **self.config.to_dict()}
        (save_directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_FILE), metadata={"format": "pt"})

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card ``save_pretrained`` writes when the folder has none: ``whispergpt.hub.card``
        (the trainer rewrites it from the training record)."""
        from whispergpt.hub.card import render_card

        return ModelCard(render_card(self.model_type, self.config.to_dict(), self.num_parameters(), None))

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload whispergpt model",
    ) -> str:
        """Save into a temporary folder and upload it (``whispergpt.hub.push_folder``): offline or
        refused, one ``InputError`` line. A trained folder is pushed with ``whispergpt push``."""
        import tempfile

        from whispergpt.hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, private=private, token=token, commit_message=commit_message)

    # -- load ---------------------------------------------------------------------------------
    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> Any:
        """The strict config of a model folder: ``model_type`` checked, unknown keys an error."""
        from whispergpt.config_io import from_dict

        d = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (d / name).is_file():
                raise OSError(f"{d} is not a {cls.__name__} save_pretrained directory: {name} is missing")
        raw = json.loads((d / CONFIG_FILE).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{d / CONFIG_FILE}: expected a JSON object")
        check_model_type(d, raw, cls.model_type)
        return from_dict(cls.config_class, raw, cls.config_section)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        device: torch.device | str | None = None,
    ):
        """Load a model folder or a Hub id (``org/name``, ``org/name@rev``; from the cache when
        offline). Refuses another model type, an unknown config key, a missing or unexpected tensor."""
        directory = resolve_model_dir(pretrained_model_name_or_path, revision, token)
        config = cls.read_config(directory)  # passed on, so the mixin never decodes config.json itself
        model = super().from_pretrained(str(directory), config=config)
        return model if device is None else model.to(device)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: Any = None, **_: Any):
        """The mixin's hook, given the local folder (``from_pretrained`` resolved it) and the config."""
        from safetensors.torch import load_file

        if config is None:
            config = cls.read_config(model_id)
        model = cls(config)
        strict_load(model, load_file(str(Path(model_id) / WEIGHTS_FILE)), model_id)
        return model
