"""``whispergpt quickstart``: the README's end-to-end demo (the steps are ``experiments.quickstart``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.experiments.quickstart import Runner, default_recipe, demo_sets, first_val_file
from whispergpt.runtime import folder_lock, write_atomic


@command("quickstart")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt quickstart",
        "End-to-end demo: corpus -> prepare -> train hybrid + token-only -> eval -> sample. "
        "Re-running resumes: finished steps are skipped.",
        """
        whispergpt quickstart
        whispergpt quickstart --quick --out runs/smoke
        whispergpt quickstart --corpus data/demo --steps 200 --dry-run
        """,
    )
    ap.add_argument(
        "--out", default="runs/quickstart", help="where everything goes (default runs/quickstart)"
    )
    ap.add_argument("--minutes", type=float, default=6.0, help="demo corpus size in minutes (default 6)")
    ap.add_argument("--sources", default=None, help="demo corpus sources (default: all of them)")
    ap.add_argument(
        "--corpus", default=None, help="use this folder (with speech/ and music/) instead of building one"
    )
    ap.add_argument(
        "--codec", default="default", help="codec for prepare/sample (default: hub, else shipped)"
    )
    ap.add_argument("--bandwidth", type=float, default=1.5, help="codec kbps (1.5 -> 2 codebooks)")
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps per model (default: the recipe's)"
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds to generate per sample")
    ap.add_argument("--prompt-seconds", type=float, default=2.0, help="prompt length (< the 3 s context)")
    ap.add_argument(
        "--prompts", type=int, default=8, help="held-out prompts per split for the scored comparison"
    )
    ap.add_argument("--no-install", action="store_true", help="do not install missing corpus tools")
    ap.add_argument(
        "--quick", action="store_true", help="CI smoke size: 1-minute corpus, a few steps, 1 s samples"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = ap.parse_args(argv)

    if args.quick:
        args.minutes = min(args.minutes, 1.0)
        args.steps = args.steps or 6
        args.seconds = min(args.seconds, 1.0)
        args.prompt_seconds = min(args.prompt_seconds, 1.0)
        args.prompts = min(args.prompts, 2)

    out = Path(args.out)
    with contextlib.nullcontext() if args.dry_run else folder_lock(out, "quickstart"):
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    runner = Runner(out, dry_run=args.dry_run)
    t_start = time.time()
    corpus = Path(args.corpus) if args.corpus else out / "corpus"
    runs = {"hybrid": out / "train" / "hybrid", "token_only": out / "train" / "token_only"}

    # 1-2. corpus, then speech and music prepared apart
    prepared = demo_sets(runner, corpus, args.corpus is None, args.minutes, args.sources, args.codec, args.bandwidth,
              install=not args.no_install)  # fmt: skip

    # 3. train the hybrid and its token-only twin on speech + music, same data, same steps
    data_dirs = f"[{prepared['speech']}, {prepared['music']}]"
    for name, run_dir in runs.items():
        overrides = [f"out_dir={run_dir}", f"data.dir={data_dirs}"]
        if name == "token_only":
            overrides.append("model.fusion=none")
        if args.steps:
            overrides.append(f"train.max_steps={args.steps}")
        runner.run(f"train-{name}", ["train", str(default_recipe()), *overrides])

    # 4. evaluate both on each modality's held-out split (both mel sources for the hybrid)
    reports = {}
    for m, dst in prepared.items():
        reports[m] = out / "eval" / f"{m}.json"
        runner.run(
            f"eval-{m}",
            [
                "eval",
                "--checkpoint",
                str(runs["hybrid"] / "final"),
                "--checkpoint",
                str(runs["token_only"] / "final"),
            ]
            + ["--data", str(dst), "--split", "val", "--out", str(reports[m])],
        )

    # 5. sample a music and a speech continuation from held-out prompts
    samples = {}
    for m, dst in prepared.items():
        samples[m] = out / "samples" / m
        prompt = None if args.dry_run else first_val_file(dst)
        cmd = ["sample", "--checkpoint", str(runs["hybrid"] / "final"), "--codec", args.codec]
        cmd += ["--seconds", str(args.seconds), "--out", str(samples[m]), "--seed", "0"]
        if prompt:
            cmd += ["--prompt", prompt, "--prompt-seconds", str(args.prompt_seconds)]
        runner.run(f"sample-{m}", cmd)

    # 6. both models continue the same held-out prompts; each set is scored against the real audio
    scores = {m: {} for m in prepared}
    for m, dst in prepared.items():
        for name, run_dir in runs.items():
            gen_dir = out / "heldout" / m / name
            cmd = ["sample", "--checkpoint", str(run_dir / "final"), "--codec", args.codec]
            cmd += ["--data", str(dst), "--split", "val", "--num-prompts", str(args.prompts)]
            cmd += ["--prompt-seconds", str(args.prompt_seconds), "--seconds", str(args.seconds)]
            cmd += ["--out", str(gen_dir), "--seed", "0", "--no-progress"]
            runner.run(f"heldout-{m}-{name}", cmd)
            scores[m][name] = out / "score" / m / name
            judge = runs["token_only"] / "final"  # one judge for both, so their NLLs compare
            cmd = ["score", str(gen_dir), "--codec", args.codec, "--checkpoint", str(run_dir / "final")]
            cmd += ["--judge", str(judge), "--out", str(scores[m][name])]
            runner.run(f"score-{m}-{name}", cmd)

    if args.dry_run:
        return 0
    total = time.time() - t_start
    print("\n" + "=" * 78)
    print(f"whispergpt quickstart finished in {total / 60:.1f} min (this run; finished steps were skipped)")
    print(f"  corpus          {corpus}  (speech/ and music/, licences in README.md there)")
    for m, dst in prepared.items():
        print(f"  prepared {m:<6} {dst}  (whispergpt inspect {dst})")
    for name, run_dir in runs.items():
        print(f"  model {name:<9} {run_dir / 'final'}  (metrics: {run_dir / 'metrics.jsonl'})")
    for m, rep in reports.items():
        print(f"  eval {m:<10} {rep}  (+ .md table, .png plot)")
    for m, d in samples.items():
        print(f"  samples {m:<7} {d}  (WAV + spectrogram PNG)")
    for m, rep in reports.items():
        md = rep.with_suffix(".md")
        if md.is_file():
            print(f"\n{m} (val split):\n{md.read_text().strip()}")
    from whispergpt.evaluation.score_report import comparison

    for m, by_model in scores.items():
        reports = {n: json.loads((d / "score.json").read_text()) for n, d in by_model.items()}
        table = comparison(reports, f"{m}: continuations of the same {args.prompts} held-out prompts")
        write_atomic(out / "score" / f"{m}.md", table, "the score table")
        print("\n" + table.strip())
    write_atomic(out / "quickstart.json", json.dumps({"seconds": total, "steps": runner.timings}, indent=2),
                 "the quickstart's summary")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
