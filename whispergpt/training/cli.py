"""``whispergpt train CONFIG.yaml [key=value ...]`` (also ``python train.py ...``): exit code 0 when
the run finished, 2 for a bad config, 3 when a non-finite loss stopped it (last good checkpoint kept)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import load_run_config
from . import checkpoint as ckpt_io
from .trainer import NonFiniteLossError, train


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="whispergpt train",
        description="Train a WhisperGPT model; resumes automatically from the newest checkpoint in out_dir. "
        "Multi-process: accelerate launch [--config_file configs/accelerate/...] train.py CONFIG.yaml ...",
    )
    parser.add_argument(
        "config", help="YAML recipe: a path, or a shipped recipe's name (tiny.yaml, paper_hybrid.yaml, ...)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config, args.overrides)
    except ValueError as e:
        print(f"whispergpt train: error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except NonFiniteLossError as e:
        print(
            f"whispergpt train: {e}. The last good checkpoint in {Path(cfg.out_dir) / ckpt_io.CHECKPOINTS} "
            "is kept; lower train.lr or raise train.warmup_steps and rerun to resume from it.",
            file=sys.stderr,
        )
        return 3
    return 0
