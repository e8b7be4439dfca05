#!/usr/bin/env python
"""Pattern ``depth`` vs ``delay`` at equal parameters: sampling frames/s and training tokens/s.

    python benchmarks/bench_depth.py --quick                 # smoke, < 30 s on CPU
    python benchmarks/bench_depth.py                         # CPU sizes (K = 2 and 8), a few minutes
    python benchmarks/bench_depth.py --device cuda           # GPU sizes
    python benchmarks/bench_depth.py --out runs/benchmarks/depth.json

For each K and fusion (``none`` = token-only, ``concat`` = hybrid with the mel feedback loop) a
``delay`` model and a ``depth`` model are built with the same decoder dims; the depth model's
``depth_dim`` is chosen so that its parameter count is the closest to the delay model's (the
depth model has no temporal head, the depth transformer has K heads of its own). Rows:

- ``sampling``: ``whispergpt.inference.generate.generate`` from nothing, top-k 250, without the final full
  decode, at each batch size: ``frames_per_s`` per sample (the batch makes ``batch`` times as many),
  ``speedup`` = median over repeats of (delay time / this model's time) in the same repeat.
- ``train``: one forward + backward + AdamW step on random codes/mel (B, K, T): ``tokens_per_s``
  = B*K*T / seconds (every model scores K tokens per frame), ``speedup`` as above.
- ``depth-steps``: the K depth steps of one frame with the depth KV cache (what ``generate`` runs)
  vs re-running the growing sequence each codebook without a cache (``speedup`` vs the latter).

Each repeat times every model of a group once, round-robin (order rotated per repeat), after a
warm-up round; seconds are medians. The issue's goal: depth sampling >= 0.5x delay frames/s at
batch 1 on CPU. See benchmarks/README.md.
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

SIZES: dict[str, dict] = {
    # decoder dims; K values; frames sampled per sample; training batch and crop
    "quick": dict(d_model=64, n_layers=2, n_heads=4, mel_dim=16, mel_layers=1, context=64, depth_layers=1,
                  depth_heads=2, Ks=(2,), frames=8, train_batch=2, train_frames=16, codec_tiny=True),
    "cpu": dict(d_model=256, n_layers=4, n_heads=4, mel_dim=32, mel_layers=2, context=256, depth_layers=2,
                depth_heads=4, Ks=(2, 8), frames=150, train_batch=8, train_frames=256, codec_tiny=True),
    "gpu": dict(d_model=1024, n_layers=12, n_heads=16, mel_dim=32, mel_layers=2, context=1500, depth_layers=4,
                depth_heads=8, Ks=(8,), frames=750, train_batch=8, train_frames=1500, codec_tiny=False),
}  # fmt: skip
BANDWIDTH = {2: 1.5, 4: 3.0, 8: 6.0}  # EnCodec 24 kHz: K codebooks <- kbps


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def model_configs(size: dict, K: int, fusion: str, V: int = 1024) -> dict[str, object]:
    """``{"delay": cfg, "depth": cfg}`` with equal decoder dims; depth_dim matched on parameters."""
    from whispergpt.models import WhisperGPT, WhisperGPTConfig
    from whispergpt.models.depth import DepthTransformer

    dims = {k: size[k] for k in ("d_model", "n_layers", "n_heads", "mel_dim", "mel_layers", "context")}
    common = dict(num_codebooks=K, codebook_size=V, n_mels=80, fusion=fusion, mel_heads=2, **dims)
    delay = WhisperGPTConfig(pattern="delay", **common)

    with torch.device("meta"):  # no memory; then the depth module alone for each candidate width
        target = WhisperGPT(delay).num_parameters()
    temporal = target - K * V * delay.d_model  # a depth model is delay's, less its heads, + the depth module
    best = None
    for dd in range(2 * size["depth_heads"], size["d_model"] + 1, 2 * size["depth_heads"]):
        cfg = WhisperGPTConfig(
            pattern="depth", depth_layers=size["depth_layers"], depth_dim=dd, depth_heads=size["depth_heads"],
            **common,
        )  # fmt: skip
        with torch.device("meta"):
            n = temporal + sum(p.numel() for p in DepthTransformer(cfg).parameters())
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, cfg)
    return {"delay": delay, "depth": best[1]}


def _round_robin(calls: dict[str, Callable[[int], object]], repeats: int, dev) -> dict[str, list[float]]:
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(dev)
            t0 = time.perf_counter()
            calls[name](r)
            _sync(dev)
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return times


def _train_step(model, opt, codes, mel) -> Callable[[int], None]:
    from whispergpt.models import nll_per_codebook

    def run(_: int) -> None:
        nll, count = nll_per_codebook(model(codes, mel).logits, codes)
        (nll.sum() / count.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _depth_frame(model, batch: int, cached: bool, dev) -> Callable[[int], None]:
    """The K depth steps of one frame from a random temporal state: KV cache or recompute."""
    d, K = model.depth, model.config.num_codebooks
    h = torch.randn(batch, model.config.d_model, device=dev)
    tok = torch.zeros(batch, dtype=torch.long, device=dev)
    state = d.new_state(batch, dev, h.dtype)
    w = model._decode_weights()

    def with_cache(_: int) -> None:
        d.begin(h, state, w and w.depth)
        for _k in range(1, K):
            d.step(tok, state)

    def recompute(_: int) -> None:
        ctx = d._context(h, K)  # (B, K, Dd)
        xs = [ctx[:, 0]]
        for k in range(K):
            y = d.stack(torch.stack(xs, dim=1), None, 0)[:, -1]  # the whole prefix, every codebook
            torch.nn.functional.linear(y, d.head[k])
            if k + 1 < K:
                xs.append(ctx[:, k + 1] + d.emb(tok + d.emb_offsets[k]))

    return with_cache if cached else recompute


def _rows(
    times: dict[str, list[float]], per_call: float, unit: str, ref: str, models: dict, **fields
) -> list[dict]:
    """One row per timed name: median seconds, ``unit`` = per_call / seconds, speedup vs ``ref``."""
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        m = models[name.split("/")[0]]
        rows.append(dict(
            fields, model=name, params=m.num_parameters(),
            depth_dim=m.config.depth_dim if m.config.pattern == "depth" else None,
            depth_layers=m.config.depth_layers if m.config.pattern == "depth" else None,
            seconds=round(t, 4), **{unit: round(per_call / t, 1)},
            speedup=round(statistics.median(r / x for r, x in zip(times[ref], ts)), 3), speedup_vs=ref,
            repeats=len(ts),
        ))  # fmt: skip
    return rows


def _group(size: dict, codec, models: dict, batches, repeats: int, sections, dev, **fields) -> list[dict]:
    """Every section for one (K, fusion): ``models`` = {"delay": ..., "depth": ...}."""
    from whispergpt.inference.generate import generate

    rows = []
    if "sampling" in sections:
        for batch in batches:
            calls = {
                name: (
                    lambda seed, m=m, batch=batch: generate(
                        m,
                        codec,
                        frames=size["frames"],
                        num_samples=batch,
                        decode_audio=False,
                        generator=torch.Generator(device=dev).manual_seed(seed),
                    )
                )  # fmt: skip
                for name, m in models.items()
            }
            with torch.inference_mode():
                times = _round_robin(calls, repeats, dev)
            rows += _rows(
                times,
                size["frames"],
                "frames_per_s",
                "delay",
                models,
                section="sampling",
                batch=batch,
                **fields,
            )
    if "train" in sections:
        B, T, K = size["train_batch"], size["train_frames"], models["delay"].config.num_codebooks
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 1024, (B, K, T), generator=g).to(dev)
        mel = torch.randn(B, 80, T, generator=g).to(dev)
        calls = {}
        for name, m in models.items():
            m.train()
            calls[name] = _train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4), codes, mel)
        times = _round_robin(calls, repeats, dev)
        for m in models.values():
            m.eval()
        rows += _rows(times, B * K * T, "tokens_per_s", "delay", models, section="train", batch=B, **fields)
    if "depth-steps" in sections and fields["fusion"] == "none":  # the depth stack ignores the fusion
        for batch in batches:
            calls = {f"depth/{how}": _depth_frame(models["depth"], batch, how == "kv-cache", dev)
                     for how in ("kv-cache", "recompute")}  # fmt: skip
            twenty = {n: (lambda r, c=c: [c(r) for _ in range(20)]) for n, c in calls.items()}
            with torch.inference_mode():
                times = _round_robin(twenty, repeats, dev)
            rows += _rows(times, 20, "frames_per_s", "depth/recompute", models, section="depth-steps",
                          batch=batch, **fields)  # fmt: skip
    return rows


def run_depth_benchmark(
    mode: str | None = None,
    quick: bool = False,
    device="auto",
    repeats: int | None = None,
    batches: tuple[int, ...] = (1, 8),
    sections: tuple[str, ...] = ("sampling", "train", "depth-steps"),
    codebooks: tuple[int, ...] | None = None,
    fusions: tuple[str, ...] = ("none", "concat"),
    depth_layers: int | None = None,
) -> list[dict]:
    """Rows for every K of the size preset, fusion none and concat, and every section (module docstring)."""
    from whispergpt.codec import Codec
    from whispergpt.models import WhisperGPT

    dev = _device(device)
    mode = "quick" if quick else (mode or ("gpu" if dev.type == "cuda" else "cpu"))
    size = dict(SIZES[mode])
    if depth_layers is not None:
        size["depth_layers"] = depth_layers
    rows: list[dict] = []
    for K in codebooks or size["Ks"]:
        codec = None  # token-only sampling needs none
        if "concat" in fusions:
            codec = Codec.random(bandwidth=BANDWIDTH[K], seed=0, tiny=size["codec_tiny"]).to(dev)
            assert codec.num_codebooks == K, (codec.num_codebooks, K)
        for fusion in fusions:
            models = {}
            for name, cfg in model_configs(size, K, fusion).items():
                torch.manual_seed(0)
                models[name] = WhisperGPT(cfg).to(dev).eval()
            rows += _group(size, codec, models, batches, repeats or 3, sections, dev, device=str(dev), mode=mode,
                           K=K, fusion=fusion, d_model=size["d_model"], n_layers=size["n_layers"])  # fmt: skip
    return rows


COLS = ["device", "section", "K", "fusion", "model", "params", "depth_dim", "depth_layers", "batch", "frames_per_s",
        "tokens_per_s", "speedup", "speedup_vs"]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    for row in rows:
        out.append("| " + " | ".join("–" if row.get(c) is None else str(row[c]) for c in COLS) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_depth.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes (< 30 s on CPU)")
    ap.add_argument(
        "--mode", choices=list(SIZES), default=None, help="size preset (default: gpu on CUDA, else cpu)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batches", default="1,8", help="comma-separated sampling batch sizes")
    ap.add_argument("--sections", default="sampling,train,depth-steps")
    ap.add_argument("--codebooks", default=None, help="K values, e.g. 2,8 (default per mode)")
    ap.add_argument("--fusions", default="none,concat", help="none (token-only) and/or concat (hybrid)")
    ap.add_argument(
        "--depth-layers", type=int, default=None, help="depth transformer layers (default per mode)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="runs/benchmarks/depth.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.codebooks and any(int(k) not in BANDWIDTH for k in args.codebooks.split(",")):
        ap.error(f"--codebooks: each K must be one of {sorted(BANDWIDTH)} (EnCodec 1.5 / 3 / 6 kbps)")
    rows = run_depth_benchmark(
        mode=args.mode,
        quick=args.quick,
        device=args.device,
        repeats=args.repeats,
        batches=tuple(int(b) for b in args.batches.split(",")),
        sections=tuple(args.sections.split(",")),
        codebooks=tuple(int(k) for k in args.codebooks.split(",")) if args.codebooks else None,
        fusions=tuple(args.fusions.split(",")),
        depth_layers=args.depth_layers,
    )
    print(markdown(rows))
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
