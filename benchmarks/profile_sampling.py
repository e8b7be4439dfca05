"""Where a sampled frame's time goes (issue 21): each part of the per-frame work timed on its own,
and the operator profile (``torch.profiler``) of the two largest parts.

Parts, at the sizes of ``bench_sampling.py``'s CPU mode (D256 L4, K=2, V=1024, batch 1 and 8):
``step/token`` (``model.step`` of the token-only model, KV cache ~150 deep), ``step/hybrid`` (the
hybrid's step: + mel branch), ``sample`` (top-k 250 filter + multinomial), ``decode/<codec>``
(``StreamingDecoder.push`` of one frame, shipped codec and EnCodec 24 kHz dims), ``mel`` (one
causal log-mel frame from the last 1024 samples). Per part: median ms per frame over ``--repeats``
blocks of ``--frames`` calls; then the top operators by self CPU time of ``step/token`` and of
``decode/full`` at batch 1, with the share of time inside matrix products (``addmm``/``mm``/
``linear``/``conv``/``lstm``) versus everything else (dispatch, elementwise, copies).

    python benchmarks/profile_sampling.py --threads 1 [--batches 1,8] [--out runs/benchmarks/profile.json]

Prints a markdown table and writes JSON. No assertions on speed (tests run ``--quick`` only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MATMUL_OPS = ("addmm", "mm", "bmm", "linear", "conv", "lstm", "_convolution", "mkldnn")


def _ms_per_call(fn, calls: int, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        out.append((time.process_time() - t0) / calls * 1e3)
    return statistics.median(out)


def _profile(fn, calls: int, top: int = 8) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    matmul = sum(e.self_cpu_time_total for e in events if any(m in e.key for m in MATMUL_OPS))
    return dict(
        ops_per_call=round(sum(e.count for e in events) / calls, 1),
        matmul_share=round(matmul / total, 3),
        top=[
            dict(
                op=e.key,
                share=round(e.self_cpu_time_total / total, 3),
                calls_per_frame=round(e.count / calls, 1),
            )
            for e in events[:top]
        ],
    )


def run_profile(batches=(1, 8), frames: int = 100, repeats: int = 5, quick: bool = False) -> dict:
    from bench_sampling import K, V, open_bench_codec

    from whispergpt.audio import log_mel_frame
    from whispergpt.codec.streaming import StreamingDecoder
    from whispergpt.inference.generate import sample_tokens
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    size = dict(d_model=64, n_layers=2, n_heads=2, context=64) if quick else dict(
        d_model=256, n_layers=4, n_heads=4, context=320
    )  # fmt: skip
    depth = 32 if quick else 150  # KV positions already cached when the timed steps run
    codecs = {k: open_bench_codec(k)[0] for k in (("tiny",) if quick else ("shipped", "full"))}
    models = {}
    for fusion in ("none", "concat"):
        torch.manual_seed(0)
        cfg = WhisperGPTConfig(num_codebooks=K, codebook_size=V, n_mels=80, pattern="delay", fusion=fusion,
                               mel_dim=32, mel_layers=2, mel_heads=2, **size)  # fmt: skip
        models[fusion] = WhisperGPT(cfg).eval()
    rows, profiles = [], {}
    with torch.inference_mode():
        for B in batches:
            tok = torch.randint(0, V, (B, K))
            mel = torch.randn(B, 80)
            parts = {}
            for name, fusion in (("step/token", "none"), ("step/hybrid", "concat")):
                model = models[fusion]
                cache = model.new_cache(B, size["context"])

                def step(model=model, cache=cache, fusion=fusion, tok=tok, mel=mel) -> torch.Tensor:
                    if cache.steps >= depth + frames:
                        cache.steps = depth  # stay near the same cache depth
                    return model.step(tok, mel if fusion != "none" else None, cache)

                cache.steps = depth
                parts[name] = step
            logits = torch.randn(B, K, V)
            g = torch.Generator().manual_seed(0)
            parts["sample"] = lambda logits=logits, g=g: sample_tokens(logits, 1.0, 250, 0.0, g)
            for kind, codec in codecs.items():
                sd = StreamingDecoder(codec, B, K)
                codes = torch.randint(0, 1024, (B, K, 1))
                parts[f"decode/{kind}"] = lambda sd=sd, codes=codes: sd.push(codes)
            win = torch.randn(B, 1024)
            parts["mel"] = lambda win=win: log_mel_frame(win, 80)
            for name, fn in parts.items():
                rows.append(
                    dict(part=name, batch=B, ms_per_frame=round(_ms_per_call(fn, frames, repeats), 4))
                )
            if B == batches[0]:
                profiles["step/token"] = _profile(parts["step/token"], frames)
                dec = "decode/full" if "decode/full" in parts else "decode/tiny"
                profiles[dec] = _profile(parts[dec], frames)
    return dict(rows=rows, profiles=profiles, size=size, cache_depth=depth, frames=frames, repeats=repeats,
                threads=torch.get_num_threads(), clock="process CPU time")  # fmt: skip


def markdown(res: dict) -> str:
    lines = ["| part | batch | ms per frame |", "|---|---|---|"]
    lines += [f"| {r['part']} | {r['batch']} | {r['ms_per_frame']:.3f} |" for r in res["rows"]]
    for name, p in res["profiles"].items():
        lines += ["", f"**{name}** (batch {res['rows'][0]['batch']}): {p['ops_per_call']} ops per frame, "
                  f"{p['matmul_share']:.0%} of self time in matrix products", "",
                  "| op | share | calls per frame |", "|---|---|---|"]  # fmt: skip
        lines += [f"| `{t['op']}` | {t['share']:.1%} | {t['calls_per_frame']} |" for t in p["top"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and codec (the test's smoke run)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--frames", type=int, default=100, help="calls per timed block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/benchmarks/profile_sampling.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = tuple(int(b) for b in args.batches.split(","))
    res = run_profile(batches, args.frames, args.repeats, args.quick)
    text = markdown(res)
    print(text)
    from run import write_outputs

    print(f"wrote {write_outputs(args.out, res, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
