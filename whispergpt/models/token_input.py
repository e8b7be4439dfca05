"""How the decoder reads the ``Kin`` tokens of one pattern step (``model.token_input``).

- ``sum`` (MusicGen, the default): one table of width ``E`` per codebook, the ``Kin`` embeddings
  summed; every codebook writes into the same ``E`` dimensions.
- ``concat``: one table of width ``E / Kin`` per codebook, the ``Kin`` embeddings concatenated;
  each codebook owns its own slice of the input. Same decoder width and FLOPs as ``sum``, and
  ``1 / Kin`` of its embedding parameters.

``concat`` is ``sum`` with tables confined to disjoint subspaces, so it cannot express more; it
exists to test whether summing the codebooks of a ``delay`` step costs a small model capacity
(issue 20: its codebook-0 NLL against a ``coarse`` model's). With one input codebook (``coarse``)
the two are the same.
"""

from __future__ import annotations

import torch
from torch import nn

TOKEN_INPUTS = ("sum", "concat")


def check_token_input(mode: str, width: int, input_codebooks: int, tie_weights: bool) -> None:
    """ValueError for a ``token_input`` the model cannot build (``width``: the token embedding's)."""
    if mode not in TOKEN_INPUTS:
        raise ValueError(f"token_input must be one of {list(TOKEN_INPUTS)}, got {mode!r}")
    if mode == "concat" and input_codebooks > 1:
        if width % input_codebooks:
            raise ValueError(
                f"token_input 'concat' splits the token embedding width {width} over {input_codebooks} "
                "codebooks: it must be divisible by them"
            )
        if tie_weights:
            raise ValueError("tie_weights needs full-width token tables: use token_input=sum")


def table_width(mode: str, width: int, input_codebooks: int) -> int:
    """Width of each codebook's table for an input of ``width``."""
    return width // input_codebooks if mode == "concat" else width


def embed_tokens(table: nn.Embedding, ids: torch.Tensor, mode: str) -> torch.Tensor:
    """``ids (B, Kin, P)`` -> ``(B, P, E)``, or one step ``(B, Kin)`` -> ``(B, E)``; ``ids`` already
    hold each codebook's row offset into the shared ``table``."""
    e = table(ids)  # (B, Kin, P, E / Kin or E) or (B, Kin, ...)
    if mode == "sum":
        return e.sum(dim=1)
    return e.movedim(1, -2).flatten(-2)  # (B, P, Kin, E/Kin) -> (B, P, E); (B, Kin, E/Kin) -> (B, E)
