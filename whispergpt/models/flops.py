"""Model FLOPs of training: the ``6 N`` rule plus the attention term (Kaplan et al. 2020).

Per position, one forward pass costs ``2 N`` (every matmul parameter is one multiply-add) plus,
in each causal layer of width ``W`` with ``C`` positions of context, ``2 W C`` for the score
(``QK^T``) and value (``AV``) products over the ``C / 2`` keys a position sees on average. The
backward pass costs twice the forward, so training costs

    F = 6 N + 6 * sum over stacks of L * W * C   FLOPs per position.

``N`` counts the weights of ``nn.Linear`` modules (heads included); embedding tables (lookups),
biases and norm gains are left out. Recomputation is not counted (model FLOPs, not hardware).
"""

from __future__ import annotations

from torch import nn


def matmul_params(module: nn.Module) -> int:
    """Parameters that take part in matmuls: ``nn.Linear`` weights (output heads included).

    Embedding tables (lookups, no FLOPs), biases and norm gains are left out, as in the usual
    ``6 N`` accounting (Kaplan et al. 2020; PaLM appendix B).
    """
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def train_flops_per_step(
    n_matmul: int, stacks: list[tuple[int, int]], batch: int, positions: int, causal: bool = False
) -> float:
    """Model FLOPs of one training step (forward + backward), PaLM's formula.

    ``6 * N * B * P + sum over stacks of 12 * L * W * P * B * P``: ``N`` matmul parameters, ``B``
    sequences of ``P`` positions, and for each transformer stack of ``L`` layers and width ``W``
    the attention score/value products (``QK^T`` and ``AV``: 2 * 2 * W * P FLOPs per position and
    layer forward, x3 for forward + backward), counted without the causal halving, as PaLM does;
    ``causal=True`` halves that term (a causal kernel computes only the lower triangle, as
    FlashAttention-style kernels and nanoGPT/Megatron MFU do: 6 instead of 12, the module
    docstring's formula).
    """
    per_layer = 6 if causal else 12
    attn = sum(per_layer * layers * width * positions for layers, width in stacks)
    return float(batch * positions * (6 * n_matmul + attn))


def whispergpt_flops_per_frame(model: nn.Module) -> dict:
    """Training FLOPs per frame of a ``WhisperGPT`` (the module docstring's formula, causal).

    A frame is one pattern step: one decoder position (two with ``fusion: interleave``), one
    position of the mel branch, and the ``Ks`` head rows that score its tokens; with ``depth``,
    also the depth transformer's ``K`` positions (a stack of context ``K``) and their heads.
    ``delay``'s ``K - 1`` extra steps per window are left out (under 1 % at a few hundred frames);
    ``semantic: prefix`` adds its ``ceil(context / g)`` decoder positions per window (spread over its frames).
    Returns ``{"n_matmul", "flops_per_frame", "context"}``.
    """
    c = model.config
    pps = c.positions_per_step
    n_decoder = matmul_params(model.decoder)
    n_mel = matmul_params(model.mel_branch) if model.mel_branch is not None else 0
    n_proj = matmul_params(model.mel_proj) if model.mel_proj is not None else 0
    depth = getattr(model, "depth", None)
    # the temporal heads (tied or not, a matmul); with pattern depth the heads are the depth stack's
    n_head = 0 if depth is not None else model.num_scored_codebooks * c.codebook_size * c.d_model
    # semantic prefix: ceil(context / g) more decoder positions per window, no head, no mel branch
    dec = pps + c.max_prefix / c.context  # decoder positions per frame
    flops = 6 * (dec * n_decoder + n_mel + pps * n_proj + n_head)
    flops += 6 * dec * c.n_layers * c.d_model * (pps * c.context + c.max_prefix)
    if model.mel_branch is not None:
        flops += 6 * c.mel_layers * c.mel_dim * c.context
    n = n_decoder + n_mel + n_proj + n_head
    if depth is not None:  # per frame: one context projection, then K positions of the depth stack
        K, n_ctx, n_stack = c.num_codebooks, matmul_params(depth.ctx), matmul_params(depth.stack)
        n_heads = depth.head.numel()  # (K, V, depth_dim): each position runs its own head
        flops += 6 * (n_ctx + K * n_stack + n_heads) + 6 * K * c.depth_layers * c.depth_dim * K
        n += n_ctx + n_stack + n_heads
    return dict(n_matmul=n, flops_per_frame=float(flops), context=c.context)
