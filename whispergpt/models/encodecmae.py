"""EnCodecMAE (Pepino, Riera, Ferrer 2023): a masked audio encoder trained to predict codec codes.

A bidirectional transformer encoder reads the *visible* frames of a span-masked window of input
features (``input: latent``, the codec encoder's continuous output, as in the paper; or ``input:
mel``, our causal log-mel), at 75 frames/s. A light bidirectional decoder reads all frames (the
encoder's outputs at the visible ones, a learned mask vector at the masked ones) and predicts, at
every frame, the discrete targets: the codec codes of every codebook (``targets: codes``), the
frame's k-means cluster of a previous model's features (``kmeans``, the paper's self-training
stage), or both.

Public API:

- ``EnCodecMAEConfig``: validated dataclass (the run config's ``mae:`` section), saved as
  ``config.json``.
- ``EnCodecMAE(config)(x (B, C, T), codes (B, K, T) | None, semantic (B, T) | None, generator)``
  -> ``(objective, nll_sum (S,) float64, count (S,) int64)``. ``S`` target streams: the K
  codebooks (codes), then the cluster stream (kmeans). ``nll_sum / count`` is the NLL of each
  stream over the **masked frames only**; ``objective`` = ``masked_weight`` x (weighted mean NLL of
  the masked frames) + ``visible_weight`` x (the same over the visible frames), each stream
  weighted by ``codebook_weights`` / ``kmeans_weight``.
- ``span_mask(B, T, ratio, span, generator)``: the masks; ``EnCodecMAE.predict`` gives the mask
  and the logits of every frame (for tests and inspection).
- ``encode(x (B, C, T), layer=None) -> (B, T, D)``: the encoder on unmasked input, any length.
- ``save_pretrained(dir)`` / ``EnCodecMAE.from_pretrained(dir_or_hub_id)`` (``models.registry.HubModel``):
  ``config.json`` (with ``"model_type": "encodecmae"``) + ``model.safetensors``.

Masks: in training they are drawn from the global RNG (which the trainer checkpoints, so a resumed
run draws the same masks); in eval mode from a generator seeded with ``EVAL_MASK_SEED`` at every
call, so a validation NLL is reproducible; an explicit ``generator`` overrides both. Every item of
a batch masks the same number of frames, so the visible frames form a dense ``(B, Nv)`` tensor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from whispergpt.models.blocks import Stack
from whispergpt.models.loss import nll_per_codebook
from whispergpt.models.registry import HubModel

EVAL_MASK_SEED = 0  # eval-mode masks: the same for every call, so validation NLL is reproducible
INPUTS = ("latent", "mel")
TARGETS = ("codes", "kmeans", "both")


@dataclass
class EnCodecMAEConfig:
    """Hyper-parameters; ``null`` shape fields are filled from the prepared dataset by the trainer."""

    input: Literal["latent", "mel"] = "mel"  # latent: codec encoder output (the paper); mel: causal log-mel
    in_dim: int | None = None  # C: input feature width (n_mels or the latent width)
    num_codebooks: int | None = None  # K: codec codebooks predicted (targets codes | both)
    codebook_size: int | None = None  # V
    n_layers: int = 4  # encoder
    d_model: int = 256
    n_heads: int = 4
    decoder_layers: int = 2
    decoder_d_model: int | None = None  # null = d_model
    decoder_heads: int | None = None  # null = n_heads
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    rope_base: float = 10000.0
    mask_ratio: float = 0.5  # fraction of each window's frames masked (rounded; at least 1, at most T-1)
    span: int = 15  # frames per masked span (15 = 200 ms, the paper's)
    masked_weight: float = 0.9  # loss weight of the masked frames' mean NLL (paper: 0.9) ...
    visible_weight: float = 0.1  # ... and of the visible frames' (paper: 1 - 0.9)
    codebook_weights: list[float] | None = None  # one per codebook; null = 1/K each
    targets: Literal["codes", "kmeans", "both"] = "codes"
    kmeans_clusters: int | None = None  # size of the semantic (k-means) vocabulary; kmeans | both
    kmeans_weight: float = 1.0  # the cluster stream's weight next to the codebooks'
    # weight of an auxiliary loss (not the paper's): the masked frames' input features, each frame
    # standardised over its C channels, regressed (MSE) from the decoder; 0 = off
    recon_weight: float = 0.0
    context: int = 300  # frames per training window (4 s, the paper's crops)

    # Stack reads these; the encoder places its visible frames at their own positions, which
    # needs RoPE (a learned table would be indexed the same way, but is not offered)
    pos_emb: ClassVar[str] = "rope"

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {list(INPUTS)}, got {self.input!r}")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {list(TARGETS)}, got {self.targets!r}")
        for name in ("in_dim", "num_codebooks", "kmeans_clusters"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.codebook_size is not None and self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2 or null, got {self.codebook_size}")
        for name in ("n_layers", "d_model", "decoder_layers", "span"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 2:
            raise ValueError(
                f"context must be >= 2 (a window needs a masked and a visible frame), got {self.context}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.masked_weight < 0 or self.visible_weight < 0 or self.masked_weight + self.visible_weight <= 0:
            raise ValueError(
                "masked_weight and visible_weight must be >= 0 and not both 0, "
                f"got {self.masked_weight}, {self.visible_weight}"
            )
        if self.targets != "codes" and self.kmeans_clusters is None:
            raise ValueError(
                f"targets {self.targets!r} needs kmeans_clusters: the cluster count of the semantic "
                "tokenizer whose stream the dataset stores (prepare --semantic)"
            )
        if self.kmeans_weight < 0:
            raise ValueError(f"kmeans_weight must be >= 0, got {self.kmeans_weight}")
        if self.recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if self.codebook_weights is not None:
            if any(w < 0 for w in self.codebook_weights) or not any(w > 0 for w in self.codebook_weights):
                raise ValueError(f"codebook_weights must be >= 0, not all 0, got {self.codebook_weights}")
            if self.num_codebooks is not None and len(self.codebook_weights) != self.num_codebooks:
                raise ValueError(
                    f"codebook_weights needs one weight per codebook ({self.num_codebooks}), "
                    f"got {len(self.codebook_weights)}"
                )
        _check_heads("d_model", self.d_model, "n_heads", self.n_heads)
        _check_heads("decoder_d_model", self.dec_dim, "decoder_heads", self.dec_heads)

    @property
    def dec_dim(self) -> int:
        return self.d_model if self.decoder_d_model is None else self.decoder_d_model

    @property
    def dec_heads(self) -> int:
        return self.n_heads if self.decoder_heads is None else self.decoder_heads

    @property
    def uses_codes(self) -> bool:
        return self.targets in ("codes", "both")

    @property
    def uses_kmeans(self) -> bool:
        return self.targets in ("kmeans", "both")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_heads(dim_name: str, dim: int, heads_name: str, heads: int) -> None:
    if heads < 1 or dim % heads != 0:
        raise ValueError(f"{dim_name} must be divisible by {heads_name}, got {dim}/{heads}")
    if (dim // heads) % 2 != 0:
        raise ValueError(f"RoPE needs an even head width, got {dim_name}/{heads_name} = {dim}/{heads}")


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------
def masked_count(frames: int, ratio: float) -> int:
    """Frames masked in a window of ``frames``: ``round(ratio * frames)`` kept in ``[1, frames - 1]``."""
    if frames < 2:
        raise ValueError(f"a masked window needs at least 2 frames, got {frames}")
    return min(frames - 1, max(1, round(ratio * frames)))


def span_mask(
    batch: int,
    frames: int,
    ratio: float,
    span: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(batch, frames)`` bool, True = masked: ``masked_count(frames, ratio)`` frames per row, in
    non-overlapping spans of ``span`` frames (the last one shorter when ``span`` does not divide the
    count; spans may touch), placed uniformly at random. A function of ``generator``'s state (the
    global RNG of ``device`` when None).

    Placement: ``k`` spans of total length ``n`` in ``T`` frames leave ``T - n`` free frames; a
    uniform ``k``-subset ``s_1 < .. < s_k`` of ``T - n + k`` slots puts span ``i`` at
    ``s_i + sum_{j<i} (len_j - 1)``, every arrangement equally likely.
    """
    n = masked_count(frames, ratio)
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    span = min(span, n)
    k = math.ceil(n / span)
    lengths = torch.full((k,), span, dtype=torch.long, device=device)
    lengths[-1] = n - (k - 1) * span
    offsets = torch.cumsum(lengths - 1, 0) - (lengths - 1)  # exclusive prefix sums (k,)
    scores = torch.rand(batch, frames - n + k, generator=generator, device=device)
    slots = scores.topk(k, dim=1).indices.sort(dim=1).values  # (B, k)
    starts = slots + offsets  # (B, k)
    t = torch.arange(frames, device=device)
    inside = (t >= starts[..., None]) & (t < (starts + lengths)[..., None])  # (B, k, T)
    return inside.any(dim=1)


