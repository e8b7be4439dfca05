"""Preparation throughput: EnCodec encode (and the causal log-mel) speed, in x real time.

``x real time`` = seconds of 24 kHz audio processed per wall-clock second. Codecs are built
offline with random weights (throughput does not depend on the weights): the full-size default
``EncodecModel(EncodecConfig())`` (the architecture of ``facebook/encodec_24khz``) at 6 kbps
(K = 8), and the tiny test codec (``Codec.random(tiny=True)``) at 1.5 kbps. The mel row is
``whispergpt.audio.log_mel`` on the same audio, the other half of ``whispergpt prepare``; the
``decode`` rows are the decodes behind the stored decoded mels (all codebooks: ``mel_decoded``;
codebook 0 alone: ``mel_decoded_coarse``). The ``latent`` stream costs nothing extra: it is the
encoder output that ``encode`` quantizes.
"""

from __future__ import annotations

import torch
from bench_train import device_name, median, time_calls


def build_codecs(which: tuple[str, ...]) -> dict:
    from transformers import EncodecConfig, EncodecModel

    from whispergpt.codec import Codec

    out = {}
    for name in which:
        if name == "encodec-24khz-6kbps":
            # Zero codebooks (a fresh model) cost exactly what trained ones cost to search.
            model = EncodecModel(EncodecConfig(target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0]))
            out[name] = Codec(model, bandwidth=6.0, name=name)
        elif name == "tiny-1.5kbps":
            out[name] = Codec.random(bandwidth=1.5, seed=0, tiny=True)
        else:
            raise ValueError(f"unknown codec {name!r}; expected encodec-24khz-6kbps or tiny-1.5kbps")
    return out


def run_prepare_benchmark(
    seconds: float = 10.0,
    batch: int = 4,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    codecs: tuple[str, ...] = ("encodec-24khz-6kbps", "tiny-1.5kbps"),
) -> list[dict]:
    """Encode (and decode) ``batch`` clips of ``seconds`` each, ``repeats`` times; median x real time."""
    from whispergpt.audio import SAMPLE_RATE, log_mel

    if seconds <= 0 or batch < 1 or repeats < 1:
        raise ValueError(f"need seconds > 0, batch >= 1, repeats >= 1; got {seconds}, {batch}, {repeats}")
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=g)).to(device)  # (B, S)
    audio_s = batch * seconds
    jobs = {}
    for name, codec in build_codecs(codecs).items():
        codec.to(device)
        jobs[name] = (lambda c=codec: c.encode(wave), f"{codec.num_codebooks} codebooks")
        # the decoded mels' decodes (prepare's mel_decoded and mel_decoded_coarse streams)
        codes = codec.encode(wave)  # (B, K, T)
        jobs[f"{name} decode"] = (
            lambda c=codec, x=codes: c.decode(x),
            f"all {codec.num_codebooks} codebooks",
        )
        jobs[f"{name} decode coarse"] = (lambda c=codec, x=codes: c.decode(x[:, :1]), "codebook 0 alone")
    jobs["log-mel (80 bins)"] = (lambda: log_mel(wave), "whispergpt.audio.log_mel")
    rows = []
    for name, (fn, what) in jobs.items():
        fn()  # warm-up
        times = [time_calls(fn, device, 1) for _ in range(repeats)]
        t = median(times)
        rows.append(
            dict(
                bench="prepare",
                model=name,
                detail=what,
                batch=batch,
                seconds_per_clip=seconds,
                wall_s=round(t, 4),
                x_real_time=round(audio_s / t, 1),
                repeats=repeats,
                device=device_name(device),
                wall_s_all=[round(x, 4) for x in times],
            )
        )
    return rows


# Stream sets of `whispergpt prepare`, cheapest first (prepare() keyword arguments).
STREAM_SETS: dict[str, dict] = {
    "codes + mel (--no-decoded-mel)": dict(decoded_mel=False),
    "+ mel_decoded (--no-coarse-mel)": dict(decoded_coarse_mel=False),
    "+ mel_decoded_coarse (default)": dict(),
    "+ latent (--latent)": dict(latent=True),
    "default, --mel-dtype float32": dict(mel_dtype="float32"),
}


