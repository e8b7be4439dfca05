"""The Hugging Face Hub: one resolver from a model id or folder to a local folder, and the upload.

Every flag that takes a model (``--checkpoint``, ``--fine``, ``--semantic-lm``, ``--judge``,
``--mae``, ``train.init_from``) and every ``Model.from_pretrained`` reads a folder through
:func:`resolve_model_dir`: an existing path is used as it is; otherwise a Hub id
(``org/name``, optionally ``org/name@revision``) is fetched with ``snapshot_download`` into the
Hub cache (``HF_HOME``), which also serves it offline (``HF_HUB_OFFLINE=1``) once cached.
Only the model's own files travel (:data:`HUB_FILES`): nothing else of a repo is downloaded.

``push_folder`` uploads a model folder (``whispergpt push``); offline, or without a token, it
raises one :class:`~whispergpt.errors.InputError` line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from whispergpt.errors import InputError

# what a whispergpt model repo holds: weights, config, the training record and the model card
HUB_FILES = ("config.json", "model.safetensors", "training_data.json", "README.md")
LIBRARY_NAME = "whispergpt"
REPO_URL = "https://github.com/whispergpt/whispergpt"
HUB_TAGS = ["whispergpt", "audio", "audio-language-model", "encodec"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


def split_revision(ref: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; without ``@``, the revision is None."""
    repo_id, sep, revision = ref.partition("@")
    return repo_id, (revision if sep else None)


def is_hub_id(ref: str | os.PathLike) -> bool:
    """Whether ``ref`` reads as a Hub model id (``org/name[@rev]``) rather than a local path: it
    does not exist on disk, is not absolute or home-relative, and has exactly one slash."""
    text = os.fspath(ref)
    if text.startswith(("/", "~", ".")) or Path(text).expanduser().exists():
        return False
    return bool(_REPO_ID.match(text))


def resolve_model_dir(
    ref: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """A local folder for ``ref``: the path itself when it exists, else the Hub snapshot of the
    model id ``ref`` (downloaded once, then read from the cache; offline from the cache only).

    ``ValueError`` (an ``InputError``) when ``ref`` is neither, naming what was tried.
    """
    path = Path(ref).expanduser()
    if path.exists() or not is_hub_id(ref):
        if not path.exists():
            raise InputError(f"{os.fspath(ref)}: no such directory (and not a Hub id org/name)")
        return path
    repo_id, at = split_revision(os.fspath(ref))
    if revision is not None and at is not None and revision != at:
        raise InputError(f"{ref}: revision {at!r} in the id and revision={revision!r} disagree")
    return download_model(repo_id, revision or at, token)


def download_model(repo_id: str, revision: str | None = None, token: str | bool | None = None) -> Path:
    """``snapshot_download`` of a model repo's :data:`HUB_FILES` -> its snapshot folder."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = snapshot_download(
            repo_id, revision=revision, token=token, allow_patterns=list(HUB_FILES), repo_type="model"
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise InputError(
            f"{where}: no such directory, and no such model on the Hub ({type(e).__name__})"
        ) from e
    except LocalEntryNotFoundError as e:
        raise InputError(
            f"{where}: not a local folder, and not in the Hub cache {constants.HF_HUB_CACHE} while offline",
            hint="download it once online (unset HF_HUB_OFFLINE), or pass a model folder",
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise InputError(f"{where}: could not download it from the Hub ({type(e).__name__}: {e})") from e
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{where}: the Hub repo holds no config.json (not a whispergpt model)", folder)
    return folder


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload whispergpt model",
) -> str:
    """Upload the :data:`HUB_FILES` of a model ``folder`` to ``repo_id`` (created if needed);
    returns the commit URL. Offline, unauthenticated or refused: one ``InputError`` line."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO_ID.match(repo_id) or "@" in repo_id:
        raise InputError(f"REPO_ID must be org/name, got {repo_id!r}")
    if constants.is_offline_mode():
        raise InputError(
            f"cannot push to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1)",
            hint="unset HF_HUB_OFFLINE and log in (hf auth login), then push again",
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=os.fspath(folder),
            allow_patterns=list(HUB_FILES),
            commit_message=commit_message,
            repo_type="model",
        )
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot push to {repo_id}: {first}", hint="check the network and your token (hf auth login)"
        ) from e
    return str(getattr(info, "commit_url", info))
