"""Codec work of ``prepare``: batched and chunked encoding (codes, optionally the latent) and decoding.

Batches are zero-padded at the end, which is exact for the causal 24 kHz EnCodec (padding after a
file's end cannot change its codes). Files longer than a batch are encoded and decoded in chunks
with left context re-encoded and discarded (approximate through the LSTM state; measured in
``whispergpt.data.prepare``'s docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from whispergpt.audio import HOP_LENGTH, num_frames


def encode_long(
    codec, wave: torch.Tensor, chunk_frames: int, context_frames: int, with_latent: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Encode ``(S,)`` audio in chunks of ``chunk_frames`` with ``context_frames`` of left context.

    Returns ``(K, S // 320)`` codes (and, ``with_latent``, the ``(C, S // 320)`` latent they
    quantize); each chunk is encoded from ``context_frames`` earlier frames (discarded) so the
    encoder's receptive field and LSTM state are warmed up.
    """
    if chunk_frames < 1 or context_frames < 0:
        raise ValueError(
            f"chunk_frames must be >= 1 and context_frames >= 0, got {chunk_frames}, {context_frames}"
        )
    T = num_frames(wave.shape[-1])
    codes, latents = [], []
    for s in range(0, T, chunk_frames):
        a = max(0, s - context_frames)
        e = min(T, s + chunk_frames)
        lat = codec.latent(wave[None, a * HOP_LENGTH : e * HOP_LENGTH])  # (1, C, e - a)
        codes.append(codec.quantize(lat)[0, :, s - a :])
        latents.append(lat[0, :, s - a :])
    if not codes:  # under one frame: nothing to quantize
        codes = [codec.encode(wave[None, :0])[0]]
        latents = [wave.new_zeros(latent_dim(codec), 0)]
    out = torch.cat(codes, dim=-1)
    assert out.shape[-1] == T
    return (out, torch.cat(latents, dim=-1)) if with_latent else out


def latent_dim(codec) -> int:
    """C, the channels of ``Codec.latent`` (the encoder's output width)."""
    return int(codec.model.config.hidden_size)


def encode_batch(
    codec, waves: Sequence[torch.Tensor], with_latent: bool = False
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Encode several ``(S_i,)`` waves in one padded call; returns ``(K, S_i // 320)`` codes each
    (and, ``with_latent``, the ``(C, S_i // 320)`` latents)."""
    S = max(w.shape[-1] for w in waves)
    batch = torch.zeros(len(waves), S, dtype=torch.float32)  # (B, S), zero-padded at the end
    for i, w in enumerate(waves):
        batch[i, : w.shape[-1]] = w
    latent = codec.latent(batch)  # (B, C, T): what Codec.encode quantizes, computed once
    codes = codec.quantize(latent).cpu()  # (B, K, T)
    T = [num_frames(w.shape[-1]) for w in waves]
    out = [codes[i, :, : T[i]] for i in range(len(waves))]
    if not with_latent:
        return out
    latent = latent.float().cpu()
    return out, [latent[i, :, : T[i]] for i in range(len(waves))]


def decode_long(codec, codes: torch.Tensor, chunk_frames: int, context_frames: int) -> torch.Tensor:
    """Decode ``(K, T)`` codes to ``(T * 320,)`` audio in chunks with ``context_frames`` of left context."""
    T = codes.shape[-1]
    parts = []
    for s in range(0, T, chunk_frames):
        a = max(0, s - context_frames)
        e = min(T, s + chunk_frames)
        audio = codec.decode(codes[None, :, a:e])[0]  # (S_chunk,)
        parts.append(audio[(s - a) * HOP_LENGTH :])
    return torch.cat(parts) if parts else codes.new_zeros(0, dtype=torch.float32)
