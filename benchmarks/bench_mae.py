#!/usr/bin/env python
"""EnCodecMAE training throughput: input frames per second of a full training step.

    python benchmarks/bench_mae.py --quick                  # CI smoke size, seconds
    python benchmarks/bench_mae.py --threads 2              # CPU: the mae_quickstart.yaml size
    python benchmarks/bench_mae.py --device cuda            # GPU: mae_base.yaml (the paper's base), bf16

One step = ``EnCodecMAE(x, codes)`` (masking, encoder over the visible frames, decoder over all,
per-codebook loss) + backward + AdamW step + ``zero_grad``, as ``whispergpt train`` does: fp32 on
CPU, bf16 autocast over fp32 weights on CUDA. Masks come from the global RNG, as in training.
``tokens_per_s`` counts input frames (75 per second of audio; the trainer's ``tokens_per_s`` for
the mae task), ``audio_x_real_time`` = seconds of audio per second. Rows: the loss as trained
(masked and visible frames scored: heads on every frame) and ``masked-only`` (visible_weight=0:
heads on the masked frames only), timed round-robin so that load changes hit both; medians.

Model FLOPs (PaLM's formula, as bench_train.py): ``6 N_enc B Nv + 12 L D Nv^2 B`` for the encoder
(``Nv`` visible frames), ``6 N_dec B T + 12 Ld Dd T^2 B`` for the decoder, ``6 N_head B F`` for
the heads on ``F`` scored frames (``T`` or the masked count). Prints a markdown table and writes
JSON (+ the table as .md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_train import (  # noqa: E402
    bf16_peak,
    device_name,
    matmul_params,
    median,
    sync,
    time_calls,
    train_flops_per_step,
)


@dataclass
class MAESize:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    decoder_layers: int
    num_codebooks: int  # K
    codebook_size: int  # V
    frames: int  # T
    batch: int  # B
    in_dim: int = 80  # C
    mlp_ratio: float = 4.0


MAE_SIZES: dict[str, MAESize] = {
    "quick": MAESize("quick", 64, 2, 2, 1, num_codebooks=2, codebook_size=1024, frames=64, batch=4),
    # configs/mae_quickstart.yaml on the demo corpus (1.5 kbps: K=2)
    "cpu": MAESize("cpu", 128, 4, 4, 2, num_codebooks=2, codebook_size=1024, frames=225, batch=16),
    # configs/mae_base.yaml: the paper's base size, EnCodec 6 kbps targets, its 128-wide latent input
    "gpu": MAESize(
        "gpu",
        768,
        10,
        12,
        2,
        num_codebooks=8,
        codebook_size=1024,
        frames=300,
        batch=64,
        in_dim=128,
        mlp_ratio=5.333,
    ),
}
VARIANTS = {"mae": dict(masked_weight=0.9, visible_weight=0.1), "mae-masked-only": dict(masked_weight=1.0, visible_weight=0.0)}  # fmt: skip


def build(size: MAESize, **loss) -> torch.nn.Module:
    from whispergpt.models import EnCodecMAE, EnCodecMAEConfig

    cfg = EnCodecMAEConfig(
        in_dim=size.in_dim, num_codebooks=size.num_codebooks, codebook_size=size.codebook_size,
        n_layers=size.n_layers, d_model=size.d_model, n_heads=size.n_heads,
        decoder_layers=size.decoder_layers, mlp_ratio=size.mlp_ratio, context=size.frames, **loss,
    )  # fmt: skip
    return EnCodecMAE(cfg)


def step_flops(model: torch.nn.Module, size: MAESize) -> float:
    from whispergpt.models.encodecmae import masked_count

    c, B, T = model.config, size.batch, size.frames
    nm = masked_count(T, c.mask_ratio)
    enc = matmul_params(model.encoder) + matmul_params(model.inp)
    dec = matmul_params(model.decoder) + matmul_params(model.to_decoder)
    head = matmul_params(model.code_head)
    scored = T if c.visible_weight > 0 else nm
    return (
        train_flops_per_step(enc, [(c.n_layers, c.d_model)], B, T - nm)
        + train_flops_per_step(dec, [(c.decoder_layers, c.dec_dim)], B, T)
        + 6.0 * head * B * scored
    )


def run_mae_benchmark(
    size: MAESize, device: str | torch.device = "cpu", repeats: int = 3, steps: int = 2, warmup: int = 1
) -> list[dict]:
    device = torch.device(device)
    bf16 = device.type == "cuda"
    if repeats < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, steps >= 1, warmup >= 0; got {repeats}, {steps}, {warmup}")
    B, T, K = size.batch, size.frames, size.num_codebooks
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, size.in_dim, T, generator=g).to(device)
    codes = torch.randint(0, size.codebook_size, (B, K, T), generator=g).to(device)
    entries = {}
    for name, loss in VARIANTS.items():
        torch.manual_seed(0)
        model = build(size, **loss).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def fn(model=model, opt=opt) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                objective = model(x, codes)[0]
            objective.float().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        entries[name] = dict(fn=fn, params=model.num_parameters(), flops=step_flops(model, size), times=[])
    for e in entries.values():
        for _ in range(max(1, warmup)):
            e["fn"]()
    names = list(entries)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            entries[name]["times"].append(time_calls(entries[name]["fn"], device, steps) / steps)
    peak = bf16_peak(device) if bf16 else None
    rows = []
    for name, e in entries.items():
        t = median(e["times"])
        rows.append(
            dict(
                bench="mae",
                model=name,
                size=size.name,
                params_M=round(e["params"] / 1e6, 2),
                batch=B,
                frames=T,
                dtype="bf16-autocast" if bf16 else "fp32",
                step_ms=round(1e3 * t, 2),
                tokens_per_s=round(B * T / t, 1),
                audio_x_real_time=round(B * T / 75 / t, 2),
                model_TFLOPs=float(f"{e['flops'] / t / 1e12:.4g}"),
                mfu=round(e["flops"] / t / peak, 4) if peak else None,
                repeats=repeats,
                step_s_all=[round(v, 5) for v in e["times"]],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import run as bench_run  # the shared markdown table

    p = argparse.ArgumentParser(prog="python benchmarks/bench_mae.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke size")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick: 2)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default 2; gpu: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default runs/benchmarks/<timestamp>-mae.json)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(name)
    mode = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    repeats = args.repeats or (2 if args.quick else 5)
    steps = args.steps or (5 if mode == "gpu" else 1 if args.quick else 2)
    if repeats < 1 or steps < 1:
        print(f"--repeats and --steps must be >= 1, got {repeats}, {steps}", file=sys.stderr)
        return 2
    size = MAE_SIZES[mode]
    rows = run_mae_benchmark(size, device, repeats=repeats, steps=steps)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = dict(
        timestamp=dt.datetime.now().isoformat(timespec="seconds"),
        command="python benchmarks/bench_mae.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        mode=mode,
        device=device_name(device),
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
        load_avg_1min=load,
        size=asdict(size),
    )
    text = (
        f"## EnCodecMAE training throughput ({mode})\n\n{meta['device']}; torch {meta['torch']}; "
        f"1-min load average {load}\n\n{bench_run.markdown_table(rows)}\n"
    )
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = bench_run.write_outputs(
        args.out or Path("runs") / "benchmarks" / f"{stamp}-mae.json", dict(meta=meta, rows=rows), text
    )
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