def split_frames(mask: torch.Tensor, masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask (B, T)`` (equal True count per row) -> ``(visible (B, Nv), masked (B, Nm))`` frame
    indices, each in time order. ``masked``: the known count per row (no check, no host sync)."""
    if masked is None:
        counts = mask.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"every row must mask the same number of frames, got {counts.tolist()}")
        masked = int(counts[0])
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, each in time order
    nv = mask.shape[1] - masked
    return order[:, :nv], order[:, nv:]


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Frames ``idx (B, N)`` of ``x (B, T, W)`` -> ``(B, N, W)``."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class EnCodecMAE(HubModel, nn.Module):
    """Masked encoder + light decoder over 75 Hz frames (see the module docstring)."""

    model_type = "encodecmae"  # config.json's "model_type" (see models.registry)
    config_class, config_section = EnCodecMAEConfig, "mae"  # save/load: models.registry.HubModel

    def __init__(self, config: EnCodecMAEConfig) -> None:
        super().__init__()
        if not isinstance(config, EnCodecMAEConfig):
            raise ValueError(f"EnCodecMAE needs an EnCodecMAEConfig, got {type(config).__name__}")
        c = config
        missing = [name for name in ("in_dim",) if getattr(c, name) is None]
        if c.uses_codes:
            missing += [name for name in ("num_codebooks", "codebook_size") if getattr(c, name) is None]
        if missing:
            raise ValueError(
                f"EnCodecMAEConfig needs {missing} set (the trainer fills them from the dataset)"
            )
        self.config = c
        self.num_layers = c.n_layers
        self.inp = nn.Linear(c.in_dim, c.d_model, bias=c.bias)
        self.encoder = Stack(c.d_model, c.n_layers, c.n_heads, c, c.context, causal=False)
        self.to_decoder = nn.Linear(c.d_model, c.dec_dim, bias=c.bias)
        self.mask_token = nn.Parameter(torch.zeros(c.dec_dim))
        self.decoder = Stack(c.dec_dim, c.decoder_layers, c.dec_heads, c, c.context, causal=False)
        # K heads in one matrix; the cluster stream has its own vocabulary
        self.code_head = nn.Linear(c.dec_dim, c.num_codebooks * c.codebook_size) if c.uses_codes else None
        self.kmeans_head = nn.Linear(c.dec_dim, c.kmeans_clusters) if c.uses_kmeans else None
        self.recon_head = nn.Linear(c.dec_dim, c.in_dim) if c.recon_weight > 0 else None
        weights = []
        if c.uses_codes:
            weights += c.codebook_weights or [1.0 / c.num_codebooks] * c.num_codebooks
        if c.uses_kmeans:
            weights.append(1.0 if c.targets == "kmeans" else c.kmeans_weight)
        self.register_buffer("stream_weights", torch.tensor(weights), persistent=False)  # (S,)
        self._init_weights()

    def _init_weights(self) -> None:
        # the paper's code: xavier-uniform linears, zero biases (LayerNorms keep 1 / 0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, 0.0, 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_streams(self) -> int:
        """S: target streams scored (K codebooks, then the cluster stream)."""
        return self.stream_weights.shape[0]

    # -- the two transformers ---------------------------------------------------------------------
    def _run(
        self,
        stack: Stack,
        h: torch.Tensor,
        positions: torch.Tensor | None,
        layers: int | None = None,
        end: int | None = None,
    ) -> torch.Tensor:
        """``h (B, N, W)`` at frame ``positions (B, N)`` (None: 0..N-1; else all below ``end``)
        through the first ``layers`` blocks (None: all, then the final norm). Unlike
        ``Stack.forward``, positions may skip frames."""
        N = h.shape[1]
        cos, sin = stack.rope(N if positions is None else end, h.device)
        if positions is None:
            rope = (cos[:N], sin[:N])  # (N, hd)
        else:
            rope = (cos[positions][:, None], sin[positions][:, None])  # (B, 1, N, hd): per-row positions
        blocks = stack.blocks if layers is None else stack.blocks[:layers]
        for block in blocks:
            h = block(h, rope, None, 0)
        return stack.ln_f(h) if layers is None else h

    def _check_input(self, x: torch.Tensor) -> None:
        C = self.config.in_dim
        if x.dim() != 3 or x.shape[1] != C:
            raise ValueError(f"x must be (B, C={C}, T) {self.config.input} features, got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``x (B, C, T)`` -> encoder output ``(B, T, D)`` without masking (any ``T``).

        ``layer`` 1..num_layers: the residual stream after that block (the last one: after the
        final norm, the representation the decoder was trained on); None = the last.
        """
        self._check_input(x)
        n = self.num_layers
        if layer is not None and (
            isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n
        ):
            raise ValueError(f"layer must be in 1..{n} (the encoder's layers) or None, got {layer!r}")
        h = self.inp(x.transpose(1, 2))  # (B, T, D)
        return self._run(self.encoder, h, None, None if layer in (None, n) else layer)

    def _hidden(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(B, T, Dd)``: the encoder reads frames ``visible (B, Nv)`` of ``x`` only."""
        B, C, T = x.shape
        xv = x.gather(2, visible[:, None].expand(-1, C, -1))  # (B, C, Nv): masked frames never read
        enc = self._run(self.encoder, self.inp(xv.transpose(1, 2)), visible, end=T)  # (B, Nv, D)
        v = self.to_decoder(enc)  # (B, Nv, Dd)
        full = self.mask_token.to(v.dtype).expand(B, T, -1)
        full = full.scatter(1, visible[..., None].expand(-1, -1, v.shape[-1]), v)  # (B, T, Dd)
        return self._run(self.decoder, full, None)

    def _heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """``h (B, N, Dd)`` -> logits per target group: ``(B, K, N, V)`` codes, ``(B, 1, N, Vk)`` clusters."""
        B, N = h.shape[:2]
        out = []
        if self.code_head is not None:
            K, V = self.config.num_codebooks, self.config.codebook_size
            out.append(self.code_head(h).view(B, N, K, V).transpose(1, 2))
        if self.kmeans_head is not None:
            out.append(self.kmeans_head(h)[:, None])
        return out

    def _targets(
        self, codes: torch.Tensor | None, semantic: torch.Tensor | None, B: int, T: int
    ) -> list[torch.Tensor]:
        """The target groups ``(B, K, T)`` / ``(B, 1, T)`` the heads score, checked."""
        c, out = self.config, []
        if c.uses_codes:
            want = (B, c.num_codebooks, T)
            if codes is None or tuple(codes.shape) != want:
                got = None if codes is None else tuple(codes.shape)
                raise ValueError(f"targets {c.targets!r} need codes of shape (B, K, T) = {want}, got {got}")
            out.append(codes)
        if c.uses_kmeans:
            if semantic is not None and semantic.dim() == 2:
                semantic = semantic[:, None]
            if semantic is None or tuple(semantic.shape) != (B, 1, T):
                got = None if semantic is None else tuple(semantic.shape)
                raise ValueError(
                    f"targets {c.targets!r} need semantic tokens of shape (B, T) = {(B, T)}, got {got}"
                )
            out.append(semantic)
        return out

    def draw_mask(
        self, batch: int, frames: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The ``(B, T)`` mask ``forward`` uses (see the module docstring for which RNG)."""
        if generator is None and not self.training:
            generator = torch.Generator(device=device).manual_seed(EVAL_MASK_SEED)
        c = self.config
        return span_mask(batch, frames, c.mask_ratio, c.span, generator, device)

    def predict(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(mask (B, T), logits of every frame per target group)`` for the mask ``forward`` would
        draw from the same ``generator`` state."""
        self._check_input(x)
        B, _, T = x.shape
        mask = self.draw_mask(B, T, x.device, generator)
        visible, _ = split_frames(mask, masked_count(T, self.config.mask_ratio))
        return mask, self._heads(self._hidden(x, visible))

    def forward(
        self,
        x: torch.Tensor,
        codes: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, T)``, targets ``codes (B, K, T)`` and/or ``semantic (B, T)`` ->
        ``(objective, nll_sum (S,) float64, count (S,) int64)``, NLL over the masked frames."""
        self._check_input(x)
        B, _, T = x.shape
        targets = self._targets(codes, semantic, B, T)
        mask = self.draw_mask(B, T, x.device, generator)
        visible, masked = split_frames(mask, masked_count(T, self.config.mask_ratio))
        h = self._hidden(x, visible)  # (B, T, Dd)
        c = self.config

        def scored(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # heads only at the frames idx (B, N): per-stream NLL sums and counts (S,)
            parts = [
                nll_per_codebook(lg, tg.gather(2, idx[:, None].expand(-1, tg.shape[1], -1)))
                for lg, tg in zip(self._heads(_take(h, idx)), targets)
            ]
            return torch.cat([s for s, _ in parts]), torch.cat([n for _, n in parts])

        w = self.stream_weights
        m_sum, m_count = scored(masked)
        objective = c.masked_weight * (w * m_sum / m_count).sum()
        if c.visible_weight > 0:
            v_sum, v_count = scored(visible)
            objective = objective + c.visible_weight * (w * v_sum / v_count).sum()
        if self.recon_head is not None:
            objective = objective + c.recon_weight * self.recon_loss(x, h, masked)
        return objective, m_sum, m_count

    def recon_loss(self, x: torch.Tensor, h: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """MSE of the reconstructed masked frames of ``x (B, C, T)`` from ``h (B, T, Dd)``; each target
        frame standardised over its channels (MAE's normalised-pixel target)."""
        target = _take(x.transpose(1, 2), masked).float()  # (B, Nm, C)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return (self.recon_head(_take(h, masked)).float() - target).square().mean()