def run_stream_cost_benchmark(
    sources: list[str], codec: str | None = None, bandwidth: float = 6.0, workdir: str | None = None
) -> list[dict]:
    """``prepare`` of ``sources`` once per ``STREAM_SETS`` entry: wall and CPU seconds, bytes on
    disk per stored file; plus the float16 mel's error against float32 on the same data."""
    import os
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    from whispergpt.codec.codec import SHIPPED_CODEC_DIR
    from whispergpt.data.prepare import prepare

    codec = codec or str(SHIPPED_CODEC_DIR)
    rows, outs = [], {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, (name, kw) in enumerate(STREAM_SETS.items()):
            out = outs[name] = Path(tmp) / f"set{i}"
            t0, c0 = time.perf_counter(), time.process_time()
            m = prepare(sources, out, codec, bandwidth=bandwidth, device="cpu", progress=False, **kw)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            sizes: dict[str, int] = {}
            for p in out.rglob("*.npy"):
                sizes[p.name] = sizes.get(p.name, 0) + p.stat().st_size
            frames = sum(v["frames"] for v in m["splits"].values())
            rows.append(
                dict(
                    bench="prepare-streams", model=name, audio_s=round(frames / 75, 1), cpu_s=round(cpu, 1),
                    wall_s=round(wall, 1), disk_MB=round(sum(sizes.values()) / 1e6, 2),
                    bytes_per_frame=round(sum(sizes.values()) / max(frames, 1), 1),
                    file_MB={k: round(v / 1e6, 3) for k, v in sorted(sizes.items())}, load=os.getloadavg()[0],
                )
            )  # fmt: skip
        half, full = outs["+ mel_decoded_coarse (default)"], outs["default, --mel-dtype float32"]
        for stream in ("mel", "mel_decoded", "mel_decoded_coarse"):
            err, val = [], []
            for sdir in sorted((full / "shards").iterdir()):
                x32 = np.load(sdir / f"{stream}.npy").astype(np.float64)
                x16 = np.load(half / "shards" / sdir.name / f"{stream}.npy").astype(np.float64)
                err.append(np.abs(x16 - x32).ravel())
                val.append(x32.ravel())
            e, v = np.concatenate(err), np.concatenate(val)
            rows.append(dict(bench="fp16-mel", model=stream, min=float(v.min()), max=float(v.max()),
                             max_abs_err=float(e.max()), mean_abs_err=float(e.mean())))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_prepare.py --streams SRC...``: prepare's cost per stream set."""
    import argparse
    import json
    import os
    import sys
    from pathlib import Path

    p = argparse.ArgumentParser(
        description="whispergpt prepare: time and disk per stream set, fp16 mel error."
    )
    p.add_argument(
        "--streams", nargs="+", required=True, metavar="SRC", help="audio to prepare (e.g. the demo corpus)"
    )
    p.add_argument("--codec", default=None, help="default: the shipped codec")
    p.add_argument("--bandwidth", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = run_stream_cost_benchmark(args.streams, args.codec, args.bandwidth)
    print("\n| streams | audio s | CPU s | wall s | disk MB | bytes/frame |\n|---|---|---|---|---|---|")
    for r in rows:
        if r["bench"] == "prepare-streams":
            print(
                f"| {r['model']} | {r['audio_s']} | {r['cpu_s']} | {r['wall_s']} | {r['disk_MB']} | {r['bytes_per_frame']} |"
            )
    for r in rows:
        if r["bench"] == "fp16-mel":
            print(f"{r['model']}: range [{r['min']:.3f}, {r['max']:.3f}], float16 error max {r['max_abs_err']:.2e}, "
                  f"mean {r['mean_abs_err']:.2e}")  # fmt: skip
    print(
        f"load average before {load}, after {tuple(round(x, 2) for x in os.getloadavg())}; {args.threads} threads"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(command=" ".join(sys.argv), rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
