"""Codebook patterns: how the K codebooks of T frames are laid out as a sequence of pattern steps.

The decoder runs over *pattern steps* ``p = 0 .. P-1``. Each step holds some tokens (the
"placed" tokens of that step). The input position ``p`` reads the tokens placed at step ``p - 1``
(a BOS token at ``p = 0``) plus mel frame ``p - 1 - lag``, and its output predicts the tokens
placed at step ``p``. Token id ``V`` (``codebook_size``) is the special BOS/pad id; embedding
tables therefore have ``V + 1`` rows.

Example, K = 3 codebooks, T = 4 frames (``a..d`` codebook 0, ``e..h`` codebook 1, ``i..l``
codebook 2; ``.`` is the pad id V; columns are steps):

``coarse`` (the paper: codebook 0 only is read and predicted; P = T, lag 0)::

    step      0  1  2  3
    cb 0      a  b  c  d

``parallel`` (all K codebooks of a frame at one step, K output heads; P = T, lag 0)::

    step      0  1  2  3
    cb 0      a  b  c  d
    cb 1      e  f  g  h
    cb 2      i  j  k  l

``depth`` (RQ-Transformer / Moshi: step space as ``parallel``, P = T, lag 0; the model's depth
transformer then predicts the K codebooks of a step in order, codebook k reading codebooks < k of
the same step, see ``whispergpt.models.depth``; needs K >= 2)::

    step      0  1  2  3
    cb 0      a  b  c  d
    cb 1      e  f  g  h
    cb 2      i  j  k  l

``delay`` (MusicGen: codebook k delayed by k steps; P = T + K - 1, lag K - 1)::

    step      0  1  2  3  4  5
    cb 0      a  b  c  d  .  .
    cb 1      .  e  f  g  h  .
    cb 2      .  .  i  j  k  l

Mel lag: at step ``p`` the model reads mel frame ``p - 1 - lag`` (a learned pad vector when the
index is negative). With ``delay``, frame ``f`` is complete (all K codebooks generated) only
after step ``f + K - 1``, so the mel of frame ``f`` (computed from decoded audio at sampling time)
can be fed from step ``f + K`` on: ``lag = K - 1``. With ``coarse``/``parallel``/``depth`` the tokens of
frame ``f`` are placed at step ``f`` and its mel is fed at step ``f + 1``: ``lag = 0``.
``model.mel_extra_lag`` adds frames to every pattern's lag (``lag = K`` for delay with 1): the model
is trained with the same lag it samples with, and the extra step lets the sampler decode frame ``f``
on a second thread while it computes the step after ``f`` is complete (``inference.generate``).

Training-time input for T frames (what ``build_inputs`` returns), delay, K = 3::

    input position   0  1  2  3  4  5
    tokens cb 0      .  a  b  c  d  .      <- placed tokens shifted right by one, BOS first
    tokens cb 1      .  .  e  f  g  h
    tokens cb 2      .  .  .  i  j  k
    mel frame        -  -  -  0  1  2      <- p - 1 - lag; "-" = learned pad vector
"""

from __future__ import annotations

import torch

PATTERNS = ("coarse", "parallel", "delay", "depth")


