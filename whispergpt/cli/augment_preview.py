"""``whispergpt augment-preview``: the flags; the preview is ``data.augment_preview``."""

from __future__ import annotations

import sys
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.data.augment import (
    describe_chain,
    recipe_arg,
)
from whispergpt.data.augment_preview import preview


@command("augment-preview")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt augment-preview",
        "Write a few augmented copies of one file (WAVs + a spectrogram grid PNG).",
        """
        whispergpt augment-preview speech-light.yaml clip.wav --out runs/preview
        whispergpt augment-preview my_recipe.yaml song.flac --out runs/preview --n 8 --seed 3
        """,
    )
    ap.add_argument(
        "recipe", type=recipe_arg, metavar="RECIPE.yaml", help="augment recipe (configs/augment/)"
    )
    ap.add_argument("audio", metavar="AUDIO", help="an audio file")
    ap.add_argument("--out", required=True, help="folder for the WAVs, chains.json and grid.png")
    ap.add_argument("--n", type=int, default=4, help="augmented copies to write")
    ap.add_argument("--seed", type=int, default=0, help="the prepare --seed to preview")
    args = ap.parse_args(argv)
    records = preview(args.recipe, args.audio, args.out, n=args.n, seed=args.seed)
    for r in records:
        print(f"copy {r['copy']} (seed {r['seed']}): {r.get('skipped') or describe_chain(r['chain'])}")
    print(
        f"wrote {Path(args.out) / 'grid.png'} and {sum('skipped' not in r for r in records)} WAVs + original.wav"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
