"""``whispergpt semantic fit``: the flags; the tokenizer is ``semantic.tokenizer``."""

from __future__ import annotations

import sys

from whispergpt.cli import command, make_parser
from whispergpt.semantic.tokenizer import fit_semantic


@command("semantic")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt semantic",
        "Semantic tokens: `semantic fit` runs k-means on EnCodecMAE frames of prepared datasets and "
        "writes a tokenizer folder (for `whispergpt prepare --semantic DIR`).",
        """
        whispergpt semantic fit runs/mae_quickstart data/prepared/speech data/prepared/music \\
            --clusters 512 --layer 4 --rate 25 --out runs/semantic512
        """,
    )
    sub = ap.add_subparsers(dest="action", required=True, metavar="fit")
    fit = sub.add_parser("fit", help="fit a tokenizer", description="k-means on pooled EnCodecMAE frames")
    fit.add_argument(
        "mae_checkpoint", metavar="MAE_CHECKPOINT", help="EnCodecMAE model dir or training out_dir"
    )
    fit.add_argument("datasets", nargs="+", metavar="DATASET", help="`whispergpt prepare` outputs")
    fit.add_argument("--out", required=True, help="tokenizer folder")
    fit.add_argument("--clusters", type=int, default=512)
    fit.add_argument("--layer", type=int, default=None, help="encoder layer 1..L (default: the last)")
    fit.add_argument("--rate", type=int, default=25, help="semantic frames per second (divides 75)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--split", default="train")
    fit.add_argument("--max-frames", type=int, default=None, help="subsample (seeded) before k-means")
    fit.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    fit.add_argument(
        "--threads", type=int, default=None, help="k-means threads (default: all cores; 1 on a busy machine)"
    )
    args = ap.parse_args(argv)
    fit_semantic(
        args.mae_checkpoint, args.datasets, args.out, clusters=args.clusters, layer=args.layer,
        rate=args.rate, seed=args.seed, split=args.split, max_frames=args.max_frames, device=args.device,
        threads=args.threads,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
