"""``whispergpt consistency``: the flags; the measure is ``evaluation.consistency``."""

from __future__ import annotations

import sys
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.errors import InputError
from whispergpt.evaluation.consistency import markdown, run_consistency
from whispergpt.experiments.probe import language_judge
from whispergpt.runtime import write_atomic, write_json_atomic


@command("consistency")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt consistency",
        "Prompt consistency of held-out continuations (sample --data folders): language agreement "
        "under an EnCodecMAE language probe (AudioLM's measure), MAE-embedding similarity and chroma "
        "continuity, against the real continuation as the ceiling.",
        """
        whispergpt consistency runs/alone/speech runs/hierarchy/speech --mae runs/mae --out runs/consistency/speech
        whispergpt consistency runs/alone/music runs/hierarchy/music --out runs/consistency/music
        """,
    )
    ap.add_argument("folders", nargs="+", help="folders written by sample --data (the first is the baseline)")
    ap.add_argument(
        "--mae",
        default=None,
        help="EnCodecMAE checkpoint (folder or Hub id) for the language judge (none: chroma only)",
    )
    ap.add_argument("--layer", type=int, default=None, help="its encoder layer (default: the last)")
    ap.add_argument("--out", required=True, help="folder for consistency.json / consistency.md")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap and probe seed")
    ap.add_argument(
        "--cache", default=None, help="probe task audio cache (default ~/.cache/whispergpt/probe)"
    )
    ap.add_argument("--judge-task", default="language", help="probe task the judge is fitted on")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    args = ap.parse_args(argv)
    if not args.folders:
        raise InputError("consistency needs at least one folder of held-out continuations")
    judge = None
    if args.mae:
        judge = language_judge(args.mae, args.layer, args.device, args.cache, args.seed, args.judge_task)
    report = run_consistency(args.folders, judge, args.bootstrap, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "consistency.json", report)
    write_atomic(out / "consistency.md", markdown(report))
    print(markdown(report), end="", flush=True)
    print(f"wrote {out / 'consistency.json'}, consistency.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
