"""The ``whispergpt`` console script, ``whispergpt [--debug] <command> [args]``, and its one error path.

Each command lives in its own module exposing ``main(argv: list[str]) -> int``; modules are
imported only when their command runs, so ``whispergpt --help`` is instant.

Convention
----------
Runs take a recipe and overrides (``whispergpt train CONFIG.yaml key=value ...``); tools take
flags (``whispergpt eval --checkpoint DIR --data DIR``). Every command's ``--help`` ends with
examples (``make_parser``).

Errors and exit codes
---------------------
Commands do not print errors or pick exit codes: they raise, and ``run_command`` (used by the
dispatcher, by the ``@command`` decorator on each module's ``main`` and so by ``train.py`` /
``sample.py``) decides, in this one place:

====  ==========================================================================================
0     success (also ``--help``)
2     usage or input error: a bad flag or value (argparse), ``WhisperGPTError`` / ``InputError``
      (``whispergpt.errors``), ``ValueError`` (``ConfigError`` included), ``OSError`` (a missing
      or unreadable file), safetensors' ``SafetensorError`` (corrupt or truncated weights).
      One line on stderr, ``whispergpt <cmd>: error: <what> (<file>): <what to do>``, no traceback.
3     training diverged (``NonFiniteLossError``, a ``WhisperGPTError`` with ``exit_code = 3``): the
      last good checkpoint is kept, so a rerun with a lower lr resumes. Distinct from 2 because
      the input was fine and scripts (``compare``) may retry.
1     anything else: a bug or an environment failure; the traceback is printed, then one line.
130   interrupted (Ctrl-C).
====  ==========================================================================================

``whispergpt --debug <command>`` or ``WHISPERGPT_DEBUG=1`` also prints the traceback of expected
failures (the exit code does not change); ``--debug`` sets ``WHISPERGPT_DEBUG`` for the
command, so subprocesses it starts (``compare`` -> ``train``) inherit it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import textwrap
import traceback
from collections.abc import Callable

from whispergpt.errors import WhisperGPTError

DEBUG_ENV = "WHISPERGPT_DEBUG"

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": (
        "whispergpt.cli.prepare",
        "main_prepare",
        "encode a folder of audio into a training dataset",
    ),
    "inspect": ("whispergpt.cli.prepare", "main_inspect", "summarise a prepared dataset"),
    "train": (
        "whispergpt.cli.train",
        "main",
        "train a model (python train.py / accelerate launch train.py)",
    ),
    "eval": (
        "whispergpt.cli.eval",
        "main",
        "next-token NLL / perplexity of checkpoints on a prepared split",
    ),
    "compare": (
        "whispergpt.cli.compare",
        "main",
        "train + evaluate the paper's GPT-S / GPT-L / hybrid recipes",
    ),
    "sample": ("whispergpt.cli.sample", "main", "generate speech or music continuations into WAV files"),
    "score": ("whispergpt.cli.score", "main", "offline metrics of generated audio vs references"),
    "codec": (
        "whispergpt.cli.codec",
        "main",
        "train (codec train) or evaluate (codec eval) an EnCodec codec",
    ),
    "llm-codec": (
        "whispergpt.cli.llm_codec",
        "main",
        "UniAudio 1.5's LLM-Codec: train, encode audio to LLM token ids, decode",
    ),
    "icl": ("whispergpt.cli.icl", "main", "in-context audio classification with a frozen LLM (UniAudio 1.5)"),
    "augment-preview": (
        "whispergpt.cli.augment_preview",
        "main",
        "hear and see an augment recipe (WAVs + PNG)",
    ),
    "data": ("whispergpt.cli.data", "main", "build the demo corpus (data demo)"),
    "embed": ("whispergpt.cli.embed", "main", "EnCodecMAE embeddings of audio files"),
    "probe": ("whispergpt.cli.probe", "main", "linear probes of EnCodecMAE vs baselines"),
    "consistency": (
        "whispergpt.cli.consistency",
        "main",
        "prompt consistency of continuations (language probe, chroma)",
    ),
    "semantic": ("whispergpt.cli.semantic", "main", "fit a semantic tokenizer (semantic fit)"),
    "quickstart": ("whispergpt.cli.quickstart", "main", "the README's end-to-end demo"),
    "push": ("whispergpt.cli.push", "main", "upload a trained model with its card to the Hugging Face Hub"),
}


def make_parser(prog: str, description: str, examples: str, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` ends with ``examples`` (kept verbatim)."""
    epilog = "examples:\n" + textwrap.indent(textwrap.dedent(examples).strip("\n"), "  ")
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _safetensors_error() -> type | tuple:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return SafetensorError


