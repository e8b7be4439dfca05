"""``whispergpt compare``: the flags; the harness is ``experiments.compare`` (presets: ``experiments.preset``)."""

from __future__ import annotations

import sys

from whispergpt.cli import command, make_parser
from whispergpt.cli import main as cli_main
from whispergpt.experiments.compare import CONFIGS, compare, scales


@command("compare")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt compare",
        "Train the paper's GPT-S / GPT-L / hybrid recipes on a speech and a music set for the "
        "same number of tokens, evaluate them, and write the paper-style table. With --preset: "
        "a whole comparison (models x settings x seeds x sets, trained to convergence) in one "
        "command, with its seed spread, equal-FLOPs reading and curves (docs/EVAL.md).",
        """
        whispergpt compare --preset paper --out runs/paper
        whispergpt compare --preset paper --out runs/paper --estimate
        whispergpt compare --preset strategies --out runs/strategies --seeds 1
        whispergpt compare --preset paper --scale gpu --out runs/paper-gpu --minutes 60
        whispergpt compare --preset paper --out runs/paper --settings paper,delay,depth
        whispergpt compare --preset paper --out runs/paper \
            --speech runs/quickstart/prepared/speech --music runs/quickstart/prepared/music
        whispergpt compare --speech data/prepared/speech --music data/prepared/music --out runs/compare
        whispergpt compare --speech ds/s --music ds/m --out runs/c --scale tiny train.lr=1e-3 \
            --launcher "accelerate launch" --processes 2
        """,
    )
    ap.add_argument("--speech", default=None, help="prepared speech dataset (with a val split)")
    ap.add_argument("--music", default=None, help="prepared music dataset (with a val split)")
    ap.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    ap.add_argument(
        "--scale",
        default=None,
        help=f"a folder of CONFIGS/compare: {', '.join(scales())} (default tiny); "
        "with --preset one of the preset's scales (paper: cpu, gpu, tiny; default cpu)",
    )
    ap.add_argument("--tokens", type=int, default=None, help="training frames per run (default: per scale)")
    ap.add_argument(
        "--launcher", default=None, help='command prefix for train/eval, e.g. "accelerate launch"'
    )
    ap.add_argument(
        "--processes", type=int, default=1, help="processes the launcher starts (token arithmetic)"
    )
    ap.add_argument(
        "--configs",
        default=str(CONFIGS),
        help="recipe folder holding compare/<scale>/paper_*.yaml (default: shipped)",
    )
    ap.add_argument(
        "--prompts", type=int, default=8, help="held-out prompts per set to continue and score (0: off)"
    )
    ap.add_argument(
        "--prompt-seconds", type=float, default=None, help="prompt length (default: half the context)"
    )
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds each model continues a prompt")
    preset = ap.add_argument_group("presets (--preset)")
    preset.add_argument(
        "--preset", default=None, help="a preset name (configs/compare/presets: paper, strategies) or file"
    )
    preset.add_argument("--seeds", type=int, default=None, help="run only the preset's first N seeds")
    preset.add_argument(
        "--settings", default=None, help="comma list of the preset's settings (default: its default_settings)"
    )
    preset.add_argument("--jobs", type=int, default=None, help="runs at once (default: the scale's)")
    preset.add_argument("--corpus", default=None, help="an existing demo corpus (speech/, music/) to prepare")
    preset.add_argument(
        "--minutes", type=float, default=None, help="demo corpus minutes (default: the preset's)"
    )
    preset.add_argument("--no-install", action="store_true", help="do not install missing corpus tools")
    preset.add_argument(
        "--estimate",
        nargs="?",
        const="5,35",
        default=None,
        metavar="A,B",
        help="train nothing: time A and B steps of each model and extrapolate the wall time (default 5,35)",
    )
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.lr=1e-3")
    args = ap.parse_args(argv)
    if (args.speech is None) != (args.music is None):
        ap.error("give both --speech and --music, or neither (with --preset: the demo corpus)")
    sets = None if args.speech is None else {"speech": args.speech, "music": args.music}
    if args.preset:
        from whispergpt.experiments.preset import run_preset

        if args.tokens is not None:
            ap.error("--tokens sizes the runs of --scale tiny|paper; a preset's budget is train.max_steps=N")

        steps = None
        if args.estimate:
            try:
                steps = tuple(int(x) for x in args.estimate.split(","))
                assert len(steps) == 2
            except (ValueError, AssertionError):
                ap.error(f"--estimate takes two step counts A,B (e.g. 5,35), got {args.estimate!r}")
        run_preset(args.preset, args.out, args.scale, sets, args.seeds, args.jobs, args.launcher, args.processes,
                   args.overrides, args.corpus, args.minutes, not args.no_install, steps,
                   args.settings.split(",") if args.settings else None, main=cli_main)  # fmt: skip
        return 0
    if sets is None:
        ap.error("--speech and --music are required without --preset")
    compare(
        sets,
        args.out,
        scale=args.scale or "tiny",
        tokens=args.tokens,
        launcher=args.launcher,
        processes=args.processes,
        overrides=args.overrides,
        configs=args.configs,
        prompts=args.prompts,
        prompt_seconds=args.prompt_seconds,
        seconds=args.seconds,
        main=cli_main,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
