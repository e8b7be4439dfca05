"""``whispergpt probe``: the flags; the probes are ``experiments.probe``."""

from __future__ import annotations

import sys
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.experiments.probe import DEFAULT_PER_CLASS, REPRESENTATIONS, markdown_table, run_probe
from whispergpt.experiments.probe_tasks import DEFAULT_TASKS, TASKS


@command("probe")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt probe",
        "Linear probes (logistic regression on frozen mean-pooled embeddings) of an EnCodecMAE vs "
        "a random MAE of the same size, the log-mel and the codec latent, on tasks built from the "
        "demo corpus sources (espeak-ng, tuxpaint, FluidSynth). Tasks whose tools are missing are "
        "listed with the install command and skipped.",
        """
        whispergpt probe runs/mae_quickstart --out runs/mae_quickstart/probe
        whispergpt probe runs/mae/final --tasks pitch,instrument --layer 3 --seeds 0 1 2 3 4
        """,
    )
    ap.add_argument("checkpoint", help="EnCodecMAE model dir or training out_dir")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma list of {','.join(TASKS)}")
    ap.add_argument("--layer", type=int, default=None, help="encoder layer 1..L (default: the last)")
    ap.add_argument(
        "--representations", default=",".join(REPRESENTATIONS), help="comma list (default: all four)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split / random-init seeds")
    ap.add_argument(
        "--clips-per-class", type=int, default=None, help=f"default per task: {DEFAULT_PER_CLASS}"
    )
    ap.add_argument("--out", default="runs/probe", help="folder for probe.json / .md / .png")
    ap.add_argument("--cache", default=None, help="task audio cache (default ~/.cache/whispergpt/probe)")
    ap.add_argument("--codec", default=None, help="codec of the latent baseline (default: the MAE's)")
    ap.add_argument("--build-seed", type=int, default=0, help="seed of the task audio (not of the split)")
    ap.add_argument("--rebuild", action="store_true", help="render the task audio again")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = run_probe(
        args.checkpoint, tasks, layer=args.layer, seeds=args.seeds, per_class=args.clips_per_class,
        out=args.out, cache=args.cache, codec=args.codec, device=args.device, build_seed=args.build_seed,
        rebuild=args.rebuild, representations=[r.strip() for r in args.representations.split(",") if r.strip()],
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )  # fmt: skip
    print(markdown_table(report), end="", flush=True)
    print(f"wrote {Path(args.out) / 'probe.json'}, probe.md, probe.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
