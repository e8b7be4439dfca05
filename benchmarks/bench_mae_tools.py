"""EnCodecMAE tools: ``embed`` speed (x real time) and the semantic k-means fit time.

- ``run_embed_benchmark``: ``whispergpt embed``'s work on ``batch`` clips of ``seconds`` of noise,
  one clip at a time as the command does: the MAE input (``MAEInput.features``: the causal log-mel,
  or the codec latent of the full-size ``EncodecModel(EncodecConfig())``, random weights) and the
  encoder (``encode_frames``, windows of 10 s) of a randomly initialised ``EnCodecMAE`` of the
  given size. ``x_real_time`` = audio seconds / wall seconds (median of repeats); file reading and
  writing are not included.
- ``run_kmeans_benchmark``: ``semantic.kmeans`` (MiniBatchKMeans, as ``whispergpt semantic fit``)
  on ``hours`` of 25 Hz frames of width ``dim``: a mixture of ``clusters`` Gaussians, so that the
  fit has structure to find. Wall seconds of one fit with the libraries' default threads and with
  one thread (the centroids are the same; on a shared machine the default can be much slower).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from bench_train import device_name, median, time_calls

# (d_model, n_layers, n_heads) of the MAE per mode: mae_tiny, mae_quickstart and mae_base's encoders
MAE_SIZES = {"quick": (64, 2, 2), "cpu": (128, 4, 4), "gpu": (768, 10, 12)}


def _mae(d_model: int, n_layers: int, n_heads: int, in_dim: int, input: str):
    from whispergpt.models.encodecmae import EnCodecMAE, EnCodecMAEConfig

    cfg = EnCodecMAEConfig(input=input, in_dim=in_dim, num_codebooks=8, codebook_size=1024, n_layers=n_layers,
                           d_model=d_model, n_heads=n_heads)  # fmt: skip
    torch.manual_seed(0)
    return EnCodecMAE(cfg).eval()


def run_embed_benchmark(
    mode: str = "cpu",
    seconds: float = 10.0,
    batch: int = 2,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    inputs: tuple[str, ...] = ("mel", "latent"),
) -> list[dict]:
    """Embed ``batch`` clips of ``seconds``; median x real time per MAE input kind."""
    from whispergpt.audio import SAMPLE_RATE
    from whispergpt.semantic.features import MAEInput, encode_frames

    if seconds <= 0 or batch < 1 or repeats < 1:
        raise ValueError(f"need seconds > 0, batch >= 1, repeats >= 1; got {seconds}, {batch}, {repeats}")
    device = torch.device(device)
    d_model, n_layers, n_heads = MAE_SIZES[mode]
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=g) for _ in range(batch)]
    rows = []
    for kind in inputs:
        if kind == "mel":
            feats = MAEInput("mel", 80, device=device)
        else:
            from transformers import EncodecConfig, EncodecModel

            from whispergpt.codec import Codec

            codec = Codec(EncodecModel(EncodecConfig(target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0])), 6.0)
            feats = MAEInput("latent", 128, "encodec_24khz-random", 6.0, device, codec.to(device))
        model = _mae(d_model, n_layers, n_heads, int(feats.dim), kind).to(device)

        def job(model=model, feats=feats):
            for w in waves:
                encode_frames(model, feats.features(w)[0])  # (T, D)

        job()  # warm-up
        times = [time_calls(job, device, 1) for _ in range(repeats)]
        t = median(times)
        rows.append(dict(
            bench="embed", model=f"EnCodecMAE D{d_model} L{n_layers}", input=kind, batch=batch,
            seconds_per_clip=seconds, wall_s=round(t, 4), x_real_time=round(batch * seconds / t, 1),
            params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 2), repeats=repeats,
            device=device_name(device), wall_s_all=[round(x, 4) for x in times],
        ))  # fmt: skip
    return rows


def run_kmeans_benchmark(
    hours: float = 1.0, dim: int = 256, clusters: int = 512, rate: int = 25, threads: tuple = (None, 1)
) -> list[dict]:
    """One ``semantic.kmeans`` fit per thread setting on ``hours`` of ``rate`` Hz frames of width ``dim``."""
    from whispergpt.semantic.tokenizer import kmeans

    n = int(hours * 3600 * rate)
    if n < clusters:
        raise ValueError(f"{hours} h at {rate} Hz is {n} frames, fewer than {clusters} clusters")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    rows = []
    for th in threads:
        t0 = time.perf_counter()
        _, inertia = kmeans(x, clusters, seed=0, threads=th)
        t = time.perf_counter() - t0
        rows.append(dict(bench="kmeans", model="MiniBatchKMeans (semantic fit)", threads=th or "all",
                         hours=hours, frames=n, dim=dim, clusters=clusters, fit_s=round(t, 2),
                         frames_per_s=round(n / t), inertia_per_frame=round(inertia / n, 3), device="cpu"))  # fmt: skip
    return rows
