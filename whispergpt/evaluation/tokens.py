"""Token statistics of generated clips: entropy, n-gram repetition, silent frames, NLL under a model.

The codes are those of the generated audio re-encoded by the codec (``Codec.quantize`` of the clip's
latent), which for codec-decoded audio are close to, not always equal to, the sampled tokens; the
same is done to the references, so both sides are measured the same way. Frames before the prompt
end are context only.

- ``entropy_bits``: unigram entropy of each codebook's codes in the clip, in bits (max log2 V);
  low means few distinct codes (silence, a held tone, a stuck sampler).
- ``repetition``: per codebook, the share of the clip's ``NGRAM``-frame code n-grams that already
  occurred earlier in the clip (0 = never repeats; loops push it towards 1).
- ``silent_share``: share of 320-sample frames whose RMS is below -60 dBFS.
- NLL: teacher-forced NLL (nats per token) of the codes under a ``WhisperGPT`` checkpoint,
  windowed with ``whispergpt eval``'s tiling (``tile_file``: each token scored once, with at least
  ``context // 2`` frames of left context after the first window) and scoring only the frames from
  the prompt end on. Hybrid models read ``log_mel`` of the clip itself. Sums of nats and token
  counts are kept per clip, so the overall NLL is ``sum(nats) / sum(tokens)``.
"""

from __future__ import annotations

import numpy as np
import torch

from whispergpt.audio import HOP_LENGTH, log_mel
from whispergpt.evaluation.windows import Totals, Window, evaluate_windows, tile_file

NGRAM = 4  # frames (53 ms)
SILENT_DBFS = -60.0


def entropy_bits(codes: torch.Tensor) -> list[float]:
    """``codes (K, T)`` -> unigram entropy in bits per codebook."""
    out = []
    for row in codes:
        p = torch.bincount(row.long()).double()
        p = p[p > 0] / row.numel()
        out.append(float(-(p * torch.log2(p)).sum()))
    return out


def repetition(codes: torch.Tensor, n: int = NGRAM) -> list[float | None]:
    """``codes (K, T)`` -> per codebook the share of n-grams seen earlier in the clip (None if T < n)."""
    K, T = codes.shape
    if T < n:
        return [None] * K
    c = codes.long()
    base = int(c.max()) + 1 if c.numel() else 1
    assert base**n < 2**63, (base, n)
    # each n-gram as one integer (exact while base ** n < 2 ** 63: V <= 2 ** 15 at n = 4): a 1-D unique
    key = torch.zeros(K, T - n + 1, dtype=torch.long)
    for i in range(n):
        key = key * base + c[:, i : T - n + 1 + i]
    return [1.0 - torch.unique(key[k]).numel() / key.shape[1] for k in range(K)]


def silent_share(wave: torch.Tensor) -> float:
    """Share of 320-sample frames of ``wave (S,)`` below ``SILENT_DBFS`` RMS."""
    T = wave.shape[-1] // HOP_LENGTH
    if T == 0:
        return 0.0
    rms = wave[: T * HOP_LENGTH].double().view(T, HOP_LENGTH).square().mean(dim=1).sqrt()
    return float((20.0 * torch.log10(rms.clamp_min(1e-10)) < SILENT_DBFS).double().mean())


def token_stats(codes: torch.Tensor, wave: torch.Tensor) -> dict:
    """The per-clip statistics of the continuation: ``codes (K, T)``, ``wave (S,)``."""
    return dict(
        entropy_bits=entropy_bits(codes), repetition=repetition(codes), silent_share=silent_share(wave)
    )


def continuation_windows(num_frames: int, start: int, context: int, file_index: int = 0) -> list[Window]:
    """``tile_file`` windows of a clip, scoring only frames ``>= start`` (the continuation)."""
    out = []
    for w in tile_file(num_frames, context, context // 2, file_index):
        if w.end > start:
            out.append(Window(w.file_index, w.start, w.end, max(w.score_from, start)))
    return out


@torch.no_grad()
def clip_nll(model, codes: torch.Tensor, wave: torch.Tensor, start: int, batch_size: int = 8) -> np.ndarray:
    """Teacher-forced NLL of one clip under ``model``: ``(2, Ks)`` = (nats, tokens) per scored codebook.

    ``codes (K, T)`` of the whole clip (prompt included, as context), ``wave (S,)`` its audio (for a
    hybrid model's mel), ``start`` the first scored frame.
    """
    c = model.config
    device = next(model.parameters()).device
    T = codes.shape[-1]
    totals = Totals(model.num_scored_codebooks)
    windows = continuation_windows(T, start, c.context)
    if windows:
        mel_of = None
        if c.fusion != "none":
            mel_of = {0: log_mel(wave[: T * HOP_LENGTH].float(), c.n_mels)}  # (M, T)
        evaluate_windows(model, {0: codes}, mel_of, windows, totals, batch_size, device)
    return totals.t[[0, 2]].cpu().numpy()
