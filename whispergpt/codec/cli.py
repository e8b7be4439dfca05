"""``whispergpt codec train ...`` / ``whispergpt codec eval ...``.

Also runnable as a module, e.g. under accelerate::

    accelerate launch -m whispergpt.codec.cli train AUDIO... --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = """usage: whispergpt codec <train|eval> [args]

  train AUDIO... --out DIR [--config configs/codec/<recipe>.yaml] [key=value ...]
        train (or fine-tune, model.init=NAME_OR_DIR) an EnCodec codec; DIR loads with
        Codec.from_pretrained(DIR)
  eval  CODEC AUDIO... [--speech AUDIO...] [--music AUDIO...] [--out report.json]
        mel distance / SI-SNR / PESQ / STOI / codebook usage per bandwidth vs a random floor
"""


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from audio paths (an existing path always counts as audio)."""
    paths, overrides = [], []
    for it in items:
        if "=" in it and not Path(it).exists():
            overrides.append(it)
        else:
            paths.append(it)
    return paths, overrides


def main_train(argv: list[str]) -> int:
    from ..config import ConfigError, load_config
    from .train import CodecTrainConfig, train

    p = argparse.ArgumentParser(
        prog="whispergpt codec train",
        description="Train an EnCodec-architecture codec (transformers EncodecModel + trainable RVQ). "
        "Positional arguments are audio files/directories and key=value config overrides.",
    )
    p.add_argument("items", nargs="+", metavar="AUDIO_OR_KEY=VALUE")
    p.add_argument("--out", required=True, help="output directory (EncodecModel layout + checkpoints)")
    p.add_argument("--config", default=None, help="YAML recipe, e.g. configs/codec/small-cpu.yaml")
    args = p.parse_intermixed_args(argv)
    audio, overrides = _split_overrides(args.items)
    if not audio:
        p.error("no audio files or directories given")
    try:
        cfg = load_config(CodecTrainConfig, args.config, overrides)
    except ConfigError as e:
        print(f"whispergpt codec train: {e}", file=sys.stderr)
        return 2
    try:
        last = train(cfg, audio, args.out)
    except ValueError as e:
        print(f"whispergpt codec train: {e}", file=sys.stderr)
        return 2
    if last:
        print(
            f"codec train: done at step {last.get('step')}; loss {last.get('loss', float('nan')):.4f}; "
            f"load with Codec.from_pretrained({str(args.out)!r})"
        )
    return 0


def main_eval(argv: list[str]) -> int:
    from .eval import main as eval_main

    return eval_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return main_train(rest)
    if cmd == "eval":
        return main_eval(rest)
    print(f"whispergpt codec: unknown subcommand {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
