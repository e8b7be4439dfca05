"""``WhisperGPTConfig``: the decoder's hyper-parameters (``model:`` of a run config, ``config.json``
of a checkpoint). Imported by ``whispergpt.models.whispergpt`` (its public home) and the blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from whispergpt.models import patterns as pt
from whispergpt.models.semantic import check_semantic_config, group_size, num_prefix
from whispergpt.models.token_input import check_token_input

FUSIONS = ("concat", "sum", "interleave", "none")
POS_EMBS = ("rope", "learned")


@dataclass
class WhisperGPTConfig:
    """Model hyper-parameters. ``fusion="none"`` is the token-only baseline (mel fields ignored)."""

    num_codebooks: int = 8  # K of the data (EnCodec 6 kbps -> 8)
    codebook_size: int = 1024  # V; token id V is the BOS/pad id
    n_mels: int = 80  # M
    pattern: Literal["coarse", "parallel", "delay", "depth"] = "coarse"
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
    token_input: Literal["sum", "concat"] = "sum"  # a step's codebook embeddings: see token_input.py
    tie_weights: bool = False
    bias: bool = True
    rope_base: float = 10000.0
    depth_layers: int = 2  # pattern depth: the depth transformer (ignored by other patterns)
    depth_dim: int = 128
    depth_heads: int = 4
    # semantic conditioning (models/semantic.py): none | prefix (AudioLM) | aligned
    semantic: Literal["none", "prefix", "aligned"] = "none"
    semantic_vocab: int | None = None  # the semantic tokenizer's clusters; 0/None: from the dataset
    semantic_rate: float = 25  # Hz of the semantic tokens; must divide 75 (g = 75 / rate frames each)
    semantic_lookahead: int = 1  # aligned: semantic frames read ahead of the predicted frame's
    # the continuous stream the mel branch reads (set from data.mel_source by the run config):
    # log_mel (a causal log-mel slice, M = n_mels bins) or codec_latent (the codec's dequantised
    # latent of the frame's tokens, codec.codec_latent: n_mels = the codebook width C)
    mel_input: Literal["log_mel", "codec_latent"] = "log_mel"
    # frames the stream lags beyond the pattern's own lag: 1 lets the sampler decode frame f on a
    # second thread while the decoder computes the next step (generate(overlap=...)); trained the same
    mel_extra_lag: int = 0

    def __post_init__(self) -> None:
        pt.check_pattern(self.pattern, self.num_codebooks)  # also: depth needs K >= 2
        check_semantic_config(self.semantic, self.semantic_vocab, self.semantic_rate, self.semantic_lookahead)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb must be one of {list(POS_EMBS)}, got {self.pos_emb!r}")
        for name in ("num_codebooks", "n_mels", "d_model", "n_layers", "n_heads", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mel_input not in ("log_mel", "codec_latent"):
            raise ValueError(f"mel_input must be log_mel or codec_latent, got {self.mel_input!r}")
        if not isinstance(self.mel_extra_lag, int) or self.mel_extra_lag < 0:
            raise ValueError(f"mel_extra_lag must be an integer >= 0, got {self.mel_extra_lag!r}")
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
        if self.pattern == "depth":
            if self.depth_layers < 1:
                raise ValueError(f"pattern 'depth' needs depth_layers >= 1, got {self.depth_layers}")
            self._check_heads("depth_dim", self.depth_dim, "depth_heads", self.depth_heads)
            if self.tie_weights:
                raise ValueError(
                    "tie_weights: pattern 'depth' has no temporal head to tie; use tie_weights=false"
                )
        tok_width = self.d_model - self.mel_dim if self.fusion == "concat" else self.d_model
        check_token_input(self.token_input, tok_width, self.input_codebooks, self.tie_weights)
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
    def semantic_group(self) -> int:
        """``g``: codec frames per semantic token (``75 / semantic_rate``)."""
        return group_size(self.semantic_rate)

    @property
    def max_prefix(self) -> int:
        """Decoder positions the semantic prefix of a ``context``-frame window takes (0 unless ``prefix``)."""
        return num_prefix(self.context, self.semantic_group) if self.semantic == "prefix" else 0

    @property
    def mel_lag(self) -> int:
        """Frames the mel stream lags: the pattern's lag + ``mel_extra_lag``."""
        return pt.mel_lag(self.pattern, self.num_codebooks, self.mel_extra_lag)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
