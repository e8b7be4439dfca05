#!/usr/bin/env python
"""``whispergpt score`` speed: 100 ten-second generated clips against their 100 references.

    python benchmarks/bench_score.py                         # 100 x 10 s, shipped codec, 2 threads
    python benchmarks/bench_score.py --quick                 # 12 x 2 s smoke run
    python benchmarks/bench_score.py --threads 1 --out runs/benchmarks/score.json

Target (issue 17): under 2 minutes on 2 CPU cores for 100 ten-second clips. The clips are
synthetic (seeded tones with vibrato, note onsets, noise), written as ``X_continuation.wav`` /
``X_reference.wav`` pairs; the codec is the one shipped in the package (no download); the NLL
stage scores both sets under a random ``WhisperGPT`` (d_model 256, 4 layers, context 512,
hybrid, delay pattern, K=8), which costs the same as a trained one. Prints a table of seconds per
stage and writes the same as JSON. Nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SR = 24000


def synth(seed: int, seconds: float) -> np.ndarray:
    """A seeded 'music-like' clip: a few decaying notes with vibrato over low noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = 0.01 * rng.standard_normal(n)
    for onset in np.sort(rng.uniform(0, seconds, int(2 * seconds))):
        f = 110 * 2 ** rng.uniform(0, 3)
        env = np.where(t >= onset, np.exp(-(t - onset) * rng.uniform(1, 6)), 0.0)
        out += 0.15 * env * np.sin(2 * np.pi * f * t + 0.3 * np.sin(2 * np.pi * 5 * t))
    return np.clip(out, -1, 1).astype(np.float32)


def make_data(root: Path, clips: int, seconds: float) -> Path:
    from whispergpt.audio import save_audio

    d = root / "generated"
    for i in range(clips):
        save_audio(d / f"c{i:03d}_continuation.wav", synth(2 * i, seconds))
        save_audio(d / f"c{i:03d}_reference.wav", synth(2 * i + 1, seconds))
    return d


def make_checkpoint(root: Path) -> Path:
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=8, codebook_size=1024, pattern="delay", fusion="concat", context=512)
    d = root / "ckpt"
    WhisperGPT(cfg).save_pretrained(d)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clips", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-nll", action="store_true", help="skip the --checkpoint NLL stage")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    clips = args.clips or (12 if args.quick else 100)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    torch.set_num_threads(args.threads)

    from whispergpt.codec.codec import SHIPPED_CODEC_DIR
    from whispergpt.evaluation.score import score

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        gen = make_data(root, clips, seconds)
        ckpt = None if args.no_nll else make_checkpoint(root)
        t_setup = time.perf_counter() - t0
        timings: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        report = score(gen, codec=str(SHIPPED_CODEC_DIR), checkpoint=None if ckpt is None else str(ckpt),
                       n_boot=args.bootstrap, seed=0, timings=timings)  # fmt: skip
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = [dict(stage=k, seconds=round(v, 2)) for k, v in timings.items()]
    rows.append(dict(stage="total", seconds=round(total, 2), cpu_seconds=round(cpu, 2)))
    print(f"\nwhispergpt score: {clips} x {seconds:g} s generated + {clips} references, "
          f"{args.bootstrap} bootstrap resamples, {args.threads} torch thread(s)\n")  # fmt: skip
    print("| stage | seconds |\n|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.2f} |")
    print(
        f"\nCPU time of the process: {cpu:.1f} s (on a shared machine, wall time / CPU time shows the contention)"
    )
    print(f"(setup, not timed above: {t_setup:.1f} s; target: total < 120 s on 2 cores)")
    result = dict(
        meta=dict(clips=clips, seconds=seconds, threads=args.threads, bootstrap=args.bootstrap,
                  nll=ckpt is not None, torch=torch.__version__, python=platform.python_version(),
                  machine=platform.machine(), command=" ".join(sys.argv)),
        rows=rows,
        counts=report["counts"],
        fd=report["distribution"]["fd"],
        mmd=report["distribution"]["mmd"],
    )  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
