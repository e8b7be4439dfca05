"""The ``whispergpt`` console script: ``whispergpt <command> [args]``.

Each command lives in its own module exposing ``main(argv: list[str]) -> int``; modules are
imported only when their command runs, so ``whispergpt --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": (
        "whispergpt.data.prepare",
        "main_prepare",
        "encode a folder of audio into a training dataset",
    ),
    "inspect": ("whispergpt.data.prepare", "main_inspect", "summarise a prepared dataset"),
    "train": (
        "whispergpt.training.trainer",
        "main",
        "train a model (python train.py / accelerate launch train.py)",
    ),
    "eval": ("whispergpt.evaluate", "main", "next-token NLL / perplexity of checkpoints on a prepared split"),
    "compare": (
        "whispergpt.tools.compare",
        "main",
        "train + evaluate the paper's GPT-S / GPT-L / hybrid recipes",
    ),
    "sample": ("whispergpt.generate", "main", "generate speech or music continuations into WAV files"),
    "codec": (
        "whispergpt.codec.cli",
        "main",
        "train (codec train) or evaluate (codec eval) an EnCodec codec",
    ),
    "augment-preview": (
        "whispergpt.tools.augment_preview",
        "main",
        "hear and see an augment recipe (WAVs + PNG)",
    ),
    "data": ("whispergpt.tools.demo", "main", "build the demo corpus (data demo)"),
    "quickstart": ("whispergpt.tools.quickstart", "main", "the README's end-to-end demo"),
}


def _usage() -> str:
    lines = ["usage: whispergpt <command> [args]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `whispergpt <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"whispergpt: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"whispergpt {cmd}: not available in this install ({e})", file=sys.stderr)
        return 2
    result = fn(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
