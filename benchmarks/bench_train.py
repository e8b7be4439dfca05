"""Training throughput: WhisperGPT (token-only and hybrid) vs transformers' ``MusicgenForCausalLM``.

Both sides get equal width/depth/heads/codebooks/vocab (``Size``), the same batch of random codes
laid out with MusicGen's delay pattern (``P = T + K - 1`` positions), the same dtype (fp32 on CPU,
bf16 autocast over fp32 weights on CUDA, as ``whispergpt train`` does) and the same optimizer
(AdamW; ``fused=True`` on CUDA). One timed step = forward + loss + backward + optimizer step +
zero_grad. The models are timed round-robin within each repeat, so that a change in machine load
hits all of them; a ratio is the median over repeats of the per-repeat ratio.

``run_trainer_benchmark`` times the real loop (``Trainer.run`` on a small prepared dataset) next
to that bare step: ``python benchmarks/bench_train.py --size quick|cpu|gpu``.

Also the shared helpers of the benchmark scripts (``Size``, timing, peaks, FLOP counting); every
benchmark returns flat ``dict`` rows that ``run.py`` prints as markdown and writes to JSON.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from whispergpt.models.flops import matmul_params, train_flops_per_step  # noqa: F401 (used here and by tests)

# Dense bf16 tensor-core peaks (no 2:4 sparsity), FLOP/s, from the vendors' data sheets. MFU on any
# other GPU is reported as null rather than guessed.
BF16_PEAK_FLOPS: dict[str, float] = {
    "H100": 989e12,  # H100 SXM5; the PCIe card is lower (756e12), we do not tell them apart
    "H200": 989e12,
    "A100": 312e12,
}


@dataclass
class Size:
    """One model/batch size used on both sides of a comparison (shape letters as in ARCHITECTURE)."""

    name: str
    d_model: int  # D
    n_layers: int  # L
    n_heads: int  # H
    num_codebooks: int  # K
    codebook_size: int  # V
    frames: int  # T per training crop
    batch: int  # B
    n_mels: int = 80  # M
    mel_dim: int = 32
    mel_heads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def bf16_peak(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_FLOPS.items():
        if key in name:
            return peak
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (device synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak allocated CUDA memory since the last reset, MiB; None on CPU (no per-model allocator stats)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    """Bytes held between steps: parameters (+ AdamW moments when ``opt`` is given)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    if opt is not None:
        for st in opt.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return n


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------
TRAIN_SIZES: dict[str, Size] = {
    # CI smoke test: seconds on one core
    "quick": Size(
        "quick", d_model=64, n_layers=2, n_heads=4, num_codebooks=4, codebook_size=256, frames=48, batch=2
    ),
    # CPU default: a few minutes on 2 cores
    "cpu": Size(
        "cpu", d_model=256, n_layers=4, n_heads=4, num_codebooks=8, codebook_size=1024, frames=192, batch=4
    ),
    # GPU: configs/gpt_100m.yaml's dims (~110M parameters hybrid), 20 s crops (1500 frames), the
    # MFU target configuration
    "gpu": Size(
        "gpu",
        d_model=768,
        n_layers=14,
        n_heads=12,
        num_codebooks=8,
        codebook_size=1024,
        frames=1500,
        batch=8,
        mel_dim=128,
        mel_heads=4,
    ),
}


# --------------------------------------------------------------------------------------------
# Models and their training steps
# --------------------------------------------------------------------------------------------
def build_ours(size: Size, fusion: str) -> nn.Module:
    """WhisperGPT with MusicGen's delay pattern; ``fusion="none"`` is token-only, ``concat`` hybrid."""
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    cfg = WhisperGPTConfig(
        num_codebooks=size.num_codebooks,
        codebook_size=size.codebook_size,
        n_mels=size.n_mels,
        pattern="delay",
        fusion=fusion,
        d_model=size.d_model,
        n_layers=size.n_layers,
        n_heads=size.n_heads,
        mlp_ratio=4.0,
        dropout=0.0,
        context=size.frames,
        mel_dim=size.mel_dim,
        mel_heads=size.mel_heads,
    )
    return WhisperGPT(cfg)


