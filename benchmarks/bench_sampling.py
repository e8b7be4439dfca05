#!/usr/bin/env python
"""Sampling throughput vs MusicGen, and the hybrid's feedback-loop overhead with realistic codecs.

    python benchmarks/bench_sampling.py --quick                       # CI smoke, tiny codec
    python benchmarks/bench_sampling.py --threads 1                   # CPU: shipped + full EnCodec codecs
    python benchmarks/bench_sampling.py --threads 1 --clock cpu       # a shared machine: process CPU time
    python benchmarks/bench_sampling.py --variants int8,static,compile --no-musicgen
    python benchmarks/bench_sampling.py --device cuda                 # GPU sizes

Rows: ``musicgen`` (transformers ``MusicgenForCausalLM.generate``), ``ours-token``
(``fusion=none``) and one ``ours-hybrid`` row per codec (``fusion=concat``, mel feedback loop with
the streaming decoder); ``--variants`` adds rows of ours with another step (``static``,
``compile``) or decode weights (``int8``, ``bf16``). Every round runs every row once, round-robin
(order rotated per round), after a warm-up round; rows without a variant run ``generate``'s
defaults (``decode_dtype="auto"``: int8 weights on CPU from the ``cpu`` size up, ``fp32`` is the
exact variant); ratios are taken within a round (paired) and
reported as the median with the interquartile range over rounds. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
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
    # model dims and frames generated per sample
    "quick": dict(d_model=64, n_layers=2, n_heads=4, mel_dim=16, mel_layers=1, context=64, frames=16),
    "cpu": dict(d_model=256, n_layers=4, n_heads=4, mel_dim=32, mel_layers=2, context=320, frames=300),
    "gpu": dict(d_model=1024, n_layers=12, n_heads=16, mel_dim=32, mel_layers=2, context=1500, frames=750),
}  # fmt: skip
# feedback-loop codecs per mode: "tiny" = Codec.random(tiny=True) (CI only), "shipped" = the codec
# in the package (what the quickstart and the offline default use), "full" = EnCodec 24 kHz dims
# (facebook/encodec_24khz's config, random weights: the cost does not depend on them)
CODECS = {"quick": ("tiny",), "cpu": ("shipped", "full"), "gpu": ("shipped", "full")}
ROUNDS = {"quick": 2, "cpu": 7, "gpu": 7}
# --variants: rows of ours with other generate options (each also gets its own token-only row)
VARIANTS: dict[str, dict] = {
    "static": dict(static=True),
    "compile": dict(compile=True),
    "fp32": dict(decode_dtype="fp32"),  # exact weights (the plain rows use the default, auto)
    "int8": dict(decode_dtype="int8"),
    "bf16": dict(decode_dtype="bf16"),
    "int8+compile": dict(decode_dtype="int8", compile=True),
    # the hybrid with model.mel_extra_lag=1, sequential (what "overlap" is compared with: the same
    # model) and with its decode on a worker thread during the next step (use --clock wall: process
    # CPU time sums both threads)
    "lag1": dict(overlap=False),
    "overlap": dict(overlap=True),
    # the hybrid reading the codec latent (data.mel_source: codec_latent): no decode
    "codec_latent": dict(),
    "codec_latent+fp32": dict(decode_dtype="fp32"),
}
# variants that are another hybrid model (same weights where the shapes agree): model overrides; their
# token-only reference is the plain ours-token row (the token-only model has no such option)
MODEL_VARIANTS: dict[str, dict] = {
    "lag1": dict(mel_extra_lag=1),
    "overlap": dict(mel_extra_lag=1),
    "codec_latent": dict(mel_input="codec_latent"),
    "codec_latent+fp32": dict(mel_input="codec_latent"),
}
# model variants whose generate options apply to the token-only model too: they get their own
# token-only row, the reference of their overhead (the others are compared with plain ours-token)
TOKEN_ROW_VARIANTS = ("codec_latent+fp32",)
K, V = 2, 1024  # 1.5 kbps


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def open_bench_codec(kind: str):
    """``(Codec, label)`` of a feedback-loop codec kind (see ``CODECS``), K=2 codebooks."""
    from whispergpt.codec import Codec
    from whispergpt.codec.codec import SHIPPED_CODEC_DIR

    if kind == "shipped":
        return Codec.from_pretrained(SHIPPED_CODEC_DIR, bandwidth=1.5), "shipped (whispergpt-small-24khz)"
    if kind == "full":
        return Codec.random(bandwidth=1.5, seed=0, tiny=False), "EnCodec 24 kHz dims (random)"
    if kind == "tiny":
        return Codec.random(bandwidth=1.5, seed=0, tiny=True), "Codec.random(tiny=True)"
    raise ValueError(f"unknown codec kind {kind!r}: expected one of tiny, shipped, full")


def load_baseline(path: str):
    """Another checkout's ``whispergpt`` package (the folder holding it, e.g. a ``git archive`` of an
    older commit), imported side by side as ``whispergpt_baseline``: its rows run in the same
    rounds as ours, so before/after ratios are paired too."""
    import importlib
    import importlib.util

    pkg = Path(path) / "whispergpt"
    # the generation loop's home: inference/ since the second restructure, the package root before
    gen = next((g for g in ("inference/generate", "generate") if (pkg / f"{g}.py").is_file()), None)
    if gen is None:
        raise ValueError(f"--baseline {path}: no whispergpt/inference/generate.py (or generate.py) there")
    spec = importlib.util.spec_from_file_location(
        "whispergpt_baseline", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["whispergpt_baseline"] = mod
    spec.loader.exec_module(mod)
    names = (gen.replace("/", "."), "models", "codec")
    return tuple(importlib.import_module(f"whispergpt_baseline.{n}") for n in names)


def _musicgen_generate(model, batch: int, frames: int) -> Callable[[], torch.Tensor]:
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


def paired(a: list[float], b: list[float], fn) -> dict:
    """``fn(a_i, b_i)`` over paired rounds -> median, interquartile range and min/max."""
    vals = sorted(fn(x, y) for x, y in zip(a, b))
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    return dict(median=statistics.median(vals), q1=q[0], q3=q[2], min=vals[0], max=vals[-1], n=len(vals))


def _spread(s: dict, digits: int) -> str:
    return f"{s['q1']:.{digits}f}-{s['q3']:.{digits}f}"


def run_sampling_benchmark(
    mode: str | None = None,
    quick: bool = False,
    device="auto",
    repeats: int | None = None,
    batches: tuple[int, ...] = (1, 8),
    decode_window: int = 32,
    decoders: tuple[str, ...] = ("stream",),
    compile: bool = False,
    musicgen: bool = True,
    codecs: tuple[str, ...] | None = None,
    variants: tuple[str, ...] = (),
    frames: int | None = None,
    clock: str = "wall",
    baseline: str | None = None,
) -> list[dict]:
    """One row per (model, codec, variant, batch); see the module docstring and benchmarks/README.md.

    ``frames_per_s`` = frames generated per sample / seconds of the call (prefill + loop; our final
    full decode is skipped, MusicGen has none); ``rtf`` = audio seconds of the batch per second.
    ``repeats`` = rounds. ``vs_musicgen`` = median over rounds of MusicGen's time / this row's;
    ``overhead_pct`` (hybrid rows) = median of (hybrid / token-only of the same variant - 1) x 100,
    ``extra_ms_per_frame`` = median of (hybrid - token-only) / frames; ``*_iqr`` their
    interquartile ranges. ``clock``: ``wall`` (perf_counter) or ``cpu`` (process CPU time: on a
    shared machine it leaves out the time other processes hold the cores; use it with 1 thread).
    ``compile`` (run.py --compile) adds the ``compile`` variant. ``baseline``: the folder of
    another checkout's ``whispergpt`` package (``load_baseline``): rows of variant ``baseline``
    run its ``generate`` on copies of the same models and codecs.
    """
    from bench_train import Size, build_musicgen

    from whispergpt.audio import FRAME_RATE
    from whispergpt.inference.generate import generate
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {clock!r}")
    timer = time.perf_counter if clock == "wall" else time.process_time
    dev = _device(device)
    mode = "quick" if quick else (mode or ("gpu" if dev.type == "cuda" else "cpu"))
    size = dict(SIZES[mode])
    frames = frames or size.pop("frames")
    size.pop("frames", None)
    rounds = repeats or ROUNDS[mode]
    variants = tuple(variants) + (("compile",) if compile and "compile" not in variants else ())
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}: expected some of {sorted(VARIANTS)}")
    opened = {kind: open_bench_codec(kind) for kind in (codecs or CODECS[mode])}
    for codec, _ in opened.values():
        codec.to(dev)
    models = {}
    for fusion in ("none", "concat"):
        torch.manual_seed(0)
        cfg = WhisperGPTConfig(num_codebooks=K, codebook_size=V, n_mels=80, pattern="delay", fusion=fusion,
                               mel_heads=2, **size)  # fmt: skip
        models[fusion] = WhisperGPT(cfg).to(dev).eval()

    def variant_model(variant: str, kind: str) -> WhisperGPT:
        """The hybrid of a MODEL_VARIANTS variant (codec_latent: n_mels = the codec's codebook width)."""
        over = dict(MODEL_VARIANTS[variant])
        if over.get("mel_input") == "codec_latent":
            over["n_mels"] = int(opened[kind][0].codebook_table(K).shape[-1])
        base = models["concat"]
        m = WhisperGPT(WhisperGPTConfig(**{**base.config.to_dict(), **over})).to(dev).eval()
        own = m.state_dict()
        m.load_state_dict(
            {k: v for k, v in base.state_dict().items() if own[k].shape == v.shape}, strict=False
        )
        return m

    hybrid_of = {(v, k): variant_model(v, k) for v in variants if v in MODEL_VARIANTS for k in opened}
    before = None
    if baseline:
        b_gen, b_models, b_codec = load_baseline(baseline)
        b_model = {}
        for fusion, m in models.items():
            b_model[fusion] = (
                b_models.WhisperGPT(b_models.WhisperGPTConfig(**m.config.to_dict())).to(dev).eval()
            )
            b_model[fusion].load_state_dict(m.state_dict())
        b_codecs = {
            k: b_codec.Codec(c.model, bandwidth=c.bandwidth, name=c.name) for k, (c, _) in opened.items()
        }
        before = (b_gen.generate, b_model, b_codecs)
    mg = None
    if musicgen:
        torch.manual_seed(0)
        mg_size = Size(mode, d_model=size["d_model"], n_layers=size["n_layers"], n_heads=size["n_heads"],
                       num_codebooks=K, codebook_size=V, frames=frames, batch=1)  # fmt: skip
        mg = build_musicgen(mg_size, max_positions=frames + K).to(dev).eval()
    load = [os.getloadavg()[0]]
    rows = []
    for batch in batches:
        # name -> (call(seed), model, codec label, decoder, variant)
        calls: dict[str, tuple] = {}
        if mg is not None:
            run_mg = _musicgen_generate(mg, batch, frames)
            calls["musicgen"] = (
                lambda seed, run_mg=run_mg: (torch.manual_seed(seed), run_mg()),
                "-",
                None,
                "",
            )

        def ours(
            fusion: str, kind: str, dec: str | None, variant: str, batch: int = batch, before=before
        ) -> Callable:
            gen, model, codec = generate, models[fusion], opened[kind][0]
            if variant in MODEL_VARIANTS:
                model = hybrid_of[(variant, kind)] if fusion == "concat" else model
            if variant == "baseline":
                gen, model, codec = before[0], before[1][fusion], before[2][kind]
            return lambda seed: gen(
                model, codec, frames=frames, num_samples=batch,
                generator=torch.Generator(device=dev).manual_seed(seed), decoder=dec or "auto",
                decode_window=decode_window, decode_audio=False, **VARIANTS.get(variant, {}),
            )  # fmt: skip

        first = next(iter(opened))
        for variant in ("", *variants, *(("baseline",) if before else ())):
            opts = VARIANTS.get(variant, {})
            if variant not in MODEL_VARIANTS or variant in TOKEN_ROW_VARIANTS:
                calls[f"ours-token{'/' + variant if variant else ''}"] = (ours("none", first, None, variant), "-", None, variant)  # fmt: skip
            for kind, (_, label) in opened.items():
                for dec in decoders:
                    if dec == "window" and (opts.get("static") or opts.get("compile")):
                        continue  # the static step needs the stream decoder
                    name = f"ours-hybrid/{kind}/{dec}{'/' + variant if variant else ''}"
                    calls[name] = (ours("concat", kind, dec, variant), label, dec, variant)
        names = list(calls)
        times: dict[str, list[float]] = {n: [] for n in names}
        warm: dict[str, float] = {}  # round 0: the first call of each row (compile: trace + codegen)
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0 warms up (and compiles); the order rotates per round
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    _sync(dev)
                    t0 = timer()
                    calls[name][0](r)
                    _sync(dev)
                    if r > 0:
                        times[name].append(timer() - t0)
                    else:
                        warm[name] = timer() - t0
        load.append(os.getloadavg()[0])
        for name in names:
            _, label, dec, variant = calls[name]
            t = statistics.median(times[name])
            row = dict(
                device=str(dev), mode=mode, model=name.split("/")[0], variant=variant or "-",
                d_model=size["d_model"], n_layers=size["n_layers"],
                codec="-" if dec is None else label + (f", window W={decode_window}" if dec == "window" else ""),
                batch=batch, frames=frames, seconds=round(t, 4), frames_per_s=round(frames / t, 1),
                rtf=round(frames * batch / FRAME_RATE / t, 3),
            )  # fmt: skip
            if "musicgen" in times:
                s = paired(times["musicgen"], times[name], lambda m, x: m / x)
                row.update(
                    vs_musicgen=round(s["median"], 3), vs_musicgen_iqr=_spread(s, 2), vs_musicgen_stats=s
                )
            else:
                row.update(vs_musicgen=None, vs_musicgen_iqr=None)
            row.update(overhead_pct=None, overhead_iqr=None, extra_ms_per_frame=None)
            if dec is not None:
                own = f"ours-token/{variant}"
                ref = times[own if variant and own in times else "ours-token"]
                s = paired(times[name], ref, lambda h, b: (h / b - 1) * 100)
                e = paired(times[name], ref, lambda h, b: (h - b) / frames * 1e3)
                row.update(overhead_pct=round(s["median"], 1), overhead_iqr=_spread(s, 0), overhead_stats=s,
                           extra_ms_per_frame=round(e["median"], 3), extra_ms_iqr=_spread(e, 2))  # fmt: skip
            row.update(repeats=rounds, clock=clock, times_s=[round(x, 4) for x in times[name]],
                       warmup_s=round(warm[name], 3))  # fmt: skip
            rows.append(row)
    for row in rows:
        row["load_avg"] = f"{min(load):.1f}-{max(load):.1f}"
    return rows


COLUMNS = ["model", "variant", "codec", "batch", "frames", "frames_per_s", "vs_musicgen", "vs_musicgen_iqr",
           "overhead_pct", "overhead_iqr", "extra_ms_per_frame", "load_avg"]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        out.append("| " + " | ".join("–" if row.get(c) is None else str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/bench_sampling.py", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="CI smoke sizes, tiny codec")
    ap.add_argument(
        "--mode", choices=list(SIZES), default=None, help="size preset (default: gpu on CUDA, else cpu)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default per mode)")
    ap.add_argument("--frames", type=int, default=None, help="frames per sample (default per mode)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument(
        "--codecs", default=None, help="feedback-loop codecs: tiny, shipped, full (default per mode)"
    )
    ap.add_argument("--decode-window", type=int, default=32)
    ap.add_argument("--decoders", default="stream", help="feedback-loop decoders: stream, window")
    ap.add_argument("--variants", default="", help=f"extra rows of ours: {', '.join(VARIANTS)}")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall or process CPU time")
    ap.add_argument(
        "--baseline", default=None, help="folder holding another checkout's whispergpt/: paired before rows"
    )
    ap.add_argument("--no-musicgen", action="store_true", help="skip the MusicGen generate rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="runs/benchmarks/sampling.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = lambda s: tuple(x for x in s.split(",") if x) if s else ()  # noqa: E731
    rows = run_sampling_benchmark(
        mode=args.mode, quick=args.quick, device=args.device, repeats=args.repeats,
        batches=tuple(int(b) for b in args.batches.split(",")), decode_window=args.decode_window,
        decoders=split(args.decoders), musicgen=not args.no_musicgen, codecs=split(args.codecs) or None,
        variants=split(args.variants), frames=args.frames, clock=args.clock, baseline=args.baseline,
    )  # fmt: skip
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
