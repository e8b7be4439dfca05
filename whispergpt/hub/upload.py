"""``whispergpt push``'s work: pick the model folder of a run, give it its card, upload it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from whispergpt.errors import InputError
from whispergpt.hub import HUB_FILES, push_folder
from whispergpt.hub.card import write_card


def model_folder(run_or_folder: str | os.PathLike, best: bool = False) -> Path:
    """A model folder as it is, else a run's ``final/`` (``best/`` with ``best=True``)."""
    p = Path(run_or_folder).expanduser()
    if not p.is_dir():
        raise InputError(f"{p}: no such directory", hint="pass a training out_dir or a model folder")
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    sub = p / ("best" if best else "final")
    if (sub / "config.json").is_file() and (sub / "model.safetensors").is_file():
        return sub
    raise InputError(
        f"{p}: neither a model folder (config.json + model.safetensors) nor a run with {sub.name}/",
        hint="train it to the end first" if not best else "best/ exists with train.early_stop_patience > 0",
    )


def push_model(
    run_or_folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    best: bool = False,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    token: str | None = None,
) -> tuple[Path, str]:
    """Upload the model folder of ``run_or_folder`` to ``repo_id`` with a card written for it (the
    folder itself is untouched); returns ``(folder, commit URL)``."""
    from huggingface_hub import constants

    folder = model_folder(run_or_folder, best)
    if constants.is_offline_mode():  # before any copying: one line, exit 2
        raise InputError(
            f"cannot push {folder} to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1)",
            hint="unset HF_HUB_OFFLINE and log in (hf auth login), then push again",
        )
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for name in HUB_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staged / name)
        write_card(staged, license, license_name, license_link, repo_id)
        url = push_folder(staged, repo_id, private=private, token=token)
    return folder, url
