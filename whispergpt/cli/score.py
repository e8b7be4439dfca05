"""``whispergpt score``: the flags; the metrics are ``evaluation.score``, the report ``evaluation.score_report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.evaluation.score import round_floats, score
from whispergpt.evaluation.score_report import markdown, write_outputs

EXAMPLES = """
whispergpt sample --checkpoint runs/hybrid --data data/speech --num-prompts 32 --prompt-seconds 2 \\
    --seconds 4 --out runs/hybrid/heldout
whispergpt score runs/hybrid/heldout --checkpoint runs/hybrid --judge runs/big --out runs/hybrid/score
whispergpt score generated/ --reference real/ --codec facebook/encodec_24khz --out score/
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("whispergpt score", __doc__.split("\n\n")[0], EXAMPLES)
    p.add_argument("generated", help="folder of generated audio (searched recursively)")
    p.add_argument("--reference", default=None, help="folder of reference audio (pairs by relative path)")
    p.add_argument("--out", required=True, help="output folder for score.json / score.md / score.png")
    p.add_argument("--codec", default=None,
                   help="codec for embeddings and codes (default: --checkpoint's training codec, else 'default')")  # fmt: skip
    p.add_argument(
        "--checkpoint", default=None, help="NLL of the generated codes under this model (folder or Hub id)"
    )
    p.add_argument("--judge", default=None, help="NLL under a second model too (folder or Hub id)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default="cpu", help="device for the codec and models (cpu, cuda)")
    return p


@command("score")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    report = score(
        args.generated,
        reference=args.reference,
        codec=args.codec,
        checkpoint=args.checkpoint,
        judge=args.judge,
        n_boot=args.bootstrap,
        seed=args.seed,
        device=args.device,
        exclude=(Path(args.out),),
    )
    paths = write_outputs(report, args.out)
    print(markdown(round_floats(report)))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
