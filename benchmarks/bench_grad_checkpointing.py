"""Gradient checkpointing (``train.grad_checkpointing``): activation bytes kept for backward and step
time, off vs on, at the quickstart recipe's size (or ``--d-model`` / ``--layers`` / ``--frames``).

    python benchmarks/bench_grad_checkpointing.py [--batch 8] [--frames 225] [--repeats 3]

Saved bytes are counted with ``torch.autograd.graph.saved_tensors_hooks`` (what autograd keeps
between forward and backward: the activation memory on any device); CUDA also reports the
allocator's peak. The losses and gradients are checked equal in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models.blocks import set_grad_checkpointing


def step(model, codes, mel, device):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nll, count = model.nll(codes, mel)
    (nll.sum() / count.sum()).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return saved[0] / 2**20, time.perf_counter() - t0, peak, grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=225)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, pattern="delay", d_model=args.d_model,
                           n_layers=args.layers, n_heads=4, context=args.frames, mel_dim=32, mel_layers=1)  # fmt: skip
    model = WhisperGPT(cfg).to(dev).train()
    codes = torch.randint(0, 1024, (args.batch, 2, args.frames), device=dev)
    mel = torch.randn(args.batch, 80, args.frames, device=dev)
    rows = {}
    for on in (False, True):
        set_grad_checkpointing(model, on)
        runs = [step(model, codes, mel, dev) for _ in range(args.repeats)]
        rows[on] = (runs[-1][0], sorted(r[1] for r in runs)[len(runs) // 2], runs[-1][2], runs[-1][3])
    same = torch.equal(rows[False][3], rows[True][3])
    print(f"{model.num_parameters():,} parameters, batch {args.batch} x {args.frames} frames on {dev}; "
          f"gradients equal: {same}")  # fmt: skip
    print("| grad_checkpointing | saved activations (MiB) | step (s, median) | CUDA peak (MiB) |")
    print("|---|---:|---:|---:|")
    for on, (mib, sec, peak, _) in rows.items():
        print(f"| {str(on).lower()} | {mib:.1f} | {sec:.3f} | {'-' if peak is None else f'{peak:.0f}'} |")


if __name__ == "__main__":
    main()
