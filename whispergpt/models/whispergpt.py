"""The Whisper-GPT hybrid decoder (Verma 2024) and its token-only baseline.

At every pattern step (see ``whispergpt.patterns``) the model reads the tokens placed at the
previous step (codebook embeddings summed, MusicGen-style) and, unless ``fusion="none"``, the
lagged log-mel frame passed through a small causal transformer (the "mel branch", width
``mel_dim``). The two are fused (``concat`` | ``sum`` | ``interleave``), a pre-norm GPT decoder
runs over the steps, and ``Ks`` heads predict the tokens placed at the current step.

Fusions: ``concat`` (paper) = [token embedding (d_model - mel_dim) ; mel branch (mel_dim)];
``sum`` = token embedding + Linear(mel_dim -> d_model)(mel branch); ``interleave`` = two decoder
positions per step, [mel position, token position], logits taken from the token position only
(the decoder runs over 2P positions); ``none`` = token-only baseline, no mel parameters at all.
With RoPE, windows longer than ``context`` run (positions are not tabulated); learned positions
cover exactly ``context`` frames (plus delay's K - 1 steps, doubled for interleave).

Public API:

- ``WhisperGPTConfig``: validated dataclass, saved as ``config.json``.
- ``WhisperGPT(config)``: ``model(codes (B,K,T), mel (B,M,T) | None) -> WhisperGPTOutput`` with
  ``logits (B, Ks, T, V)`` where ``logits[:, k, t]`` scores ``codes[:, k, t]``.
- ``nll_per_codebook(logits, codes, mask=None) -> (nll_sum (Ks,) float64, count (Ks,) int64)``.
- Incremental decoding in step space: ``new_cache``, ``forward_steps`` (prefill), ``step``. In
  inference (eval, no autograd) ``step`` runs a per-cache ``_DecodePlan`` (flattened blocks,
  CPU weights in ``addmm``'s right-operand layout, RoPE tables per cache): same values as
  ``forward_steps`` up to float rounding, about half the ops.
- ``save_pretrained(dir)`` / ``WhisperGPT.from_pretrained(dir)``: ``config.json`` + ``model.safetensors``.

Parameter counts (``num_parameters()``) include every parameter: embeddings, heads, mel branch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import patterns as pt

FUSIONS = ("concat", "sum", "interleave", "none")
POS_EMBS = ("rope", "learned")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass
class WhisperGPTConfig:
    """Model hyper-parameters. ``fusion="none"`` is the token-only baseline (mel fields ignored)."""

    num_codebooks: int = 8  # K of the data (EnCodec 6 kbps -> 8)
    codebook_size: int = 1024  # V; token id V is the BOS/pad id
    n_mels: int = 80  # M
    pattern: Literal["coarse", "parallel", "delay"] = "coarse"
    fusion: Literal["concat", "sum", "interleave", "none"] = "concat"
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    context: int = 512  # frames per training window
    mel_dim: int = 32  # mel branch width (paper: 32)
    mel_layers: int = 2
    mel_heads: int = 2
    pos_emb: Literal["rope", "learned"] = "rope"
    tie_weights: bool = False
    bias: bool = True
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.pattern not in pt.PATTERNS:
            raise ValueError(f"pattern must be one of {list(pt.PATTERNS)}, got {self.pattern!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb must be one of {list(POS_EMBS)}, got {self.pos_emb!r}")
        for name in ("num_codebooks", "n_mels", "d_model", "n_layers", "n_heads", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self._check_heads("d_model", self.d_model, "n_heads", self.n_heads)
        if self.fusion != "none":
            if self.mel_dim < 1 or self.mel_layers < 0:
                raise ValueError(
                    f"fusion {self.fusion!r} needs mel_dim >= 1 and mel_layers >= 0, "
                    f"got mel_dim={self.mel_dim}, mel_layers={self.mel_layers}"
                )
            if self.mel_layers > 0:
                self._check_heads("mel_dim", self.mel_dim, "mel_heads", self.mel_heads)
            if self.fusion == "concat" and self.mel_dim >= self.d_model:
                raise ValueError(
                    f"fusion 'concat' needs mel_dim < d_model (the token embedding gets d_model - mel_dim), "
                    f"got mel_dim={self.mel_dim}, d_model={self.d_model}"
                )
        if self.tie_weights and self.fusion == "concat":
            raise ValueError(
                "tie_weights needs token embeddings of width d_model, but fusion 'concat' gives them "
                "d_model - mel_dim: use tie_weights=false or another fusion"
            )

    def _check_heads(self, dim_name: str, dim: int, heads_name: str, heads: int) -> None:
        if heads < 1 or dim % heads != 0:
            raise ValueError(
                f"{dim_name} must be divisible by {heads_name}, got {dim_name}={dim}, {heads_name}={heads}"
            )
        if self.pos_emb == "rope" and (dim // heads) % 2 != 0:
            raise ValueError(
                f"RoPE needs an even head width, got {dim_name}/{heads_name} = {dim}/{heads} = {dim // heads}"
            )

    # -- derived sizes ------------------------------------------------------------------------
    @property
    def input_codebooks(self) -> int:
        return pt.input_codebooks(self.pattern, self.num_codebooks)

    @property
    def scored_codebooks(self) -> int:
        return pt.scored_codebooks(self.pattern, self.num_codebooks)

    @property
    def max_steps(self) -> int:
        """Pattern steps for a ``context``-frame window (delay adds K - 1)."""
        return pt.num_steps(self.pattern, self.num_codebooks, self.context)

    @property
    def positions_per_step(self) -> int:
        return 2 if self.fusion == "interleave" else 1

    @property
    def mel_lag(self) -> int:
        return pt.mel_lag(self.pattern, self.num_codebooks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def rope_cos_sin(
    start: int, length: int, head_dim: int, base: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(length, head_dim)`` for absolute positions ``start .. start+length-1`` (fp32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (N, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, hd), rotate-half layout
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (B, H, N, hd)`` by the tables of its N positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LayerKV:
    """Preallocated keys/values of one attention layer: ``(B, H, L, hd)`` each."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int, device, dtype) -> None:
        self.k = torch.zeros(batch, heads, length, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj.residual = True  # scaled init
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple | None, kv: LayerKV | None, start: int) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (
            self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3x (B,H,N,hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        p = self.dropout if self.training else 0.0
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            end = start + N
            if end > kv.k.shape[2]:
                raise ValueError(
                    f"KV cache holds {kv.k.shape[2]} positions, this call needs {end}: make a larger cache"
                )
            kv.k[:, :, start:end] = k.to(kv.k.dtype)
            kv.v[:, :, start:end] = v.to(kv.v.dtype)
            keys, values = kv.k[:, :, :end].to(q.dtype), kv.v[:, :, :end].to(q.dtype)
            if N == 1:  # one new query sees every cached position
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p)
            elif start == 0:
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p, is_causal=True)
            else:  # query i sits at absolute position start + i
                allowed = torch.ones(N, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, N, D)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        super().__init__()
        hidden = int(round(mlp_ratio * dim))
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = CausalSelfAttention(dim, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.out = nn.Linear(hidden, dim, bias=bias)
        self.out.residual = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple | None, kv: LayerKV | None, start: int) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, kv, start)
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class Stack(nn.Module):
    """Causal blocks + final norm, with RoPE or learned positions."""

    def __init__(self, dim: int, layers: int, heads: int, cfg: WhisperGPTConfig, max_positions: int) -> None:
        super().__init__()
        self.heads, self.rope_base, self.max_positions = heads, cfg.rope_base, max_positions
        self.pos = nn.Embedding(max_positions, dim) if cfg.pos_emb == "learned" else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.dropout, cfg.bias) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor, kvs: list[LayerKV] | None, start: int) -> torch.Tensor:
        N = x.shape[1]
        if start + N > self.max_positions and self.pos is not None:
            raise ValueError(
                f"learned positions cover {self.max_positions} positions, got {start + N}: "
                "raise context or use pos_emb=rope"
            )
        rope = None
        if self.pos is not None:
            x = x + self.pos(torch.arange(start, start + N, device=x.device))
        elif len(self.blocks) > 0:
            rope = rope_cos_sin(start, N, x.shape[-1] // self.heads, self.rope_base, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, None if kvs is None else kvs[i], start)
        return self.ln_f(x)

    def new_kv(self, batch: int, length: int, device, dtype) -> list[LayerKV]:
        dim = self.ln_f.normalized_shape[0]
        return [LayerKV(batch, self.heads, length, dim // self.heads, device, dtype) for _ in self.blocks]


class MelBranch(nn.Module):
    """The paper's lightweight causal decoder over mel slices: Linear(M -> mel_dim) + causal blocks.

    Input positions whose mel frame index is negative (the first ``1 + lag`` steps) use a learned
    pad vector instead of the projected mel.
    """

    def __init__(self, cfg: WhisperGPTConfig, max_steps: int) -> None:
        super().__init__()
        self.lag = cfg.mel_lag
        self.inp = nn.Linear(cfg.n_mels, cfg.mel_dim, bias=cfg.bias)
        self.pad = nn.Parameter(torch.zeros(cfg.mel_dim))
        self.stack = Stack(cfg.mel_dim, cfg.mel_layers, cfg.mel_heads, cfg, max_steps)

    def forward(self, mel: torch.Tensor, kvs: list[LayerKV] | None, start: int) -> torch.Tensor:
        # mel: (B, M, P) at input positions start .. start+P-1 -> (B, P, mel_dim)
        x = self.inp(mel.transpose(1, 2))
        steps = torch.arange(start, start + x.shape[1], device=x.device)
        is_pad = (steps < 1 + self.lag)[None, :, None]
        x = torch.where(is_pad, self.pad.to(x.dtype), x)
        return self.stack(x, kvs, start)


@dataclass
class WhisperGPTOutput:
    """``logits (B, Ks, T, V)``: ``logits[:, k, t]`` scores ``codes[:, k, t]``."""

    logits: torch.Tensor


class WhisperGPTCache:
    """Incremental-decoding state: per-layer KV buffers and ``steps`` (input positions consumed).

    Made by ``WhisperGPT.new_cache``; ``steps`` is the index of the next pattern step fed to
    ``step``/``forward_steps``. A cache is tied to its batch size and ``max_steps``.
    """

    def __init__(self, main: list[LayerKV], mel: list[LayerKV] | None, max_steps: int) -> None:
        self.main, self.mel, self.max_steps = main, mel, max_steps
        self.steps = 0
        self.plan: _DecodePlan | None = None  # built by the first fast ``step`` (see ``_DecodePlan``)


# ---------------------------------------------------------------------------------------------
# Fast one-position decode (the sampler's hot loop)
# ---------------------------------------------------------------------------------------------
def _decode_weight(w: torch.Tensor) -> torch.Tensor:
    """``w (out, in)`` as the ``(in, out)`` right operand of ``addmm``.

    On CPU a contiguous copy: MKL's sgemm with a transposed right operand (what ``F.linear`` passes)
    is ~1.1-1.5x slower at batch 1 and ~2x slower at batch 8 for these small-row products
    (measured, docs/PERFORMANCE.md). Elsewhere a view (cuBLAS takes either layout at full speed).
    """
    w = w.detach()
    return w.t().contiguous() if w.device.type == "cpu" else w.t()


def _lin(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(x, wt) if b is None else torch.addmm(b, x, wt)


class _StackPlan:
    """One ``Stack``'s weights flattened for ``_step``: one position ``(B, W)`` through all blocks.

    RoPE tables cover the cache's positions once (``rope_cos_sin`` gives each position the same
    values whatever the call's start, so the tables equal the per-call ones); the sine is stored
    with the rotate-half sign folded in, so rotating is flip + 2 mul + add instead of 2 slices,
    a neg, a cat, 2 mul and an add.
    """

    def __init__(self, stack: Stack, length: int) -> None:
        ln = stack.ln_f
        self.width, self.heads, self.eps = ln.normalized_shape[0], stack.heads, ln.eps
        self.head_dim = self.width // self.heads
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        self.layers = [
            (d(b.ln1.weight), d(b.ln1.bias), _decode_weight(b.attn.qkv.weight), d(b.attn.qkv.bias),
             _decode_weight(b.attn.proj.weight), d(b.attn.proj.bias), d(b.ln2.weight), d(b.ln2.bias),
             _decode_weight(b.fc.weight), d(b.fc.bias), _decode_weight(b.out.weight), d(b.out.bias),
             b.ln1.eps, b.ln2.eps)
            for b in stack.blocks
        ]  # fmt: skip
        self.ln_f = (d(ln.weight), d(ln.bias))
        self.pos = None if stack.pos is None else stack.pos.weight.detach()
        self.cos = self.sin = None
        if stack.pos is None and self.layers:
            ref = stack.ln_f.weight
            cos, sin = rope_cos_sin(0, length, self.head_dim, stack.rope_base, ref.device)
            half = self.head_dim // 2
            sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
            # (L, 1, 1, hd): broadcast over (B, q|k, H, hd)
            self.cos, self.sin = cos[:, None, None].contiguous(), sin[:, None, None].contiguous()

    def step(self, x: torch.Tensor, kvs: list[LayerKV], pos: int) -> torch.Tensor:
        """``x (B, W)`` at absolute position ``pos`` -> final-norm output ``(B, W)``; writes the KV."""
        B, W, H, hd = x.shape[0], self.width, self.heads, self.head_dim
        if self.pos is not None:
            x = x + self.pos[pos]
        end = pos + 1
        for (
            ln1w,
            ln1b,
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
            ln2w,
            ln2b,
            fc_w,
            fc_b,
            out_w,
            out_b,
            e1,
            e2,
        ), kv in zip(self.layers, kvs):
            qkv = _lin(torch.layer_norm(x, (W,), ln1w, ln1b, e1), qkv_w, qkv_b).view(B, 3, H, hd)
            qk, v = qkv[:, :2], qkv[:, 2]  # (B, 2, H, hd): q and k rotated together
            if self.cos is not None:
                swapped = qk.view(B, 2, H, 2, hd // 2).flip(-2).view(B, 2, H, hd)
                qk = qk * self.cos[pos] + swapped * self.sin[pos]
            kv.k[:, :, pos] = qk[:, 1]
            kv.v[:, :, pos] = v
            y = F.scaled_dot_product_attention(qk[:, 0, :, None], kv.k[:, :, :end], kv.v[:, :, :end])
            x = x + _lin(y.reshape(B, W), proj_w, proj_b)  # (B, H, 1, hd) -> (B, W)
            h = _lin(torch.layer_norm(x, (W,), ln2w, ln2b, e2), fc_w, fc_b)
            x = x + _lin(F.gelu(h), out_w, out_b)
        return torch.layer_norm(x, (W,), *self.ln_f, self.eps)


class _DecodePlan:
    """Everything ``WhisperGPT._step`` reads, fixed once per cache: detached weights (right-operand
    layout, see ``_decode_weight``), RoPE tables for the cache's positions. Built from the weights
    as they are when the cache is first stepped: a cache must not outlive a weight update.
    """

    def __init__(self, model: WhisperGPT, cache: WhisperGPTCache) -> None:
        c = model.config
        pps = c.positions_per_step
        self.dtype = model.tok_emb.weight.dtype
        self.tok_table = model.tok_emb.weight.detach()
        self.decoder = _StackPlan(model.decoder, cache.max_steps * pps)
        self.head = _decode_weight(model._head_weight())  # (D, Ks*V)
        self.mel = self.mel_inp = self.mel_pad = self.mel_proj = None
        if model.mel_branch is not None:
            mb = model.mel_branch
            self.mel = _StackPlan(mb.stack, cache.max_steps)
            self.mel_inp = (
                _decode_weight(mb.inp.weight),
                None if mb.inp.bias is None else mb.inp.bias.detach(),
            )
            self.mel_pad = mb.pad.detach()
            if model.mel_proj is not None:
                p = model.mel_proj
                self.mel_proj = (_decode_weight(p.weight), None if p.bias is None else p.bias.detach())


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class WhisperGPT(nn.Module):
    """Hybrid mel + token GPT decoder (see the module docstring and ``whispergpt.patterns``)."""

    def __init__(self, config: WhisperGPTConfig) -> None:
        super().__init__()
        if not isinstance(config, WhisperGPTConfig):
            raise ValueError(f"WhisperGPT needs a WhisperGPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.num_input_codebooks = c.input_codebooks
        self.num_scored_codebooks = c.scored_codebooks
        self.pad_id = c.codebook_size
        # Room for delay's extra steps; RoPE is not limited by it, learned positions are.
        max_steps = c.max_steps
        tok_dim = c.d_model - c.mel_dim if c.fusion == "concat" else c.d_model
        # Kin tables of V + 1 rows (id V = BOS/pad) in one Embedding, addressed with offsets.
        self.tok_emb = nn.Embedding(self.num_input_codebooks * (c.codebook_size + 1), tok_dim)
        self.register_buffer(
            "tok_offsets", torch.arange(self.num_input_codebooks) * (c.codebook_size + 1), persistent=False
        )
        self.mel_branch = MelBranch(c, max_steps) if c.fusion != "none" else None
        self.mel_proj = (
            nn.Linear(c.mel_dim, c.d_model, bias=c.bias) if c.fusion in ("sum", "interleave") else None
        )
        self.drop = nn.Dropout(c.dropout)
        self.decoder = Stack(c.d_model, c.n_layers, c.n_heads, c, max_steps * c.positions_per_step)
        # Ks heads in one matrix; tied heads reuse rows 0..V-1 of each codebook's table.
        self.head = (
            None
            if c.tie_weights
            else nn.Linear(c.d_model, self.num_scored_codebooks * c.codebook_size, bias=False)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 * layers).
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                layers = self.config.mel_layers if name.startswith("mel_branch") else self.config.n_layers
                std = 0.02 / math.sqrt(2 * max(1, layers)) if getattr(m, "residual", False) else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
        if self.mel_branch is not None:
            nn.init.normal_(self.mel_branch.pad, 0.0, 0.02)

    def num_parameters(self) -> int:
        """All parameters, embeddings, heads and mel branch included."""
        return sum(p.numel() for p in self.parameters())

    # -- step space ---------------------------------------------------------------------------
    def _head_weight(self) -> torch.Tensor:
        if self.head is not None:
            return self.head.weight
        V = self.config.codebook_size
        table = self.tok_emb.weight.view(self.num_input_codebooks, V + 1, -1)
        return table[:, :V].reshape(self.num_scored_codebooks * V, -1)

    def forward_steps(
        self, step_tokens: torch.Tensor, step_mel: torch.Tensor | None, cache: WhisperGPTCache | None = None
    ) -> torch.Tensor:
        """Run P consecutive input positions; returns step logits ``(B, Ks, P, V)``.

        ``step_tokens (B, Kin, P)``: at input position ``p`` the tokens placed at step ``p - 1``
        (pad id ``V`` at ``p = 0`` and wherever the pattern places nothing), see
        ``patterns.build_inputs``. ``step_mel (B, M, P)``: mel frame ``p - 1 - lag`` at position
        ``p`` (ignored, may hold anything, for ``p < 1 + lag``; may be None when every position
        is such a pad position or with ``fusion="none"``). Output ``[:, :, i]`` predicts the
        tokens placed at step ``start + i``.

        Without a cache the positions start at 0 (training). With a cache they start at
        ``cache.steps`` and the cache advances by P: call it once with the prompt (prefill), then
        ``step`` one position at a time; the logits equal those of one full call.
        """
        h = self._hidden_steps(step_tokens, step_mel, cache)  # (B, P, D)
        B, P = h.shape[:2]
        logits = F.linear(h, self._head_weight())  # (B, P, Ks*V)
        return logits.view(B, P, self.num_scored_codebooks, self.config.codebook_size).transpose(1, 2)

    def _hidden_steps(
        self, step_tokens: torch.Tensor, step_mel: torch.Tensor | None, cache: WhisperGPTCache | None
    ) -> torch.Tensor:
        """``forward_steps`` up to the final norm: hidden states ``(B, P, D)``; advances ``cache``."""
        c = self.config
        if step_tokens.dim() != 3 or step_tokens.shape[1] != self.num_input_codebooks:
            raise ValueError(
                f"step_tokens must be (B, {self.num_input_codebooks}, P), got shape {tuple(step_tokens.shape)}"
            )
        B, _, P = step_tokens.shape
        start = 0 if cache is None else cache.steps
        if cache is not None and start + P > cache.max_steps:
            raise ValueError(f"cache holds {cache.max_steps} steps, this call needs {start + P}")
        # token embedding: sum over the Kin codebooks -> (B, P, E)
        x = self.tok_emb(step_tokens + self.tok_offsets[None, :, None]).sum(dim=1)
        if self.mel_branch is not None:
            if step_mel is None:
                if start + P > 1 + c.mel_lag:
                    raise ValueError(f"fusion {c.fusion!r} needs step_mel for steps >= {1 + c.mel_lag}")
                step_mel = x.new_zeros(B, c.n_mels, P)
            if step_mel.shape != (B, c.n_mels, P):
                raise ValueError(
                    f"step_mel must be (B, M, P) = {(B, c.n_mels, P)}, got {tuple(step_mel.shape)}"
                )
            m = self.mel_branch(
                step_mel.to(x.dtype), None if cache is None else cache.mel, start
            )  # (B, P, mel_dim)
            if c.fusion == "concat":
                x = torch.cat([x, m.to(x.dtype)], dim=-1)
            elif c.fusion == "sum":
                x = x + self.mel_proj(m)
            else:  # interleave: positions [mel_p, token_p] per step -> (B, 2P, D)
                x = torch.stack([self.mel_proj(m).to(x.dtype), x], dim=2).reshape(B, 2 * P, c.d_model)
        pps = c.positions_per_step
        h = self.decoder(self.drop(x), None if cache is None else cache.main, start * pps)
        if pps == 2:
            h = h[:, 1::2]  # logits only at the token position of each step
        if cache is not None:
            cache.steps += P
        return h

    def _frame_logits(self, h: torch.Tensor, T: int) -> torch.Tensor:
        """Step hidden states ``h (B, P, D)`` -> frame logits ``(B, Ks, T, V)``.

        Equal to ``revert_logits(forward_steps(...))``, but the head runs only on the (codebook,
        frame) pairs that exist: delay's padded steps get no logits, and the backward pass does
        not write one zero-filled full-size logits gradient per codebook (as slicing the step
        logits per codebook would: the largest cost of a CPU training step before).
        """
        Ks, V = self.num_scored_codebooks, self.config.codebook_size
        W = self._head_weight()  # (Ks*V, D)
        if self.config.pattern != "delay":
            return F.linear(h[:, :T], W).view(h.shape[0], T, Ks, V).transpose(1, 2)
        # codes[:, k, t] is predicted at step t + k
        idx = torch.arange(T, device=h.device)[:, None] + torch.arange(Ks, device=h.device)  # (T, Ks)
        return torch.einsum("btkd,kvd->bktv", h[:, idx], W.view(Ks, V, -1))

    def new_cache(
        self,
        batch_size: int,
        max_steps: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> WhisperGPTCache:
        """An empty cache for ``max_steps`` pattern steps (defaults: the model's device and dtype)."""
        if batch_size < 1 or max_steps < 1:
            raise ValueError(f"batch_size and max_steps must be >= 1, got {batch_size}, {max_steps}")
        ref = self.tok_emb.weight
        device = ref.device if device is None else torch.device(device)
        dtype = ref.dtype if dtype is None else dtype
        main = self.decoder.new_kv(batch_size, max_steps * self.config.positions_per_step, device, dtype)
        mel = (
            None
            if self.mel_branch is None
            else self.mel_branch.stack.new_kv(batch_size, max_steps, device, dtype)
        )
        return WhisperGPTCache(main, mel, max_steps)

    def step(
        self, step_tokens: torch.Tensor, step_mel: torch.Tensor | None, cache: WhisperGPTCache
    ) -> torch.Tensor:
        """One input position: ``step_tokens (B, Kin)``, ``step_mel (B, M)`` or None -> ``(B, Ks, V)``.

        Feed at position ``p = cache.steps`` the tokens placed at step ``p - 1`` (pad id ``V`` at
        ``p = 0``) and mel frame ``p - 1 - lag`` (None while that is negative, see
        ``patterns.mel_frame_at_step``). The returned logits predict the tokens placed at step
        ``p`` (``patterns.predicted_at_step``); the cache advances by one.
        """
        c = self.config
        if step_tokens.dim() != 2 or step_tokens.shape[1] != self.num_input_codebooks:
            raise ValueError(
                f"step_tokens must be (B, {self.num_input_codebooks}), got shape {tuple(step_tokens.shape)}"
            )
        B = step_tokens.shape[0]
        if cache.steps + 1 > cache.max_steps:
            raise ValueError(f"cache holds {cache.max_steps} steps, this call needs {cache.steps + 1}")
        if cache.main and cache.main[0].k.shape[0] != B:
            raise ValueError(
                f"the cache was made for batch {cache.main[0].k.shape[0]}, got step_tokens of batch {B}"
            )
        if self.mel_branch is not None:
            if step_mel is None and cache.steps + 1 > 1 + c.mel_lag:
                raise ValueError(f"fusion {c.fusion!r} needs step_mel for steps >= {1 + c.mel_lag}")
            if step_mel is not None and step_mel.shape != (B, c.n_mels):
                raise ValueError(f"step_mel must be (B, M) = {(B, c.n_mels)}, got {tuple(step_mel.shape)}")
        return self._step(step_tokens, step_mel, cache)

    def _step(
        self, step_tokens: torch.Tensor, step_mel: torch.Tensor | None, cache: WhisperGPTCache
    ) -> torch.Tensor:
        """``step`` without its argument checks (the sampler's hot loop; the caller guarantees them).

        Inference (eval mode, no autograd, cache in the weights' dtype) runs ``_DecodePlan``: one
        position through flattened ops, ~half the ops of ``forward_steps`` and the same values up
        to float rounding (``tests/test_model.py``); anything else goes through ``forward_steps``.
        """
        plan = cache.plan
        fast = not (self.training or torch.is_grad_enabled())
        if fast and plan is None:
            kv = cache.main[0].k if cache.main else None
            if kv is None or kv.dtype == self.tok_emb.weight.dtype:
                with torch.no_grad():
                    plan = cache.plan = _DecodePlan(self, cache)
        if not fast or plan is None:
            mel = None if step_mel is None else step_mel[:, :, None]
            return self.forward_steps(step_tokens[:, :, None], mel, cache)[:, :, 0]
        c, start = self.config, cache.steps
        B = step_tokens.shape[0]
        # token embedding summed over the Kin codebooks: (B, Kin) -> (B, E)
        x = torch.embedding(plan.tok_table, step_tokens + self.tok_offsets).sum(dim=1)
        pos = start
        if plan.mel is not None:
            if start < 1 + c.mel_lag or step_mel is None:  # mel frame index < 0: the learned pad
                m = plan.mel_pad.expand(B, -1)
            else:
                m = _lin(step_mel.to(plan.dtype), *plan.mel_inp)
            m = plan.mel.step(m, cache.mel, start)  # (B, mel_dim)
            if c.fusion == "concat":
                x = torch.cat([x, m], dim=-1)
            elif c.fusion == "sum":
                x = x + _lin(m, *plan.mel_proj)
            else:  # interleave: the mel position first (its output is not scored), then the tokens
                pos = 2 * start
                plan.decoder.step(_lin(m, *plan.mel_proj), cache.main, pos)
                pos += 1
        h = plan.decoder.step(x, cache.main, pos)
        cache.steps = start + 1
        return torch.mm(h, plan.head).view(B, self.num_scored_codebooks, c.codebook_size)

    # -- frame space --------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, mel: torch.Tensor | None = None) -> WhisperGPTOutput:
        """``codes (B, K, T)`` long + ``mel (B, M, T)`` -> logits ``(B, Ks, T, V)`` aligned with ``codes``."""
        c = self.config
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, K, T), got shape {tuple(codes.shape)}")
        B, K, T = codes.shape
        need = 1 if c.pattern == "coarse" else c.num_codebooks
        if K < need or (c.pattern != "coarse" and K != need):
            raise ValueError(f"pattern {c.pattern!r} needs codes with K={need} codebooks, got K={K}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be integer (long), got {codes.dtype}")
        if codes.numel():
            lo, hi = torch.stack(torch.aminmax(codes)).tolist()  # one host-device sync, not two
            if lo < 0 or hi >= c.codebook_size:
                raise ValueError(f"codes must lie in [0, {c.codebook_size - 1}], got [{lo}, {hi}]")
        if c.fusion != "none":
            if mel is None:
                raise ValueError(f"fusion {c.fusion!r} needs mel (B, M, T); pass fusion=none for token-only")
            if mel.shape != (B, c.n_mels, T):
                raise ValueError(f"mel must be (B, M, T) = {(B, c.n_mels, T)}, got {tuple(mel.shape)}")
        else:
            mel = None  # token-only baseline: mel is ignored
        tokens, step_mel = pt.build_inputs(codes.long(), mel, c.pattern, self.pad_id)
        h = self._hidden_steps(tokens, step_mel, None)  # (B, P, D)
        return WhisperGPTOutput(logits=self._frame_logits(h, T))

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: torch.device | str | None = None
    ) -> WhisperGPT:
        """Load a ``save_pretrained`` directory (no pickle)."""
        from safetensors.torch import load_file

        from ..config import from_dict

        d = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (d / name).is_file():
                raise OSError(f"{d} is not a WhisperGPT save_pretrained directory: {name} is missing")
        config = from_dict(WhisperGPTConfig, json.loads((d / "config.json").read_text()), "model")
        model = cls(config)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model if device is None else model.to(device)


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