def check_pattern(pattern: str, num_codebooks: int) -> None:
    """``ValueError`` unless ``pattern`` is known and can lay out ``num_codebooks`` codebooks."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    if num_codebooks < 1:
        raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
    if pattern == "depth" and num_codebooks < 2:
        raise ValueError(
            "pattern 'depth' predicts codebooks 1..K-1 of a frame after codebook 0 and needs "
            f"num_codebooks >= 2, got {num_codebooks}: with one codebook use pattern 'coarse'"
        )


def input_codebooks(pattern: str, num_codebooks: int) -> int:
    """``Kin``: how many codebooks the model reads per step (1 for coarse, K otherwise)."""
    check_pattern(pattern, num_codebooks)
    return 1 if pattern == "coarse" else num_codebooks


def scored_codebooks(pattern: str, num_codebooks: int) -> int:
    """``Ks``: how many codebooks the model predicts (1 for coarse, K otherwise)."""
    return input_codebooks(pattern, num_codebooks)


def mel_lag(pattern: str, num_codebooks: int, extra: int = 0) -> int:
    """Frames by which the mel stream is lagged: step ``p`` reads mel frame ``p - 1 - lag``.

    ``extra`` (``model.mel_extra_lag``) frames are added to the pattern's own lag (the least that
    makes every fed frame complete): with ``extra = 1`` a frame's mel is read one step after the
    earliest step that could read it, so the sampler can decode the frame while that step runs."""
    check_pattern(pattern, num_codebooks)
    return (num_codebooks - 1 if pattern == "delay" else 0) + extra


def num_steps(pattern: str, num_codebooks: int, num_frames: int) -> int:
    """``P``: pattern steps needed to place ``num_frames`` frames."""
    check_pattern(pattern, num_codebooks)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if pattern == "delay" and num_frames > 0:
        return num_frames + num_codebooks - 1
    return num_frames


def step_of(pattern: str, codebook: int, frame: int) -> int:
    """The step at which ``codes[codebook, frame]`` is placed (and predicted)."""
    return frame + codebook if pattern == "delay" else frame


def mel_frame_at_step(pattern: str, num_codebooks: int, step: int, extra: int = 0) -> int:
    """The mel frame read at input position ``step``; negative means the learned pad vector."""
    return step - 1 - mel_lag(pattern, num_codebooks, extra)


def predicted_at_step(
    pattern: str, num_codebooks: int, step: int, num_frames: int | None = None
) -> list[tuple[int, int]]:
    """``(codebook, frame)`` pairs predicted by the output of ``step`` (in scored-codebook order).

    With ``num_frames`` given, frames ``>= num_frames`` are left out (delay's tail steps).
    Codebook ``k`` missing from the list means the step places the pad id for it (delay's head
    and tail): a sampler must write the pad id ``V`` there, not a sampled token.
    """
    ks = scored_codebooks(pattern, num_codebooks)
    pairs = []
    for k in range(ks):
        f = step - k if pattern == "delay" else step
        if f >= 0 and (num_frames is None or f < num_frames):
            pairs.append((k, f))
    return pairs


def build_step_tokens(codes: torch.Tensor, pattern: str, pad_id: int) -> torch.Tensor:
    """Lay out frame codes ``(B, K, T)`` as placed step tokens ``(B, Kin, P)`` (pad where empty)."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be (B, K, T), got shape {tuple(codes.shape)}")
    B, K, T = codes.shape
    if pattern == "coarse":
        return codes[:, :1]
    if pattern in ("parallel", "depth"):
        return codes
    check_pattern(pattern, K)
    P = num_steps(pattern, K, T)
    out = codes.new_full((B, K, P), pad_id)
    for k in range(K):
        out[:, k, k : k + T] = codes[:, k]
    return out


def revert_step_tokens(step_tokens: torch.Tensor, pattern: str, num_frames: int) -> torch.Tensor:
    """Inverse of ``build_step_tokens``: placed step tokens ``(B, Kin, P)`` -> frame codes ``(B, Kin, T)``."""
    if pattern == "delay":
        K = step_tokens.shape[1]
        return torch.stack([step_tokens[:, k, k : k + num_frames] for k in range(K)], dim=1)
    return step_tokens[:, :, :num_frames]


def revert_logits(step_logits: torch.Tensor, pattern: str, num_frames: int) -> torch.Tensor:
    """Step logits ``(B, Ks, P, V)`` -> frame logits ``(B, Ks, T, V)``: ``out[:, k, t]`` scores ``codes[:, k, t]``."""
    if pattern == "delay":
        Ks = step_logits.shape[1]
        return torch.stack([step_logits[:, k, k : k + num_frames] for k in range(Ks)], dim=1)
    return step_logits[:, :, :num_frames]


def build_step_mel(
    mel: torch.Tensor, pattern: str, num_codebooks: int, steps: int, extra: int = 0
) -> torch.Tensor:
    """Mel ``(B, M, T)`` -> the mel read at input positions ``0 .. steps-1``: ``(B, M, steps)``.

    Position ``p`` gets frame ``p - 1 - lag``; positions with a negative frame (and frames past
    ``T``) are zero here, and the model replaces the first ``1 + lag`` positions by its learned
    pad vector.
    """
    if mel.dim() != 3:
        raise ValueError(f"mel must be (B, M, T), got shape {tuple(mel.shape)}")
    shift = 1 + mel_lag(pattern, num_codebooks, extra)
    out = mel.new_zeros(mel.shape[0], mel.shape[1], steps)
    n = max(0, min(steps - shift, mel.shape[-1]))
    out[:, :, shift : shift + n] = mel[:, :, :n]
    return out


def build_inputs(
    codes: torch.Tensor, mel: torch.Tensor | None, pattern: str, pad_id: int, extra_lag: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frame-space ``codes (B, K, T)`` + ``mel (B, M, T)`` -> input-position tokens and mel.

    Returns ``tokens (B, Kin, P)`` (the placed step tokens shifted right by one step, BOS = pad_id
    first) and ``mel (B, M, P)`` (see ``build_step_mel``; None if ``mel`` is None). Feeding these
    to the model for positions ``0 .. P-1`` gives step logits whose step ``p`` predicts the tokens
    placed at step ``p``. ``extra_lag``: ``model.mel_extra_lag`` (see ``mel_lag``).
    """
    K, T = codes.shape[1], codes.shape[2]
    placed = build_step_tokens(codes, pattern, pad_id)  # (B, Kin, P)
    bos = placed.new_full(placed.shape[:2] + (1,), pad_id)
    tokens = torch.cat([bos, placed[:, :, :-1]], dim=-1)
    step_mel = None if mel is None else build_step_mel(mel, pattern, K, num_steps(pattern, K, T), extra_lag)
    return tokens, step_mel
