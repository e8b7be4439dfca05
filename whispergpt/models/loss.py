"""The training loss without full-size logits: head + cross-entropy over chunks of scored rows.

``nll_per_codebook(model(codes, mel).logits, codes)`` holds the ``(B, Ks, T, V)`` logits (and an
fp32 copy, and autograd's saved softmax) at once; at V = 1024, K = 8 they outweigh every
activation of a small model. ``chunked_nll`` computes the same ``(nll_sum (Ks,) float64, count
(Ks,) int64)`` from the step hidden states, ``chunk_rows`` (row = one scored (sample, frame,
codebook)) at a time: each chunk's logits are made in the compute dtype, upcast to fp32 for the
log-softmax, reduced, and recomputed in backward (activation checkpointing), so peak memory holds
one chunk's logits. Delay's padded steps are never scored (no ignore_index needed).

Measured (CPU, one forward + backward, paper_hybrid dims, B=16, T=512, K=8, V=1024; peak RSS of a
fresh process): delay pattern 3372 -> 2372 MiB; coarse (one scored codebook) 2493 -> 2559 MiB
(no gain). Speed: about equal at tiny size, ~15% slower at quickstart size (the head matmul runs
twice), so the trainer keeps the plain loss; ``WhisperGPT.nll`` exposes this one.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_nll(rows: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # rows (N, D), weight (V, D), target (N,) -> per-row NLL (N,) fp32
    logits = F.linear(rows, weight)  # (N, V) in the compute dtype (autocast's)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return F.cross_entropy(logits.float(), target, reduction="none")


def chunked_nll(
    h: torch.Tensor,
    weight: torch.Tensor,
    codes: torch.Tensor,
    num_scored: int,
    delay: bool,
    mask: torch.Tensor | None = None,
    chunk_rows: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h (B, P, D)`` step hidden states, ``weight (Ks*V, D)`` the heads, ``codes (B, K, T)``
    -> ``(nll_sum (Ks,) float64, count (Ks,) int64)`` as ``nll_per_codebook`` of the frame logits.

    ``num_scored``: Ks, the codebooks ``0..Ks-1`` of ``codes`` that are scored. ``delay``: codebook ``k`` of frame ``t`` is predicted at step ``t + k`` (else at step ``t``).
    ``mask (B, T)`` bool: True = frame counts (masked rows are not computed at all).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    B, _, D = h.shape
    T = codes.shape[-1]
    Ks = num_scored
    V = weight.shape[0] // Ks
    sums, counts = [], []
    for k in range(Ks):
        hk = h[:, k : k + T] if delay else h[:, :T]  # (B, T, D)
        target = codes[:, k].long()  # (B, T)
        if mask is None:
            rows, target = hk.reshape(B * T, D), target.reshape(B * T)
        else:
            rows, target = hk[mask], target[mask]  # (N, D), (N,)
        w = weight[k * V : (k + 1) * V]  # (V, D)
        total = h.new_zeros((), dtype=torch.float64)
        for lo in range(0, rows.shape[0], chunk_rows):
            args = (rows[lo : lo + chunk_rows], w, target[lo : lo + chunk_rows])
            nll = (
                checkpoint(_chunk_nll, *args, use_reentrant=False)
                if torch.is_grad_enabled()
                else _chunk_nll(*args)
            )
            total = total + nll.double().sum()
        sums.append(total)
        counts.append(target.new_tensor(target.shape[0], dtype=torch.int64))
    return torch.stack(sums), torch.stack(counts)


def nll_per_codebook(
    logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL in nats and token counts per scored codebook.

    ``logits (B, Ks, T, V)``, ``codes (B, K, T)`` with ``K >= Ks`` (codebooks ``:Ks`` are
    scored), ``mask (B, T)`` bool (True = frame counts). Returns ``(nll_sum (Ks,) float64,
    count (Ks,) int64)``; computed in fp32 whatever the autocast state, so callers can sum both
    across ranks and divide once.
    """
    if logits.dim() != 4 or codes.dim() != 3:
        raise ValueError(
            f"expected logits (B, Ks, T, V) and codes (B, K, T), got {tuple(logits.shape)}, {tuple(codes.shape)}"
        )
    B, Ks, T, V = logits.shape
    if codes.shape[0] != B or codes.shape[2] != T or codes.shape[1] < Ks:
        raise ValueError(f"codes must be (B={B}, K>={Ks}, T={T}), got {tuple(codes.shape)}")
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must be (B, T) = {(B, T)}, got {tuple(mask.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        lg = logits.float()  # keeps the layout of ``logits``
        # Flatten the (B, Ks, T) rows in the order they lie in memory: the head writes (B, T, Ks, V)
        # or (Ks, B, T, V), and reshaping a (B, Ks, T, V) view of those would copy all the logits.
        order = next(
            (o for o in itertools.permutations(range(3)) if lg.permute(*o, 3).is_contiguous()), (0, 1, 2)
        )
        target = codes[:, :Ks].long().permute(*order)
        nll = F.cross_entropy(lg.permute(*order, 3).reshape(-1, V), target.reshape(-1), reduction="none")
        nll = nll.view(target.shape).permute(*(order.index(i) for i in range(3)))  # (B, Ks, T)
        if mask is None:
            count = torch.full((Ks,), B * T, dtype=torch.int64, device=logits.device)
        else:
            m = mask.to(torch.bool)[:, None, :]  # (B, 1, T)
            nll = nll.masked_fill(~m, 0.0)
            count = m.expand(B, Ks, T).sum(dim=(0, 2)).to(torch.int64)
        return nll.double().sum(dim=(0, 2)), count
