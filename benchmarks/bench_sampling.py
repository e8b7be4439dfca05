#!/usr/bin/env python
"""Sampling throughput: token-only (``fusion=none``) vs hybrid (``fusion=concat``, mel feedback loop).

    python benchmarks/bench_sampling.py --quick                  # CI smoke, < 30 s on CPU
    python benchmarks/bench_sampling.py                          # CPU sizes, ~1-2 min
    python benchmarks/bench_sampling.py --device cuda            # GPU sizes, full-size codec
    python benchmarks/bench_sampling.py --out runs/benchmarks/sampling.json

Both models have the same dims and the ``delay`` pattern; both run ``whispergpt.generate.generate``
(KV cache, top-k 250, same seed) without the final full decode, so the hybrid's extra time is the
mel branch plus the feedback loop (window decode + one mel frame per step). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench_train (MusicGen builder) when run as a script
    sys.path.insert(0, str(HERE))

SIZES: dict[str, dict] = {
    # model dims, frames generated per sample, codec ("tiny": Codec.random(); "full": EnCodec 24 kHz dims)
    "quick": dict(d_model=64, n_layers=2, n_heads=4, mel_dim=16, mel_layers=1, context=64, frames=16, codec="tiny"),
    "cpu": dict(d_model=256, n_layers=4, n_heads=4, mel_dim=32, mel_layers=2, context=256, frames=150, codec="tiny"),
    "gpu": dict(d_model=1024, n_layers=12, n_heads=16, mel_dim=32, mel_layers=2, context=1500, frames=750,
                codec="full"),
}  # fmt: skip


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _musicgen_generate(model, batch: int, frames: int, K: int, V: int) -> Callable[[], torch.Tensor]:
    """``MusicgenForCausalLM.generate`` of ``frames`` frames from the pad/start token, top-k 250."""
    dev = next(model.parameters()).device
    ids = torch.full((batch * K, 1), V, dtype=torch.long, device=dev)  # (B*K, 1): start token per codebook

    def run() -> torch.Tensor:
        out = model.generate(
            input_ids=ids, do_sample=True, top_k=250, temperature=1.0,
            max_new_tokens=frames + K - 1,  # delay pattern: P = T + K - 1 steps, as on our side
            pad_token_id=V, bos_token_id=V, decoder_start_token_id=V, num_return_sequences=1,
        )  # fmt: skip
        assert out.shape == (batch, K, frames), out.shape  # MusicGen reverts the delay pattern
        return out

    return run


def run_sampling_benchmark(
    mode: str | None = None,
    quick: bool = False,
    device="auto",
    repeats: int | None = None,
    batches: tuple[int, ...] = (1, 8),
    decode_window: int = 32,
    decoders: tuple[str, ...] | None = None,
    compile: bool = False,
    musicgen: bool = True,
) -> list[dict]:
    """One row per (model, batch): frames/s, real-time factor, ratio vs MusicGen, hybrid overhead.

    Models: ``musicgen`` (transformers ``MusicgenForCausalLM.generate``, same D/L/H/K/V, built
    offline), ``ours-token`` (``fusion=none``) and ``ours-hybrid`` (``fusion=concat``, mel feedback
    loop with the codec's ``decoders``); all sample with top-k 250, temperature 1, from nothing.
    ``frames_per_s`` = frames generated per sample / wall seconds of the call (prefill + loop; our
    final full decode is skipped, MusicGen has none), the same definition on every row, so the
    batch's throughput is ``batch * frames_per_s``; ``rtf`` = audio seconds of the whole batch per
    wall second. Each repeat times every model once, round-robin (order rotated per repeat) after a
    warm-up round; ``seconds`` is the median over repeats, ``vs_musicgen`` the median over repeats
    of (MusicGen time / this model's time) in the same repeat, ``overhead_pct`` (hybrid rows) the
    median of (hybrid time / token-only time - 1) * 100 in the same repeat.
    ``decoders``: feedback-loop decoders measured (default ``stream``, plus ``window`` outside quick).
    ``compile`` is accepted for ``run.py`` and ignored (sampling steps one position at a time).
    """
    from bench_train import Size, build_musicgen

    from whispergpt.audio import FRAME_RATE
    from whispergpt.codec import Codec
    from whispergpt.generate import generate
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    dev = _device(device)
    mode = "quick" if quick else (mode or ("gpu" if dev.type == "cuda" else "cpu"))
    size = dict(SIZES[mode])
    frames, codec_kind = size.pop("frames"), size.pop("codec")
    repeats = repeats or 3
    decoders = decoders or (("stream",) if mode == "quick" else ("stream", "window"))
    K, V = 2, 1024
    # Codec.random: random EnCodec weights at 1.5 kbps (K=2, V=1024); "tiny" = shrunk widths
    # (the cost of a decode step, not its output, is what is measured)
    codec = Codec.random(bandwidth=1.5, seed=0, tiny=codec_kind == "tiny").to(dev)
    codec_name = "Codec.random(tiny=True)" if codec_kind == "tiny" else "Codec.random (EnCodec 24 kHz dims)"
    models = {}
    for fusion in ("none", "concat"):
        torch.manual_seed(0)
        cfg = WhisperGPTConfig(num_codebooks=K, codebook_size=V, n_mels=80, pattern="delay", fusion=fusion,
                               mel_heads=2, **size)  # fmt: skip
        models[fusion] = WhisperGPT(cfg).to(dev).eval()
    mg = None
    if musicgen:
        torch.manual_seed(0)
        mg_size = Size(mode, d_model=size["d_model"], n_layers=size["n_layers"], n_heads=size["n_heads"],
                       num_codebooks=K, codebook_size=V, frames=frames, batch=1)  # fmt: skip
        mg = build_musicgen(mg_size, max_positions=frames + K).to(dev).eval()
    rows = []
    for batch in batches:
        calls: dict[str, Callable[[int], object]] = {}
        if mg is not None:
            run_mg = _musicgen_generate(mg, batch, frames, K, V)
            calls["musicgen"] = lambda seed, run_mg=run_mg: (torch.manual_seed(seed), run_mg())

        def ours(fusion: str, dec: str | None, batch: int = batch) -> Callable[[int], object]:
            return lambda seed: generate(
                models[fusion], codec, frames=frames, num_samples=batch,
                generator=torch.Generator(device=dev).manual_seed(seed), decoder=dec or "auto",
                decode_window=decode_window, decode_audio=False,
            )  # fmt: skip

        calls["ours-token"] = ours("none", None)
        for dec in decoders:
            calls[f"ours-hybrid/{dec}"] = ours("concat", dec)
        names = list(calls)
        times: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode():
            for r in range(repeats + 1):  # round 0 warms up; the order rotates per round
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    _sync(dev)
                    t0 = time.perf_counter()
                    calls[name](r)
                    _sync(dev)
                    if r > 0:
                        times[name].append(time.perf_counter() - t0)
        for name in names:
            t = statistics.median(times[name])
            dec = name.split("/")[1] if "/" in name else None
            rows.append(
                dict(
                    device=str(dev),
                    mode=mode,
                    model=name.split("/")[0],
                    d_model=size["d_model"],
                    n_layers=size["n_layers"],
                    codec="-"
                    if dec is None
                    else f"{codec_name}, {dec}" + (f" W={decode_window}" if dec == "window" else ""),
                    batch=batch,
                    frames=frames,
                    seconds=round(t, 4),
                    frames_per_s=round(frames / t, 1),
                    rtf=round(frames * batch / FRAME_RATE / t, 3),
                    vs_musicgen=None
                    if "musicgen" not in times
                    else round(statistics.median(m / x for m, x in zip(times["musicgen"], times[name])), 3),
                    overhead_pct=None
                    if dec is None
                    else round(
                        statistics.median(
                            (x / b - 1) * 100 for x, b in zip(times[name], times["ours-token"])
                        ),
                        1,
                    ),
                    repeats=repeats,
                    times_s=[round(x, 4) for x in times[name]],
                )
            )
    return rows


def markdown(rows: list[dict]) -> str:
    cols = [
        "device",
        "model",
        "d_model",
        "n_layers",
        "codec",
        "batch",
        "frames",
        "frames_per_s",
        "rtf",
        "vs_musicgen",
        "overhead_pct",
    ]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join("–" if row[c] is None else str(row[c]) for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_sampling.py", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="CI smoke sizes (< 30 s on CPU)")
    ap.add_argument(
        "--mode", choices=list(SIZES), default=None, help="size preset (default: gpu on CUDA, else cpu)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--decode-window", type=int, default=32)
    ap.add_argument(
        "--decoders", default=None, help="feedback-loop decoders, e.g. stream,window (default per mode)"
    )
    ap.add_argument("--no-musicgen", action="store_true", help="skip the MusicGen generate rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="runs/benchmarks/sampling.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_sampling_benchmark(
        mode=args.mode,
        quick=args.quick,
        device=args.device,
        repeats=args.repeats,
        batches=tuple(int(b) for b in args.batches.split(",")),
        decode_window=args.decode_window,
        decoders=tuple(args.decoders.split(",")) if args.decoders else None,
        musicgen=not args.no_musicgen,
    )
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), command=" ".join(sys.argv))
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
