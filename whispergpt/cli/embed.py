"""``whispergpt embed``: the flags; the work is ``semantic.embed``."""

from __future__ import annotations

import sys

from whispergpt.cli import command, make_parser
from whispergpt.semantic.embed import POOLS, embed_files


@command("embed")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt embed",
        "EnCodecMAE embeddings of audio files, one safetensors file each (+ index.json). Unreadable "
        "files are reported and skipped, as in `whispergpt prepare`.",
        """
        whispergpt embed runs/mae_quickstart clip.wav --out emb
        whispergpt embed runs/mae/final data/speech --out emb --layer 3 --pool none
        """,
    )
    ap.add_argument("checkpoint", help="EnCodecMAE model dir or training out_dir (-> final/ or newest)")
    ap.add_argument(
        "sources", nargs="+", metavar="AUDIO", help="audio files, folders (recursive), or text lists"
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--layer", type=int, default=None, help="encoder layer 1..L (default: the last)")
    ap.add_argument(
        "--pool", choices=POOLS, default="mean", help="mean: one (D,) vector; none: (T, D) frames"
    )
    ap.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        help="encoder window for long files (default: the MAE's training window)",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--quiet", action="store_true", help="only the summary line")
    args = ap.parse_args(argv)
    embed_files(
        args.checkpoint,
        args.sources,
        args.out,
        layer=args.layer,
        pool=args.pool,
        device=args.device,
        chunk_seconds=args.chunk_seconds,
        progress=not args.quiet,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