def _safetensors_path(exc: BaseException) -> str | None:
    """The ``*.safetensors`` path the failing call was reading, from the innermost frame that holds one.

    safetensors' Rust errors do not name the file; the Python frames that called it do.
    """
    tb, found = exc.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and os.fspath(value).endswith(".safetensors"):
                found = os.fspath(value)
        tb = tb.tb_next
    return found


def describe(exc: BaseException) -> str | None:
    """One line for an expected failure (exit 2 or the error's own code); None for a bug."""
    if isinstance(exc, WhisperGPTError):
        return _one_line(exc.message())
    if isinstance(exc, _safetensors_error()):
        path = _safetensors_path(exc)
        where = f" ({path})" if path else ""
        return _one_line(
            f"corrupt or truncated safetensors file{where}: {exc}: re-download or re-save the checkpoint"
        )
    if isinstance(exc, OSError):
        if exc.filename is None:
            return _one_line(str(exc))
        files = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        hint = {
            FileNotFoundError: "check the path",
            PermissionError: "check its permissions",
            IsADirectoryError: "pass a file",
            NotADirectoryError: "pass a folder",
        }.get(type(exc))
        return _one_line(f"{exc.strerror or exc} ({files})" + (f": {hint}" if hint else ""))
    if isinstance(exc, ValueError):  # ConfigError, AudioLoadError, ...: messages name the file
        return _one_line(str(exc))
    return None


def run_command(name: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run ``fn(argv)`` under the exit-code convention above; never raises (except for BaseExceptions
    other than SystemExit / KeyboardInterrupt)."""
    prog = f"whispergpt {name}"
    try:
        return int(fn(list(argv)) or 0)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"{prog}: error: {_one_line(e.code)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        line = describe(e)
        if line is None:
            traceback.print_exc()
            print(
                f"{prog}: unexpected error: {type(e).__name__}: {_one_line(e)} "
                "(the traceback above says where; please report it if it is not your environment)",
                file=sys.stderr,
            )
            return 1
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: error: {line}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


def command(name: str) -> Callable:
    """Decorate a module's ``main(argv) -> int`` so direct calls and ``python -m`` follow the convention too."""

    def wrap(fn: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            return run_command(name, fn, sys.argv[1:] if argv is None else argv)

        main.whispergpt_command = name
        return main

    return wrap


def _usage() -> str:
    lines = ["usage: whispergpt [--debug] <command> [args]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        f"  --debug     show the traceback of expected errors too (or {DEBUG_ENV}=1)",
        "  --version   print the version",
        "",
        "Run `whispergpt <command> --help` for a command's options and examples.",
        "Exit codes: 0 ok, 2 usage or input error, 3 training diverged, 1 unexpected error.",
        "",
        "example:",
        "  whispergpt quickstart --out runs/quickstart",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from whispergpt import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"whispergpt: error: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as e:
            if debug_enabled():
                traceback.print_exc()
            print(f"whispergpt {cmd}: error: not available in this install ({e})", file=sys.stderr)
            return 2
        if getattr(fn, "whispergpt_command", None):
            return fn(rest)  # already under run_command
        return run_command(cmd, fn, rest)
    finally:
        if debug:
            if previous is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = previous


def run_script(cmd: str) -> int:
    """``python train.py ...`` / ``python sample.py ...``: the same as ``whispergpt [--debug] <cmd> ...``."""
    argv = sys.argv[1:]
    flags = []
    while argv and argv[0] == "--debug":
        flags, argv = ["--debug"], argv[1:]
    return main([*flags, cmd, *argv])


if __name__ == "__main__":
    sys.exit(main())
