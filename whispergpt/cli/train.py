"""``whispergpt train CONFIG.yaml [key=value ...]`` (also ``python train.py ...``).

Exit codes follow ``whispergpt.cli``: 0 when the run finished, 2 for a bad config or dataset, 3 when
a non-finite loss stopped it before an update (the last good checkpoint is kept), 1 for a bug.
"""

from __future__ import annotations

import shlex

from whispergpt.cli import command, make_parser
from whispergpt.config import load_run_config

EXAMPLES = """
python train.py tiny.yaml data.dir=data/demo/prepared out_dir=runs/tiny
whispergpt train configs/paper_hybrid.yaml data.dir=[data/speech,data/music] train.max_steps=5000
accelerate launch --config_file configs/accelerate/zero2.yaml train.py gpt_100m.yaml data.dir=data/mine

A killed run resumes from its newest checkpoint when started again with the same out_dir.
"""


@command("train")
def main(argv: list[str]) -> int:
    parser = make_parser(
        "whispergpt train",
        "Train a WhisperGPT model; resumes automatically from the newest checkpoint in out_dir.",
        EXAMPLES,
    )
    parser.add_argument(
        "config", help="YAML recipe: a path, or a shipped recipe's name (tiny.yaml, paper_hybrid.yaml, ...)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    from whispergpt.training.trainer import train  # the trainer imports this module for its ``main``

    train(load_run_config(args.config, args.overrides), command=shlex.join(["whispergpt", "train", *argv]))
    return 0
