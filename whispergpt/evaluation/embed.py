"""Clip embeddings in the codec's continuous latent space (for the "Fréchet codec distance").

``Codec.latent`` gives the encoder output ``(B, D, T)`` that the RVQ quantizes; a clip is pooled
over its frames from ``start`` on (the continuation) as ``[mean over time, std over time]``, a
``2 D`` float64 vector. The codec's weights are already on disk (no download at run time), and the
encoder is causal, so the prompt before ``start`` is context for the latent, never part of the pool.
The same latent also gives the clip's codes (``Codec.quantize``), so each clip is encoded once.
"""

from __future__ import annotations

import numpy as np
import torch


def pool_latent(latent: torch.Tensor, start: int = 0) -> np.ndarray:
    """``latent (D, T)`` -> ``[mean_t, std_t]`` over frames ``start:`` as float64 ``(2 D,)``."""
    z = latent[:, start:].double()
    if z.shape[1] < 2:
        raise ValueError(f"need >= 2 latent frames after frame {start} to pool, got {z.shape[1]}")
    return torch.cat([z.mean(dim=1), z.std(dim=1)]).cpu().numpy()


@torch.inference_mode()
def encode_clips(codec, waves: list[torch.Tensor], batch_samples: int = 2_400_000) -> list[torch.Tensor]:
    """Latents ``(D, T_i)`` of ``waves`` (each ``(S_i,)`` at 24 kHz); equal lengths are batched, up to
    ``batch_samples`` samples per batch (8 ten-second clips: ~250 MB of activations in EnCodec's first layer)."""
    out: list[torch.Tensor | None] = [None] * len(waves)
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_len.setdefault(int(w.shape[-1]), []).append(i)
    for length in sorted(by_len):
        idx = by_len[length]
        batch_size = max(1, batch_samples // max(length, 1))
        for b in range(0, len(idx), batch_size):
            chunk = idx[b : b + batch_size]
            lat = codec.latent(torch.stack([waves[i] for i in chunk]))  # (B, D, T)
            for j, i in enumerate(chunk):
                out[i] = lat[j].cpu()
    return out  # type: ignore[return-value]
