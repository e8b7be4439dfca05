"""Exceptions that mean "the user can fix this": the CLI prints them as one line and exits 2.

Library code raises these (or a plain ``ValueError``, ``FileNotFoundError``, ...) and never prints
or exits; ``whispergpt.cli.run_command`` turns them into the one-line message and the exit code
(see the exit-code table there). No imports beyond the standard library, so any module may use it.
"""

from __future__ import annotations

import os


class WhisperGPTError(Exception):
    """A failure the user can fix. ``str(e)`` is ``what (path): hint``; ``exit_code`` is what the CLI returns.

    ``what`` says what went wrong, ``path`` names the file or folder concerned (or None), ``hint``
    says what to do about it (or None).
    """

    exit_code = 2

    def __init__(self, what: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.what = what
        self.path = None if path is None else os.fspath(path)
        self.hint = hint
        super().__init__(self.message())

    def message(self) -> str:
        text = self.what if self.path is None or self.path in self.what else f"{self.what} ({self.path})"
        return f"{text}: {self.hint}" if self.hint else text


class InputError(WhisperGPTError, ValueError):
    """Bad user input: a missing, corrupt or mismatched file, an impossible argument value.

    Also a ``ValueError``, so callers that catch ``ValueError`` (the house rule for user input)
    keep working.
    """


class CommandFailed(WhisperGPTError):
    """A child command (a quickstart / compare step) failed; it printed why. Exits with its code."""

    def __init__(
        self, what: str, exit_code: int, path: str | os.PathLike | None = None, hint: str | None = None
    ):
        super().__init__(what, path, hint)
        self.exit_code = exit_code if exit_code in (1, 2, 3) else 1


class FolderInUse(WhisperGPTError):
    """Another live process holds the output folder's lock (``runtime.folder_lock``)."""
