"""Semantic conditioning of the acoustic decoder (AudioLM's coarse stage): ``model.semantic``.

Semantic tokens (``whispergpt semantic fit`` + ``prepare --semantic``; ``semantic/tokenizer.py``) are
k-means clusters of EnCodecMAE frames at ``semantic_rate`` Hz (25 by default), ``g = 75 / rate``
codec frames each. A prepared dataset stores them on the codec grid, one per codec frame (each
token repeated ``g`` times), and that is what the model takes: ``semantic (B, T)`` int, aligned
with ``codes (B, K, T)``.

Causality. The semantic stream is generated *before* the acoustic stage (a semantic LM continues
it, or it comes from the whole clip), so the acoustic model MAY read semantic tokens of future
frames: that is the point of the hierarchy. Codec tokens and mel keep the decoder's rule: the logits
of step ``p`` depend on no code placed at a step ``>= p`` and no mel frame ``>= p - lag``
(``tests/models/test_semantic_conditioning.py`` checks both halves).

Modes:

- ``none``: no semantic input (no parameters).
- ``prefix`` (AudioLM): the window's semantic tokens, one per semantic frame
  (``semantic[:, ::g]``, ``S = ceil(T / g)`` tokens for a window of ``T`` frames), are embedded and
  placed before the acoustic steps as ``S`` extra decoder positions (no loss on them). The decoder
  then holds ``S + P * positions_per_step`` positions; the mel branch and the pattern steps are
  unchanged, only the main stack's positions shift by ``S``. A KV cache holds the prefix from its
  first call on (``WhisperGPTCache.prefix``); a long-form re-prefill restarts it with the prefix of
  the new window (the frames ``[s0, s0 + context)`` the re-fed window covers).
- ``aligned``: input position ``p`` (which predicts the tokens placed at step ``p``, i.e. codebook 0
  of frame ``f = p``, the newest frame the step touches in every pattern) adds to its input the
  embedding of the semantic token of semantic frame ``floor(f / g) + lookahead``, read on the codec
  grid as ``semantic[:, min(f + lookahead * g, T - 1)]`` (clamped at the last available token). It
  is added (not concatenated: the width stays ``d_model`` for every fusion) to the token position
  after the mel fusion; with ``interleave`` to the token position only.

Lookahead (``semantic_lookahead``, in semantic frames, default 1 = 40 ms at 25 Hz). With 0 the
step reads the token of the semantic frame holding its own frame: what is said now, not what comes
next. A phone lasts ~2-4 semantic frames, so one frame ahead lets the coarse stage prepare the
transition into the next unit. The cost: a training window's last ``lookahead * g`` frames read a
clamped token, while sampling reads the semantic continuation's true later tokens; 1 keeps that to
``g`` frames per window. docs/HIERARCHY.md has the whole rule.
"""

from __future__ import annotations

import torch
from torch import nn

from whispergpt.audio import FRAME_RATE

SEMANTIC_MODES = ("none", "prefix", "aligned")


def group_size(rate: float, name: str = "semantic_rate") -> int:
    """Codec frames per semantic frame, ``75 / rate``; ``ValueError`` unless ``rate`` divides 75."""
    g = FRAME_RATE / float(rate) if rate > 0 else 0.0
    if rate <= 0 or g != int(g):
        divisors = [FRAME_RATE // d for d in range(1, FRAME_RATE + 1) if FRAME_RATE % d == 0]
        raise ValueError(f"{name} must divide {FRAME_RATE} Hz (one of {divisors}), got {rate}")
    return int(g)


def check_semantic_config(mode: str, vocab: int | None, rate: float, lookahead: int) -> None:
    """``ValueError`` for an unknown mode or, when it is not ``none``, a bad vocab, rate or lookahead."""
    if mode not in SEMANTIC_MODES:
        raise ValueError(f"semantic must be one of {list(SEMANTIC_MODES)}, got {mode!r}")
    if mode == "none":
        return
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(
            f"semantic {mode!r} needs semantic_vocab >= 1 (the semantic tokenizer's clusters; a run "
            f"reads it from the dataset manifest when left 0/null), got {vocab!r}"
        )
    group_size(rate)
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or lookahead < 0:
        raise ValueError(f"semantic_lookahead must be an integer >= 0 (semantic frames), got {lookahead!r}")


def num_prefix(frames: int, g: int) -> int:
    """``S = ceil(frames / g)``: prefix positions of a window of ``frames`` codec frames."""
    return -(-int(frames) // g)


def prefix_tokens(semantic: torch.Tensor, g: int) -> torch.Tensor:
    """Per-codec-frame ``semantic (B, T)`` -> the window's prefix ``(B, S)``: one token per semantic frame."""
    return semantic[:, ::g]


def aligned_tokens(semantic: torch.Tensor, g: int, lookahead: int, start: int, steps: int) -> torch.Tensor:
    """Per-codec-frame ``semantic (B, T)`` -> ``(B, steps)``: the token input position ``start + i``
    reads, ``semantic[:, min(start + i + lookahead * g, T - 1)]``."""
    T = semantic.shape[-1]
    idx = (torch.arange(start, start + steps, device=semantic.device) + lookahead * g).clamp_(max=T - 1)
    return semantic[:, idx]


def check_semantic_input(semantic: torch.Tensor | None, mode: str, batch: int, frames: int) -> None:
    """``ValueError`` unless ``semantic`` fits a frame-space call of ``batch x frames`` in ``mode``."""
    if mode == "none":
        if semantic is not None:
            raise ValueError("this model has semantic=none: pass no semantic tokens")
        return
    if semantic is None:
        raise ValueError(
            f"this model has semantic={mode!r}: pass semantic (B, T), one semantic token per codec frame"
        )
    if semantic.dim() != 2 or tuple(semantic.shape) != (batch, frames):
        raise ValueError(f"semantic must be (B, T) = {(batch, frames)}, got shape {tuple(semantic.shape)}")
    if semantic.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"semantic must be integer (long), got {semantic.dtype}")


def check_semantic_range(semantic: torch.Tensor, vocab: int) -> None:
    """``ValueError`` unless every token lies in ``[0, vocab)`` (one host-device sync)."""
    if semantic.numel():
        lo, hi = torch.stack(torch.aminmax(semantic)).tolist()
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"semantic tokens must lie in [0, {vocab - 1}] (the model's semantic_vocab), got [{lo}, {hi}]"
            )


def check_semantic_tokenizer(config, tokenizer: dict | None, where: str) -> None:
    """``ValueError`` unless ``tokenizer`` (a manifest's ``semantic_tokenizer``: clusters, rate) is the
    kind of tokenizer the conditioned model ``config`` reads (its ``semantic_vocab`` and ``semantic_rate``)."""
    tok = tokenizer if isinstance(tokenizer, dict) else {}
    have = (tok.get("clusters"), tok.get("rate"))
    rate_ok = isinstance(have[1], (int, float)) and float(have[1]) == float(config.semantic_rate)
    if not tok or have[0] != config.semantic_vocab or not rate_ok:
        raise ValueError(
            f"{where}: the model (semantic={config.semantic}) reads {config.semantic_vocab} semantic tokens "
            f"at {config.semantic_rate} Hz, the data has "
            + (
                f"{have[0]} at {have[1]} Hz"
                if tok
                else "no semantic stream: prepare it with --semantic TOKENIZER_DIR"
            )
        )


class SemanticEmbedding(nn.Module):
    """The table both modes read: ``tokens (...)`` -> ``(..., d_model)``."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb(tokens.long())
