"""A tiny EnCodecMAE for the tools' tests (embed, probe, semantic).

Until ``whispergpt/models/encodecmae.py`` is part of the tree, a tiny stand-in with the agreed
interface (``EnCodecMAEConfig``, ``EnCodecMAE.encode / num_layers / save_pretrained /
from_pretrained``) is registered under that module name, so the tools' tests run either way; once
the real model exists it is used and the stand-in is never installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_REAL = importlib.util.find_spec("whispergpt.models.encodecmae") is not None


@dataclass
class _StubConfig:
    input: str = "mel"
    in_dim: int | None = None
    num_codebooks: int | None = None
    codebook_size: int | None = None
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 2


class _StubMAE(nn.Module):
    def __init__(self, config: _StubConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.in_dim, config.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model, config.n_heads, 2 * config.d_model, 0.0, batch_first=True
            )
            for _ in range(config.n_layers)
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def encode(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        h = self.proj(x.transpose(1, 2))  # (B, C, T) -> (B, T, D)
        for i, block in enumerate(self.layers, 1):
            h = block(h)
            if i == layer:
                break
        return h

    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = dict(dataclasses.asdict(self.config), model_type="encodecmae")
        (d / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(d / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory) -> _StubMAE:
        from safetensors.torch import load_file

        cfg = json.loads((Path(directory) / "config.json").read_text())
        cfg.pop("model_type")
        model = cls(_StubConfig(**cfg))
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model


if not _REAL:
    _stub = types.ModuleType("whispergpt.models.encodecmae")
    _stub.EnCodecMAEConfig = _StubConfig
    _stub.EnCodecMAE = _StubMAE
    sys.modules["whispergpt.models.encodecmae"] = _stub
    import whispergpt.models

    whispergpt.models.encodecmae = _stub


def make_mae(input: str = "mel", in_dim: int = 80, n_layers: int = 2, d_model: int = 32, seed: int = 0):
    """A tiny EnCodecMAE (the real one when present, else the stand-in)."""
    from whispergpt.models import encodecmae

    fields = {f.name for f in dataclasses.fields(encodecmae.EnCodecMAEConfig)}
    want = dict(input=input, in_dim=in_dim, num_codebooks=2, codebook_size=1024, n_layers=n_layers,
                d_model=d_model, n_heads=2)  # fmt: skip
    cfg = encodecmae.EnCodecMAEConfig(**{k: v for k, v in want.items() if k in fields})
    torch.manual_seed(seed)
    return encodecmae.EnCodecMAE(cfg).eval()
