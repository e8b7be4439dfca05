#!/usr/bin/env python
"""Decode weights in fp32, bf16 and int8 (``sample --decode-dtype``): quality on a trained
checkpoint and the speed of one sampling step (CPU).

    python benchmarks/bench_decode_dtype.py --checkpoint runs/quickstart/train/hybrid/final
    python benchmarks/bench_decode_dtype.py --checkpoint DIR --data DIR1,DIR2 --max-crops 32
    python benchmarks/bench_decode_dtype.py --speed-only --sizes cpu,gpt_100m --clock cpu

Quality: the checkpoint's val split (the training record's datasets unless ``--data``), cut into
non-overlapping ``context``-frame crops with the mel the model was trained on; every crop is
stepped position by position (``model.step``, teacher forcing) once per decode dtype. Reported:
top-1 agreement of each dtype's frame logits with fp32's over every scored token, and the val NLL
(nats/token, ``nll_per_codebook``) of each, with its difference to fp32. Targets (issue 21):
agreement >= 95 %, |NLL delta| <= 0.01 nats.

Speed: ms per ``model.step_unchecked`` (the sampler's step, batch 1 and 8, hybrid ``concat`` delay model,
random weights) per dtype, paired round-robin rounds; ``vs_fp32`` = median of fp32 time / this
time within a round, with its interquartile range. Sizes: the checkpoint's dims, ``cpu`` (the
sampling benchmark's D256 L4) and ``gpt_100m`` (configs/gpt_100m.yaml: D768 L14, K=8), where a
batch-1 step reads ~400 MB of fp32 weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPES = ("fp32", "bf16", "int8")
SPEED_SIZES = {
    "cpu": dict(num_codebooks=2, d_model=256, n_layers=4, n_heads=4, mel_dim=32, mel_layers=2, mel_heads=2),
    "gpt_100m": dict(num_codebooks=8, d_model=768, n_layers=14, n_heads=12, mel_dim=128, mel_layers=2,
                     mel_heads=4),
}  # fmt: skip


@torch.inference_mode()
def step_logits(model, tokens: torch.Tensor, step_mel: torch.Tensor, decode_dtype: str) -> torch.Tensor:
    """Teacher-forced step logits ``(B, Ks, P, V)`` through ``model.step`` with ``decode_dtype`` weights."""
    from whispergpt.models import patterns as pt

    c = model.config
    P = tokens.shape[-1]
    cache = model.new_cache(tokens.shape[0], P, decode_dtype=decode_dtype)
    out = []
    for p in range(P):
        m = step_mel[:, :, p] if c.fusion != "none" and pt.mel_frame_at_step(c.pattern, c.num_codebooks, p) >= 0 else None  # fmt: skip
        out.append(model.step(tokens[:, :, p], m, cache).float())
    return torch.stack(out, dim=2)


def val_crops(
    model, data: list[str], max_crops: int, mel_source: str
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Non-overlapping ``context``-frame val crops ``(N, K, T)``, ``(N, M, T)`` with the mel the
    model was trained on (``truth`` when the data has no decoded mel)."""
    from whispergpt.data import PreparedDataset

    ctx = model.config.context
    try:
        ds = PreparedDataset(data, "val", mel_source=mel_source)
    except ValueError:  # prepared without the decoded mel
        mel_source = "truth"
        ds = PreparedDataset(data, "val", mel_source=mel_source)
    codes, mels = [], []
    for i, f in enumerate(ds.files):
        for start in range(0, f["frames"] - ctx + 1, ctx):
            c, m = ds.crop(i, start, ctx)
            codes.append(c)
            mels.append(m)
    if not codes:
        raise ValueError(f"no val file of {data} holds {ctx} frames")
    step = max(1, len(codes) // max_crops)  # spread over the files when there are more crops
    codes, mels = codes[::step][:max_crops], mels[::step][:max_crops]
    return torch.stack(codes), torch.stack(mels), mel_source


def quality(checkpoint: str, data: list[str] | None, max_crops: int, batch: int) -> dict:
    from whispergpt.models import WhisperGPT, nll_per_codebook
    from whispergpt.models import patterns as pt
    from whispergpt.training.record import read_training_record, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = WhisperGPT.from_pretrained(ckpt).eval()
    record = read_training_record(ckpt) or {}
    data = data or record.get("data_dirs")
    if not data:
        raise ValueError("the checkpoint has no training record naming its data: pass --data")
    codes, mel, src = val_crops(model, data, max_crops, record.get("mel_source", "truth"))
    c = model.config
    logits = {d: [] for d in DTYPES}
    t0 = time.perf_counter()
    for i in range(0, codes.shape[0], batch):
        cb, mb = codes[i : i + batch], mel[i : i + batch]
        tokens, step_mel = pt.build_inputs(cb, mb if c.fusion != "none" else None, c.pattern, model.pad_id)
        if step_mel is None:
            step_mel = torch.zeros(cb.shape[0], c.n_mels, tokens.shape[-1])
        for d in DTYPES:
            logits[d].append(
                pt.revert_logits(step_logits(model, tokens, step_mel, d), c.pattern, cb.shape[-1])
            )
    frame = {d: torch.cat(v) for d, v in logits.items()}  # (N, Ks, T, V)
    with torch.inference_mode():
        full = model(codes, mel if c.fusion != "none" else None).logits.float()
    ref_top1 = frame["fp32"].argmax(-1)
    rows = []
    for d in DTYPES:
        s, n = nll_per_codebook(frame[d], codes)
        nll = float(s.sum() / n.sum())
        rows.append(dict(decode_dtype=d, top1_agreement=float((frame[d].argmax(-1) == ref_top1).float().mean()),
                         val_nll=nll, tokens=int(n.sum())))  # fmt: skip
    for r in rows:
        r["nll_delta"] = r["val_nll"] - rows[0]["val_nll"]
    s, n = nll_per_codebook(full, codes)
    return dict(
        checkpoint=str(ckpt), data=[str(x) for x in data], mel_source=src, crops=int(codes.shape[0]),
        frames_per_crop=int(codes.shape[-1]), forward_nll=float(s.sum() / n.sum()), rows=rows,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def speed(dims: dict, batches: tuple[int, ...], steps: int, rounds: int, clock: str) -> list[dict]:
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    timer = time.perf_counter if clock == "wall" else time.process_time
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        codebook_size=1024, n_mels=80, pattern="delay", fusion="concat", context=steps + 8, **dims
    )
    model = WhisperGPT(cfg).eval()
    rows = []
    for B in batches:
        g = torch.Generator().manual_seed(0)
        toks = torch.randint(0, 1024, (steps, B, cfg.num_codebooks), generator=g)
        mel = torch.randn(steps, B, 80, generator=g)
        times: dict[str, list[float]] = {d: [] for d in DTYPES}
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0 warms up (builds each dtype's weight copies)
                for d in DTYPES[r % 3 :] + DTYPES[: r % 3]:
                    cache = model.new_cache(B, steps, decode_dtype=d)
                    t0 = timer()
                    for p in range(steps):
                        model.step_unchecked(toks[p], mel[p], cache)
                    if r:
                        times[d].append((timer() - t0) / steps * 1e3)
        for d in DTYPES:
            ratios = sorted(f / x for f, x in zip(times["fp32"], times[d]))
            q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
            rows.append(dict(d_model=cfg.d_model, n_layers=cfg.n_layers, K=cfg.num_codebooks, batch=B,
                             decode_dtype=d, ms_per_step=round(statistics.median(times[d]), 3),
                             vs_fp32=round(statistics.median(ratios), 3), vs_fp32_iqr=f"{q[0]:.2f}-{q[2]:.2f}",
                             params_M=round(model.num_parameters() / 1e6, 1)))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_decode_dtype.py", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--checkpoint", default=None, help="trained model dir or run out_dir (quality + its dims)"
    )
    ap.add_argument(
        "--data", default=None, help="comma-separated prepared dirs (default: the training record's)"
    )
    ap.add_argument(
        "--max-crops", type=int, default=32, help="val crops of `context` frames (spread over files)"
    )
    ap.add_argument("--batch", type=int, default=16, help="crops stepped together")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument(
        "--sizes",
        default="cpu,gpt_100m",
        help=f"speed sizes: {', '.join(SPEED_SIZES)} (and the checkpoint's)",
    )
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=40, help="steps per timed run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/benchmarks/decode_dtype.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict = dict(meta=dict(torch=torch.__version__, threads=args.threads, clock=args.clock,
                                  cpu_capability=torch.backends.cpu.get_cpu_capability(),
                                  command=" ".join(sys.argv), load_avg_start=os.getloadavg()[0]))  # fmt: skip
    if args.checkpoint and not args.speed_only:
        q = quality(args.checkpoint, args.data.split(",") if args.data else None, args.max_crops, args.batch)
        result["quality"] = q
        print(f"quality: {q['checkpoint']}, {q['crops']} val crops x {q['frames_per_crop']} frames, mel {q['mel_source']}; "
              f"forward NLL {q['forward_nll']:.4f}")  # fmt: skip
        print("| decode_dtype | top1_agreement | val_nll | nll_delta |\n|---|---|---|---|")
        for r in q["rows"]:
            print(
                f"| {r['decode_dtype']} | {r['top1_agreement']:.4f} | {r['val_nll']:.4f} | {r['nll_delta']:+.4f} |"
            )
    sizes = [SPEED_SIZES[s] for s in args.sizes.split(",") if s]
    if args.checkpoint:
        from whispergpt.models import WhisperGPT
        from whispergpt.training.record import resolve_checkpoint

        c = WhisperGPT.from_pretrained(resolve_checkpoint(args.checkpoint)).config
        keys = ("num_codebooks", "d_model", "n_layers", "n_heads", "mel_dim", "mel_layers", "mel_heads")
        sizes.insert(0, {k: getattr(c, k) for k in keys})
    rows = []
    for dims in sizes:
        rows += speed(
            dims, tuple(int(b) for b in args.batches.split(",")), args.steps, args.rounds, args.clock
        )
    result["speed"] = rows
    result["meta"]["load_avg_end"] = os.getloadavg()[0]
    print(f"\nspeed ({args.clock} clock, load average {result['meta']['load_avg_start']:.1f}-"
          f"{result['meta']['load_avg_end']:.1f}):")  # fmt: skip
    print(
        "| d_model | n_layers | K | batch | decode_dtype | ms_per_step | vs_fp32 | vs_fp32_iqr |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['d_model']} | {r['n_layers']} | {r['K']} | {r['batch']} | {r['decode_dtype']} | "
              f"{r['ms_per_step']} | {r['vs_fp32']} | {r['vs_fp32_iqr']} |")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
