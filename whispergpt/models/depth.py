"""The depth transformer of ``pattern: depth`` (RQ-Transformer, Lee et al. 2022; Moshi's Depformer).

The temporal decoder (``WhisperGPT.decoder``) runs once per frame: its output ``h_t`` at step
``t`` has read the tokens of frames ``< t`` and mel frames ``< t`` (mel lag 0: every codebook of
frame ``t - 1`` exists before step ``t`` starts). This module then predicts the K codebooks of
frame ``t`` in order, as a causal sequence of K positions of its own (width ``depth_dim``)::

    input  of position k = C_k h_t + E_k[codes[k - 1, t]]      (position 0: C_0 h_t only)
    output of position k -> head_k -> logits of codes[k, t]

- ``C_k`` (``d_model -> depth_dim``): one input projection per position, all K in one Linear.
  Chosen over one shared projection at position 0 (RQ-Transformer): every codebook reads the
  temporal state directly, which a 1-2 layer depth stack otherwise has to carry along (Moshi's
  Depformer does the same). Positions (RoPE or learned, from ``Stack``) are kept as they are.
- ``E_k`` (k = 1..K-1): one embedding table per codebook ``k - 1`` (V rows: no BOS/pad inside a
  frame), in one ``nn.Embedding`` addressed with offsets.
- ``head_k`` (``depth_dim -> V``): one head per codebook, ``head[k]`` of one ``(K, V, depth_dim)``
  parameter of this module (not a child Linear: the training forward reads it directly, and
  DeepSpeed ZeRO-3 gathers a module's own parameters for its forward); each position runs only its
  own head.

Training runs every frame and every codebook in one pass: the ``B*T`` frames are ``B*T``
independent length-K sequences through the ``Stack`` of ``blocks.py``. Sampling runs the same
blocks one position at a time (``Stack.step``) against a K-long KV cache (``DepthState``):
measured faster than re-running the growing sequence per codebook (benchmarks/bench_depth.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.models.blocks import BlockWeights, FastLinear, Int8Linear, LayerKV, Stack, decode_linear

if TYPE_CHECKING:
    from whispergpt.models.config import WhisperGPTConfig


class DepthState:
    """Sampling state of one frame: the depth KV cache (K positions), the frame's projected
    temporal context ``ctx (B, K, depth_dim)``, ``k`` (the next codebook to predict) and the
    ``DepthWeights`` the frame started with (None: the modules), so that the K - 1 later steps do
    not look the inference copies up again."""

    def __init__(self, kv: list[LayerKV]) -> None:
        self.kv = kv
        self.ctx: torch.Tensor | None = None
        self.k = 0
        self.w: DepthWeights | None = None


@dataclass
class DepthWeights:
    """Decode copies (``blocks.decode_linear``) for inference on CPU (see
    ``WhisperGPT._decode_weights``)."""

    ctx: FastLinear | Int8Linear
    blocks: list[BlockWeights]
    heads: list[FastLinear | Int8Linear]  # one per codebook

    @classmethod
    def of(cls, depth: DepthTransformer, decode_dtype: str = "fp32") -> DepthWeights:
        return cls(
            decode_linear(depth.ctx.weight, depth.ctx.bias, decode_dtype),
            [BlockWeights.of(b, decode_dtype) for b in depth.stack.blocks],
            [decode_linear(head, None, decode_dtype) for head in depth.head],
        )


class DepthTransformer(nn.Module):
    """Predicts the K codebooks of a frame in order from the temporal hidden state (module docstring)."""

    def __init__(self, cfg: WhisperGPTConfig) -> None:
        super().__init__()
        K, V, Dd = cfg.num_codebooks, cfg.codebook_size, cfg.depth_dim
        assert K >= 2, "WhisperGPTConfig rejects pattern depth with K < 2"
        self.num_codebooks, self.codebook_size, self.dim = K, V, Dd
        self.ctx = nn.Linear(cfg.d_model, K * Dd, bias=cfg.bias)
        self.emb = nn.Embedding((K - 1) * V, Dd)
        self.register_buffer("emb_offsets", torch.arange(K - 1) * V, persistent=False)
        # learned positions whatever cfg.pos_emb: K is fixed, and one add per step is cheaper than
        # RoPE in every layer (the per-position C_k already tell the positions apart)
        self.stack = Stack(
            Dd, cfg.depth_layers, cfg.depth_heads, dataclasses.replace(cfg, pos_emb="learned"), K
        )
        self.head = nn.Parameter(torch.empty(K, V, Dd))
        nn.init.normal_(self.head, 0.0, 0.02)  # as WhisperGPT._init_weights does every Linear

    def _context(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """``C_k h`` for positions ``k < n``: ``h (..., D)`` -> ``(..., n, Dd)``."""
        return self.ctx(h)[..., : n * self.dim].unflatten(-1, (n, self.dim))  # module call: ZeRO-3 hooks

    def hidden(self, h: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """Temporal states ``h (B, T, D)`` + the frames' ``codes (B, K, T)`` -> depth outputs
        ``(B, T, K, Dd)`` (final norm applied). ``codes=None``: position 0 only, ``(B, T, 1, Dd)``."""
        B, T, _ = h.shape
        n = 1 if codes is None else self.num_codebooks
        x = self._context(h, n)  # (B, T, n, Dd)
        if n > 1:
            prev = codes[:, : n - 1].transpose(1, 2) + self.emb_offsets  # (B, T, K-1): codebooks < K-1
            x = torch.cat([x[:, :, :1], x[:, :, 1:] + self.emb(prev).to(x.dtype)], dim=2)
        y = self.stack(x.reshape(B * T, n, self.dim), None, 0)  # B*T sequences of n positions
        return y.view(B, T, n, self.dim)

    def forward(self, h: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """``h (B, T, D)``, ``codes (B, K, T)`` -> logits ``(B, K, T, V)``: ``[:, k, t]`` scores
        ``codes[:, k, t]`` from ``h[:, t]`` and ``codes[:, :k, t]``. ``codes=None``: codebook 0 only."""
        y = self.hidden(h, codes)  # (B, T, n, Dd)
        n = y.shape[2]
        return torch.einsum("btkd,kvd->bktv", y, self.head[:n].to(y.dtype))

    # -- sampling: one position at a time ----------------------------------------------------------
    def new_state(self, batch: int, device, dtype) -> DepthState:
        return DepthState(self.stack.new_kv(batch, self.num_codebooks, device, dtype))

    def begin(self, h: torch.Tensor, state: DepthState, w: DepthWeights | None = None) -> torch.Tensor:
        """Start a frame from its temporal state ``h (B, D)``: logits ``(B, V)`` of codebook 0."""
        ctx = self.ctx(h) if w is None else w.ctx(h)  # (B, K*Dd)
        state.ctx = ctx.view(h.shape[0], self.num_codebooks, self.dim)
        state.k, state.w = 0, w
        return self._advance(state.ctx[:, 0], state)

    def step(self, tokens: torch.Tensor, state: DepthState) -> torch.Tensor:
        """``tokens (B,)`` of codebook ``state.k - 1`` -> logits ``(B, V)`` of codebook ``state.k``
        (with the weights ``begin`` was given)."""
        k = state.k
        if state.ctx is None or not 1 <= k < self.num_codebooks:
            raise ValueError(
                f"depth step {k} of {self.num_codebooks}: start each frame with WhisperGPT.step "
                "(codebook 0), then one depth_step per codebook 1..K-1"
            )
        emb = F.embedding(tokens + (k - 1) * self.codebook_size, self.emb.weight)  # table of codebook k-1
        return self._advance(state.ctx[:, k] + emb.to(state.ctx.dtype), state)

    def _advance(self, x: torch.Tensor, state: DepthState) -> torch.Tensor:
        k, w = state.k, state.w
        y = self.stack.step(x, state.kv, k, None if w is None else w.blocks)  # (B, Dd)
        state.k = k + 1
        if w is not None:
            return w.heads[k](y)
        return F.linear(y, self.head[k])