def build_musicgen(size: Size, max_positions: int) -> nn.Module:
    """``MusicgenForCausalLM`` with the same D/L/H/K/V, ffn 4D, no dropout, random weights (offline)."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    cfg = MusicgenDecoderConfig(
        vocab_size=size.codebook_size,
        hidden_size=size.d_model,
        num_hidden_layers=size.n_layers,
        num_attention_heads=size.n_heads,
        ffn_dim=4 * size.d_model,
        num_codebooks=size.num_codebooks,
        max_position_embeddings=max_positions,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=size.codebook_size,
        bos_token_id=size.codebook_size,
    )
    return MusicgenForCausalLM(cfg)


def random_batch(size: Size, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes ``(B, K, T)`` and mel ``(B, M, T)`` (throughput does not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, size.codebook_size, (size.batch, size.num_codebooks, size.frames), generator=g)
    mel = torch.randn(size.batch, size.n_mels, size.frames, generator=g)
    return codes.to(device), mel.to(device)


def musicgen_inputs(codes: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Delay-pattern inputs/labels as MusicGen trains on them: ``input_ids (B*K, P)``, ``labels (B, P, K)``.

    Labels are the tokens placed at each step (pad where the pattern places nothing: ignored by
    its loss), inputs the same shifted right by one with BOS first.
    """
    from whispergpt.models import patterns as pt

    B, K, _ = codes.shape
    placed = pt.build_step_tokens(codes, "delay", pad_id)  # (B, K, P)
    inputs = torch.cat([placed.new_full((B, K, 1), pad_id), placed[:, :, :-1]], dim=2)
    return inputs.reshape(B * K, -1), placed.transpose(1, 2).contiguous()


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # Same settings on both sides; fused kernels where they exist (CUDA).
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")


