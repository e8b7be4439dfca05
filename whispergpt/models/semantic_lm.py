"""The semantic LM: AudioLM's first stage, a token-only decoder over semantic tokens at their own rate.

The decoder is the Whisper-GPT decoder itself (``WhisperGPT`` with one codebook of ``clusters``
tokens, pattern ``coarse``, fusion ``none``: no mel branch), so training, incremental decoding,
long-form sampling (``generate.generate`` with no codec) and evaluation are the ones every other
model uses; this module only fixes that configuration and the rate.

Rate: the prepared dataset's ``semantic`` stream holds one token per codec frame, each 25 Hz token
repeated ``g = 75 / rate`` times (``semantic/tokenizer.py``, the alignment rule). The LM reads every
``g``-th of them (``rate_tokens``): from any start frame that is the run of consecutive semantic
tokens the frames cover, so a training crop of ``g * context`` codec frames is ``context`` tokens.

- ``SemanticLMConfig``: run-config section ``semantic_lm`` (``task: semantic``); ``clusters`` and
  ``rate`` null in a recipe = the dataset's tokenizer's.
- ``SemanticLM(config)``: ``model(tokens (B, S)) -> logits (B, S, V)`` (``V = clusters``),
  ``nll``, ``save_pretrained`` / ``from_pretrained`` (``model_type`` ``"semantic-lm"``); ``lm``
  is the ``WhisperGPT`` the sampler steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from whispergpt.models.registry import HubModel
from whispergpt.models.semantic import group_size
from whispergpt.models.whispergpt import WhisperGPT, WhisperGPTConfig


def group_of(rate: float) -> int:
    """Codec frames per semantic token, ``75 / rate``; ``ValueError`` unless ``rate`` divides 75."""
    return group_size(rate, "semantic_lm.rate")


@dataclass
class SemanticLMConfig:
    """Semantic-LM hyper-parameters (run-config section ``semantic_lm:``)."""

    clusters: int = 512  # V: the tokenizer's k-means clusters (null in a recipe: from the dataset)
    rate: float = 25.0  # semantic tokens per second (null in a recipe: from the dataset)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    context: int = 250  # semantic tokens per training window (10 s at 25 Hz)
    pos_emb: Literal["rope", "learned"] = "rope"
    tie_weights: bool = False
    bias: bool = True
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.clusters < 2:
            raise ValueError(f"semantic_lm.clusters must be >= 2, got {self.clusters}")
        group_of(self.rate)
        try:
            self.decoder_config()  # the decoder's own checks (heads, RoPE widths, ...)
        except ValueError as e:
            raise ValueError(f"semantic_lm: {e}") from e

    @property
    def group(self) -> int:
        """Codec frames per semantic token."""
        return group_of(self.rate)

    @property
    def context_frames(self) -> int:
        """The codec frames a ``context``-token window covers (the training crop)."""
        return self.context * self.group

    def decoder_config(self) -> WhisperGPTConfig:
        """The ``WhisperGPT`` this LM is: one codebook of ``clusters`` tokens, coarse, no mel."""
        keys = ("d_model", "n_layers", "n_heads", "mlp_ratio", "dropout", "context", "pos_emb",
                "tie_weights", "bias", "rope_base")  # fmt: skip
        return WhisperGPTConfig(
            num_codebooks=1,
            codebook_size=self.clusters,
            pattern="coarse",
            fusion="none",
            **{k: getattr(self, k) for k in keys},
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rate_tokens(frame_tokens: torch.Tensor, group: int) -> torch.Tensor:
    """``(..., T)`` per-codec-frame tokens -> ``(..., ceil(T / group))``: every ``group``-th frame's."""
    return frame_tokens[..., ::group]


def frame_tokens(tokens: torch.Tensor, group: int, frames: int) -> torch.Tensor:
    """``(..., S)`` tokens at the semantic rate -> ``(..., frames)`` on the codec grid: frame ``t``
    carries ``tokens[t // group]`` (the alignment rule; ``S`` must be ``ceil(frames / group)``)."""
    S = tokens.shape[-1]
    if S != -(-frames // group):
        raise ValueError(f"{frames} codec frames need ceil({frames}/{group}) semantic tokens, got {S}")
    return tokens.repeat_interleave(group, dim=-1)[..., :frames]


class SemanticLM(HubModel, nn.Module):
    """Next-token decoder over semantic tokens (module docstring)."""

    model_type = "semantic-lm"  # config.json's "model_type" (see models.registry)
    config_class, config_section = SemanticLMConfig, "semantic_lm"  # save/load: models.registry.HubModel

    def __init__(self, config: SemanticLMConfig) -> None:
        super().__init__()
        if not isinstance(config, SemanticLMConfig):
            raise ValueError(f"SemanticLM needs a SemanticLMConfig, got {type(config).__name__}")
        self.config = config
        self.lm = WhisperGPT(config.decoder_config())

    @property
    def group(self) -> int:
        return self.config.group

    @property
    def num_scored_codebooks(self) -> int:
        return 1  # one stream of tokens (what evaluation counts per position)

    def num_parameters(self) -> int:
        return self.lm.num_parameters()

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """ValueError unless every token lies in ``[0, clusters)`` (tokens that did not come from a
        ``PreparedDataset``, e.g. a tokenizer with more clusters)."""
        self.lm.check_codes(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (B, S)`` long -> logits ``(B, S, V)``; ``logits[:, s]`` scores ``tokens[:, s]``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, S), got shape {tuple(tokens.shape)}")
        return self.lm(tokens[:, None]).logits[:, 0]  # (B, 1, S, V) -> (B, S, V)

    def nll(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nll_sum (1,), count (1,))`` of ``tokens (B, S)`` (``mask (B, S)``: True = scored)."""
        return self.lm.nll(tokens[:, None], None, mask)
