"""Streaming latency of the Python API: time to the first continuation chunk vs the whole call.

    OMP_NUM_THREADS=1 python benchmarks/bench_stream.py [--seconds 4] [--chunk-frames 8] [--repeats 3]

A random-weights decoder at the quickstart recipe's size (D=128, L=4, delay, K=2) with the shipped
codec at 1.5 kbps, a 1 s prompt, ``Pipeline.continue_audio(..., stream=True)``. The first chunk
yielded is the decoded prompt; the row "first continuation chunk" is the latency a listener waits
for new audio. Medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from whispergpt import Pipeline
from whispergpt.codec.codec import SHIPPED_CODEC_DIR
from whispergpt.models import WhisperGPT, WhisperGPTConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, pattern="delay", d_model=128,
                           n_layers=4, n_heads=4, context=225, mel_dim=32, mel_layers=1)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        WhisperGPT(cfg).save_pretrained(Path(tmp) / "m")
        pipe = Pipeline.from_pretrained(Path(tmp) / "m", codec=str(SHIPPED_CODEC_DIR), device="cpu")
    prompt = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    rows: dict[str, list[float]] = {"prompt chunk": [], "first continuation chunk": [], "whole call": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for i, _ in enumerate(pipe.continue_audio(prompt, 24000, seconds=args.seconds, seed=r, stream=True,
                                                  chunk_frames=args.chunk_frames)):  # fmt: skip
            if i < 2:
                rows[["prompt chunk", "first continuation chunk"][i]].append(time.perf_counter() - t0)
        rows["whole call"].append(time.perf_counter() - t0)
    print(f"{args.seconds} s continuation of a 1 s prompt, chunks of {args.chunk_frames} frames "
          f"({args.chunk_frames / 75 * 1000:.0f} ms), {torch.get_num_threads()} thread(s)")  # fmt: skip
    print("| event | seconds after the call (median) |")
    print("|---|---:|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
