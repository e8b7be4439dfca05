"""A tiny EnCodecMAE for the tools' tests (embed, probe, semantic)."""

from __future__ import annotations

import torch

from whispergpt.models.encodecmae import EnCodecMAE, EnCodecMAEConfig


def make_mae(input: str = "mel", in_dim: int = 80, n_layers: int = 2, d_model: int = 32, seed: int = 0):
    """An EnCodecMAE of ``n_layers`` encoder layers of width ``d_model`` (2 heads), seeded weights."""
    cfg = EnCodecMAEConfig(input=input, in_dim=in_dim, num_codebooks=2, codebook_size=1024, n_layers=n_layers,
                           d_model=d_model, n_heads=2, decoder_layers=1)  # fmt: skip
    torch.manual_seed(seed)
    return EnCodecMAE(cfg).eval()
