"""The fine acoustic stage: codebooks ``Kc..K-1`` of a window from its codebooks ``0..Kc-1``.

A decoder that generates only the coarse codebooks (``pattern: coarse`` generates codebook 0)
gives audio decoded from ``Kc`` of the codec's ``K`` codebooks. This model fills in the rest, as
AudioLM's fine acoustic stage does, but non-autoregressively in time (VALL-E's NAR stage,
SoundStorm's levels without the masking): the fine codebooks are predicted codebook after
codebook, every frame of the window at once.

Stage ``k`` (``k = Kc .. K-1``) reads, at every frame of the window, the sum of the embeddings of
that frame's codebooks ``0..k-1`` (the coarse ones given, the fine ones known: the truth in
training, i.e. teacher forcing; the ones predicted by the earlier stages in sampling) plus a
learned embedding of ``k``, runs a transformer over the window and scores codebook ``k`` of every
frame. One transformer serves all stages (the stage embedding tells them apart); each stage has
its own output head.

**Bidirectional attention.** Every frame attends to the whole window, later frames included.
That is allowed here, unlike in the decoder: the fine stage runs after the coarse codebooks of
the whole window are fixed, so nothing it reads is still to be generated, and the only inputs
are codebooks ``< k``, never codebook ``k`` itself or later ones. The ordering that matters is
across codebooks, not time: ``logits`` of codebook ``k`` never depend on codebooks ``>= k``
(``tests/models/test_fine.py`` checks both).

**Training** scores every fine codebook of every crop in one forward: the ``S = K - Kc`` stage
inputs are stacked on the batch dimension (``B*S`` windows through the trunk). Every fine token
is scored on every crop, so per-codebook sums and counts mean exactly what evaluation reports,
and the loss has no stage-sampling noise; the cost is ``S`` trunk passes per crop, which is
small for a model this size (sampling one stage per item, as VALL-E does, would cost one pass
but score ``1/S`` of the tokens).

Public API:

- ``FineConfig``: validated dataclass (run-config section ``fine:``), saved as ``config.json``.
- ``FineModel(config)``: ``model(codes (B, K, T)) -> FineOutput`` with ``logits (B, S, T, V)``,
  ``logits[:, j, t]`` scoring ``codes[:, Kc + j, t]`` (teacher-forced: codebooks ``< Kc + j``).
- ``FineModel.stage_logits(codes (B, >=k, T), k) -> (B, T, V)``: one stage, for sampling.
- ``save_pretrained`` / ``FineModel.from_pretrained`` (``model_type`` ``"whispergpt-fine"``).

Window tiling for long audio and sampling live in ``whispergpt.inference.fine_stage``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.models.blocks import Stack
from whispergpt.models.registry import HubModel


@dataclass
class FineConfig:
    """Fine-stage hyper-parameters (run-config section ``fine:``)."""

    num_codebooks: int = 8  # K of the data (null in a recipe: from the dataset)
    codebook_size: int = 1024  # V (null in a recipe: from the dataset)
    coarse_codebooks: int = 1  # Kc: given; codebooks Kc..K-1 are predicted
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    context: int = 225  # frames per window (3 s, AudioLM's fine chunk)
    pos_emb: Literal["rope", "learned"] = "rope"
    bias: bool = True
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("num_codebooks", "d_model", "n_layers", "n_heads", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"fine.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_codebooks < 2:
            raise ValueError(
                f"fine.num_codebooks={self.num_codebooks}: a fine stage needs K >= 2 (there is nothing to "
                "predict after codebook 0 of a one-codebook codec)"
            )
        if not 1 <= self.coarse_codebooks < self.num_codebooks:
            raise ValueError(
                f"fine.coarse_codebooks must be in [1, num_codebooks={self.num_codebooks}), "
                f"got {self.coarse_codebooks}"
            )
        if self.codebook_size < 2:
            raise ValueError(f"fine.codebook_size must be >= 2, got {self.codebook_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"fine.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"fine.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_emb not in ("rope", "learned"):
            raise ValueError(f"fine.pos_emb must be rope or learned, got {self.pos_emb!r}")
        if self.d_model % self.n_heads or (self.pos_emb == "rope" and (self.d_model // self.n_heads) % 2):
            raise ValueError(
                f"fine.d_model={self.d_model} must split into n_heads={self.n_heads} heads"
                + (" of even width (RoPE)" if self.pos_emb == "rope" else "")
            )

    @property
    def stages(self) -> int:
        """S = K - Kc: the codebooks predicted."""
        return self.num_codebooks - self.coarse_codebooks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FineOutput:
    """``logits (B, S, T, V)``: ``logits[:, j, t]`` scores ``codes[:, Kc + j, t]``."""

    logits: torch.Tensor


class FineModel(HubModel, nn.Module):
    """Codebooks ``Kc..K-1`` from codebooks ``0..Kc-1``, stage by stage (module docstring)."""

    model_type = "whispergpt-fine"  # config.json's "model_type" (see models.registry)
    config_class, config_section = FineConfig, "fine"  # save/load: models.registry.HubModel

    def __init__(self, config: FineConfig) -> None:
        super().__init__()
        if not isinstance(config, FineConfig):
            raise ValueError(f"FineModel needs a FineConfig, got {type(config).__name__}")
        self.config = c = config
        K, V, D = c.num_codebooks, c.codebook_size, c.d_model
        self.first_scored_codebook = c.coarse_codebooks  # Kc: the first predicted codebook
        self.num_scored_codebooks = c.stages  # S = K - Kc
        # codebooks 0..K-2 are inputs (K-1 is only ever predicted): one table, offset per codebook
        self.tok_emb = nn.Embedding((K - 1) * V, D)
        self.register_buffer("tok_offsets", torch.arange(K - 1) * V, persistent=False)
        self.stage_emb = nn.Embedding(c.stages, D)
        self.drop = nn.Dropout(c.dropout)
        self.trunk = Stack(D, c.n_layers, c.n_heads, c, c.context, causal=False)
        self.head = nn.Linear(D, c.stages * V, bias=False)  # S heads in one matrix
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                residual = getattr(m, "residual", False)
                std = 0.02 / math.sqrt(2 * self.config.n_layers) if residual else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_codes(self, codes: torch.Tensor, need: int) -> None:
        """ValueError unless ``codes`` is ``(B, >= need, T)`` integer with ids in ``[0, V)``."""
        V = self.config.codebook_size
        if codes.dim() != 3 or codes.shape[1] < need:
            raise ValueError(f"codes must be (B, K>={need}, T), got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be integer (long), got {codes.dtype}")
        if codes.numel():
            lo, hi = torch.stack(torch.aminmax(codes[:, :need])).tolist()
            if lo < 0 or hi >= V:
                raise ValueError(f"codes must lie in [0, {V - 1}], got [{lo}, {hi}]")

    def forward(self, codes: torch.Tensor) -> FineOutput:
        """Teacher-forced logits of every fine codebook: ``codes (B, K, T)`` -> ``(B, S, T, V)``.

        Only codebooks ``0..K-2`` are read (codebook ``K-1`` is a target only). No range check
        (a host sync per step): data from a ``PreparedDataset`` is checked where it is loaded.
        """
        c = self.config
        K, S, V = c.num_codebooks, c.stages, c.codebook_size
        if codes.dim() != 3 or codes.shape[1] != K:
            raise ValueError(f"codes must be (B, K={K}, T), got shape {tuple(codes.shape)}")
        B, _, T = codes.shape
        e = self.tok_emb(codes[:, : K - 1].long() + self.tok_offsets[None, :, None])  # (B, K-1, T, D)
        # stage k reads the codebooks < k: prefix sums, stage k = prefix k-1
        x = e.cumsum(dim=1)[:, self.first_scored_codebook - 1 :]  # (B, S, T, D)
        x = x + self.stage_emb.weight[None, :, None]
        h = self.trunk(self.drop(x.reshape(B * S, T, -1)), None, 0)  # (B*S, T, D)
        W = self.head.weight.view(S, V, -1)  # (S, V, D)
        logits = torch.einsum("bstd,svd->bstv", h.view(B, S, T, -1), W)
        return FineOutput(logits=logits)

    def stage_logits(self, codes: torch.Tensor, k: int) -> torch.Tensor:
        """Logits ``(B, T, V)`` of codebook ``k`` from ``codes (B, >= k, T)``: codebooks ``< k``
        are read, anything from ``k`` on is ignored."""
        c = self.config
        if not self.first_scored_codebook <= k < c.num_codebooks:
            raise ValueError(f"stage k must be in [{self.first_scored_codebook}, {c.num_codebooks}), got {k}")
        if codes.dim() != 3 or codes.shape[1] < k:
            raise ValueError(f"codes must be (B, K>={k}, T), got shape {tuple(codes.shape)}")
        j, V = k - self.first_scored_codebook, c.codebook_size
        x = self.tok_emb(codes[:, :k].long() + self.tok_offsets[None, :k, None]).sum(dim=1)  # (B, T, D)
        h = self.trunk(self.drop(x + self.stage_emb.weight[j]), None, 0)  # (B, T, D)
        return F.linear(h, self.head.weight[j * V : (j + 1) * V])
