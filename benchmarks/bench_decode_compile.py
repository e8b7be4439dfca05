#!/usr/bin/env python
"""One-position decode on CPU: ``WhisperGPT.step`` eager vs ``torch.compile``d.

    python benchmarks/bench_decode_compile.py                       # D=256 L=4 delay K=2, B 1 and 8
    python benchmarks/bench_decode_compile.py --impls eager --label old-plan   # another checkout
    python benchmarks/bench_decode_compile.py --out runs/benchmarks/decode_compile.json

Each run: a fresh cache, ``--steps`` calls of ``model.step`` under ``inference_mode`` (random
tokens and mel, the hybrid ``concat`` model). ``ms/step`` is the median over ``--repeats`` runs
after one warm-up run; ``warmup_s`` is that first run (for ``compile``: tracing + codegen).
Run it with ``PYTHONPATH`` pointing at another checkout to time that checkout's decode path.

Measured (torch 2.x, 2 shared CPU cores, 1 thread): ``compile`` recompiles for every new
position (the KV write index ``cache.steps`` is specialised), hits dynamo's recompile limit (8)
after ~11 min and then runs eager with guard overhead: slower than eager. So the eager step
(``FastLinear`` copies on CPU) stays; see the report in the commit log for the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def build_model(d_model: int, n_layers: int, codebooks: int):
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=codebooks, codebook_size=1024, n_mels=80, pattern="delay", fusion="concat",
        d_model=d_model, n_layers=n_layers, n_heads=4, mel_dim=32, mel_layers=2, mel_heads=2, context=256,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def decode_run(model, step_fn, batch: int, steps: int) -> float:
    """Seconds for ``steps`` one-position calls from an empty cache."""
    c = model.config
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, c.codebook_size, (steps, batch, model.num_input_codebooks), generator=g)
    mel = torch.randn(steps, batch, c.n_mels, generator=g)
    cache = model.new_cache(batch, steps)
    first = 1 + c.mel_lag
    t0 = time.perf_counter()
    for p in range(steps):
        step_fn(toks[p], mel[p] if p >= first else None, cache)
    return time.perf_counter() - t0


def bench(impl: str, batch: int, steps: int, repeats: int, d_model: int, n_layers: int, k: int) -> dict:
    model = build_model(d_model, n_layers, k)
    fn = model.step
    if impl == "compile":
        torch._dynamo.reset()
        fn = torch.compile(model.step, dynamic=True)
    with torch.inference_mode():
        warm = decode_run(model, fn, batch, steps)
        times = [decode_run(model, fn, batch, steps) for _ in range(repeats)]
    ms = 1e3 * statistics.median(times) / steps
    return dict(impl=impl, batch=batch, steps=steps, ms_per_step=ms, warmup_s=warm)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impls", default="eager,compile", help="comma list of eager, compile")
    ap.add_argument("--label", default="", help="prefix for the impl names (e.g. the checkout timed)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--codebooks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="runs/benchmarks/decode_compile.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'impl':<22}{'batch':>6}{'ms/step':>10}{'warmup s':>10}")
    for impl in args.impls.split(","):
        if impl not in ("eager", "compile"):
            raise ValueError(f"unknown impl {impl!r}: expected eager or compile")
        for batch in (int(b) for b in args.batches.split(",")):
            row = bench(impl, batch, args.steps, args.repeats, args.d_model, args.layers, args.codebooks)
            row["impl"] = f"{args.label}{'-' if args.label else ''}{impl}"
            rows.append(row)
            print(
                f"{row['impl']:<22}{batch:>6}{row['ms_per_step']:>10.3f}{row['warmup_s']:>10.2f}", flush=True
            )
    meta = dict(
        torch=torch.__version__, threads=torch.get_num_threads(), d_model=args.d_model,
        layers=args.layers, codebooks=args.codebooks, pattern="delay", fusion="concat",
    )  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