def ours_step(model: nn.Module, opt, codes, mel, amp: bool) -> Callable[[], None]:
    from whispergpt.models import nll_per_codebook

    def step() -> None:
        with torch.autocast(codes.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(codes, mel).logits  # (B, K, T, V)
        nll_sum, count = nll_per_codebook(logits, codes)
        (nll_sum.sum() / count.sum()).float().backward()  # as whispergpt.training does
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def musicgen_step(model: nn.Module, opt, input_ids, labels, amp: bool) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def run_train_benchmark(
    size: Size,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    steps: int = 2,
    warmup: int = 1,
    bf16: bool | None = None,
    compile: bool = False,
    models: tuple[str, ...] = ("musicgen", "ours-token", "ours-hybrid"),
) -> list[dict]:
    """Training tokens/s (tokens = B * K * T codec tokens per step) of each model; rows for ``run.py``.

    ``bf16=None`` means bf16 autocast on CUDA, fp32 on CPU. ``vs_musicgen`` is the median over
    repeats of (MusicGen step time / this model's step time) in the same repeat.
    """
    device = torch.device(device)
    if bf16 is None:
        bf16 = device.type == "cuda"
    if repeats < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, steps >= 1, warmup >= 0; got {repeats}, {steps}, {warmup}")
    unknown = set(models) - {"musicgen", "ours-token", "ours-hybrid"}
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; expected musicgen, ours-token, ours-hybrid")
    K, V, B, T = size.num_codebooks, size.codebook_size, size.batch, size.frames
    P = T + K - 1  # delay-pattern positions per sequence, the same on both sides
    codes, mel = random_batch(size, device)
    torch.manual_seed(0)

    entries: dict[str, dict] = {}
    for name in models:
        if name == "musicgen":
            model = build_musicgen(size, max_positions=P).to(device)
            ids, labels = musicgen_inputs(codes, pad_id=V)
            stacks = [(size.n_layers, size.d_model)]
        else:
            fusion = "none" if name == "ours-token" else "concat"
            model = build_ours(size, fusion).to(device)
            stacks = [(size.n_layers, size.d_model)]
            if fusion != "none":
                stacks.append((model.config.mel_layers, model.config.mel_dim))
        model.train()
        opt = make_optimizer(model, device)
        run_model = torch.compile(model) if compile else model
        if name == "musicgen":
            fn = musicgen_step(run_model, opt, ids, labels, bf16)
        else:
            fn = ours_step(run_model, opt, codes, None if name == "ours-token" else mel, bf16)
        entries[name] = dict(
            fn=fn,
            model=model,
            opt=opt,
            params=sum(p.numel() for p in model.parameters()),
            flops=train_flops_per_step(matmul_params(model), stacks, B, P),
            flops_causal=train_flops_per_step(matmul_params(model), stacks, B, P, causal=True),
            times=[],
            peaks=[],
        )
    for e in entries.values():  # warm-up (allocator, autotuning, compilation) and AdamW state
        for _ in range(max(1, warmup)):
            e["fn"]()
    names = list(entries)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            e = entries[name]
            sync(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            reset_peak_memory(device)
            e["times"].append(time_calls(e["fn"], device, steps) / steps)
            peak = peak_memory_mib(device)
            if peak is not None:
                # this model's weights + AdamW state + the step's transient peak (others excluded)
                e["peaks"].append(peak - before / 2**20 + state_bytes(e["model"], e["opt"]) / 2**20)

    peak_flops = bf16_peak(device) if bf16 else None
    base = entries.get("musicgen")
    rows = []
    for name, e in entries.items():
        t = median(e["times"])
        tokens = B * K * T
        row = dict(
            bench="train",
            model=name,
            size=size.name,
            params_M=round(e["params"] / 1e6, 2),
            batch=B,
            frames=T,
            positions=P,
            dtype="bf16-autocast" if bf16 else "fp32",
            compile=compile,
            step_ms=round(1e3 * t, 2),
            tokens_per_s=round(tokens / t, 1),
            vs_musicgen=None,
            peak_mem_MiB=round(max(e["peaks"]), 1) if e["peaks"] else None,
            model_TFLOPs=float(f"{e['flops'] / t / 1e12:.4g}"),
            mfu=round(e["flops"] / t / peak_flops, 4) if peak_flops else None,  # PaLM: no causal halving
            mfu_causal=round(e["flops_causal"] / t / peak_flops, 4) if peak_flops else None,
            repeats=repeats,
            steps_per_repeat=steps,
            step_s_all=[round(x, 5) for x in e["times"]],
        )
        if base is not None:
            row["vs_musicgen"] = round(median([bt / mt for bt, mt in zip(base["times"], e["times"])]), 3)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# The real trainer loop (issue 22 item 7): Trainer.run on a small prepared dataset
# --------------------------------------------------------------------------------------------
def run_trainer_benchmark(
    size: Size, steps: int = 6, warmup: int = 2, workdir: str | None = None
) -> list[dict]:
    """Tokens/s of ``Trainer.run`` (on CUDA when available, as ``whispergpt train``) (data loader, accumulation, clipping, the loss check, AdamW,
    scheduler, logging) next to the bare step of ``run_train_benchmark`` at the same size.

    The dataset is written in format 2 (time-major, float16 mel) by ``bench_loader.write_dataset``
    with random values, enough audio for distinct crops; the run logs every step, never evaluates
    and checkpoints once at the end (not timed: the loop's ``tokens_per_s`` in metrics.jsonl
    covers the step itself, and ``wall_s`` the whole ``run`` with start-up and the checkpoint).
    ``vs_bare_step`` is the trainer's tokens/s over the bare step's: what the loop costs on top.
    """
    import json
    import tempfile
    from pathlib import Path

    from bench_loader import write_dataset

    from whispergpt.config import resolve_config
    from whispergpt.training.trainer import Trainer

    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1, warmup >= 0; got {steps}, {warmup}")
    K, T, B = size.num_codebooks, size.frames, size.batch
    hours = max(60.0, 4 * T * B / 75) / 3600  # >= 1 min of audio, >= 4 batches of distinct frames
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, "format2-fp16", hours, K, size.n_mels, shard_seconds=1800.0, V=size.codebook_size)
        model = dict(
            num_codebooks=K, codebook_size=size.codebook_size, n_mels=size.n_mels, pattern="delay",
            fusion="concat", d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
            context=T, mel_dim=size.mel_dim, mel_heads=size.mel_heads, dropout=0.0,
        )  # fmt: skip
        train = dict(max_steps=warmup + steps, batch_size=B, warmup_steps=1, log_every=1, eval_every=0,
                     eval_batches=0, save_every=10**9, keep_last=1)  # fmt: skip
        cfg = resolve_config(
            dict(
                out_dir=str(Path(tmp) / "run"),
                model=model,
                train=train,
                data=dict(dir=str(data)),
                logging=dict(wandb=False, progress=False),
            )  # fmt: skip
        )
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        try:
            trainer.run()
        finally:
            trainer.acc.end_training()
        wall = time.perf_counter() - t0
        logged = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        tps = [r["tokens_per_s"] for r in logged if "tokens_per_s" in r and r["step"] > warmup]
        device = trainer.acc.device
    bare = run_train_benchmark(size, device=device, repeats=3, steps=2, warmup=1, models=("ours-hybrid",))[0]
    loop = median(tps)
    return [
        dict(bench="train-loop", model="ours-hybrid", size=size.name, what="bare step (run_train_benchmark)",
             batch=B, frames=T, tokens_per_s=bare["tokens_per_s"], vs_bare_step=1.0, wall_s=None, steps=None),
        dict(bench="train-loop", model="ours-hybrid", size=size.name, what=f"Trainer.run on {device}",
             batch=B, frames=T, tokens_per_s=round(loop, 1), vs_bare_step=round(loop / bare["tokens_per_s"], 3),
             wall_s=round(wall, 2), steps=warmup + steps, tokens_per_s_all=[round(x, 1) for x in tps]),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_train.py [--size quick|cpu|gpu] [--steps N]``: the trainer loop."""
    import argparse
    import json
    import sys
    from pathlib import Path

    p = argparse.ArgumentParser(description="Trainer.run tokens/s vs the bare training step.")
    p.add_argument("--size", choices=list(TRAIN_SIZES), default="quick")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = run_trainer_benchmark(TRAIN_SIZES[args.size], args.steps, args.warmup)
    load_after = os.getloadavg()
    cols = ["what", "size", "batch", "frames", "tokens_per_s", "vs_bare_step", "wall_s", "steps"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("–" if r[c] is None else str(r[c]) for c in cols) + " |")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"\n{device_name(device)}; load average before {load_before}, after "
          f"{tuple(round(x, 2) for x in load_after)}")  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        meta = dict(command=" ".join(sys.argv), torch=torch.__version__, load_before=load_before,
                    load_after=load_after, device=device_name(device))  # fmt: skip
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
