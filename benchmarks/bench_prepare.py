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
