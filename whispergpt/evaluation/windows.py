"""Teacher-forced scoring in windows: tiling a file into context-long windows, running them in
length-grouped batches, and the per-codebook sums (nats, top-1 hits, tokens) that ranks all-reduce.

Shared by the acoustic evaluation (``teacher_forced``), the semantic LM's (``semantic``) and the
token metrics of generated audio (``tokens``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from whispergpt.models import WhisperGPT, nll_per_codebook


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of one file are fed; frames ``[score_from, end)`` are scored."""

    file_index: int
    start: int
    end: int
    score_from: int


def tile_file(num_frames: int, context: int, overlap: int, file_index: int = 0) -> list[Window]:
    """The windows covering a file of ``num_frames`` frames (``teacher_forced``'s docstring draws them)."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if not 0 <= overlap < context:
        raise ValueError(f"overlap must be in [0, context={context}), got {overlap}")
    stride = context - overlap
    windows: list[Window] = []
    scored_to, start = 0, 0
    while scored_to < num_frames:
        end = min(start + context, num_frames)
        windows.append(Window(file_index, start, end, scored_to))
        scored_to = end
        start += stride
    return windows


class Totals:
    """Per-codebook sums: nats, correct top-1, token count (float64, so one all-reduce sums all)."""

    def __init__(self, num_scored: int, device: torch.device | str = "cpu"):
        self.t = torch.zeros(3, num_scored, dtype=torch.float64, device=device)  # (3, Ks)

    def add(self, logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """``logits (B, Ks, T, V)``, ``codes (B, K, T)``, ``mask (B, T)`` bool (True = scored)."""
        nll_sum, count = nll_per_codebook(logits, codes, mask)
        Ks = logits.shape[1]
        hit = logits.argmax(dim=-1) == codes[:, :Ks]  # (B, Ks, T)
        if mask is not None:
            hit = hit & mask[:, None, :]
        self.t[0] += nll_sum.to(self.t.device)
        self.t[1] += hit.sum(dim=(0, 2)).to(self.t)
        self.t[2] += count.to(self.t)


@torch.no_grad()
def evaluate_windows(
    model: WhisperGPT,
    codes_of: dict[int, torch.Tensor],
    mel_of: dict[int, torch.Tensor] | None,
    windows: list[Window],
    totals: Totals,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    semantic_of: dict[int, torch.Tensor] | None = None,
) -> None:
    """Run ``windows`` (grouped by length so no padding is needed) and add them to ``totals``.

    ``codes_of[i] (K, N_i)`` / ``mel_of[i] (M, N_i)`` hold whole files; ``mel_of`` is None for
    token-only models; ``semantic_of[i] (N_i,)`` for models with ``semantic != none``, else None.
    """

    def cut(arrays: dict[int, torch.Tensor], batch: list[Window]) -> torch.Tensor:
        """The batch's windows of whole-file arrays ``(..., N_i)`` -> ``(B, ..., T)``."""
        return torch.stack([arrays[w.file_index][..., w.start : w.end] for w in batch]).to(device)

    by_len: dict[int, list[Window]] = {}
    for w in windows:
        by_len.setdefault(w.end - w.start, []).append(w)
    for length in sorted(by_len):
        group = by_len[length]
        for b in range(0, len(group), batch_size):
            batch = group[b : b + batch_size]
            codes = cut(codes_of, batch)  # (B, K, T)
            mel = None if mel_of is None else cut(mel_of, batch)  # (B, M, T)
            semantic = () if semantic_of is None else (cut(semantic_of, batch),)  # (B, T): conditioned models
            steps = torch.arange(length, device=device)
            mask = (
                steps[None, :]
                >= torch.tensor([w.score_from - w.start for w in batch], device=device)[:, None]
            )
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                logits = model(codes, mel, *semantic).logits  # (B, Ks, T, V)
            totals.add(logits.float(), codes, mask)
