"""LLM-Codec (UniAudio 1.5): a codec whose three residual VQ layers quantise into a frozen LLM's
token space, at three rates.

Shapes: B batch, S samples (24 kHz), D latent width, T latent frames (``sample_rate / hop``, 33.3 Hz
by default), W the LLM's width, N a layer's codebook size.

- The encoder (strided convs, then transformer layers) maps ``(B, S)`` to ``(B, D, T)``; the decoder
  mirrors it. No I/O, no LLM inside: the frozen tables (``tables.LLMTables``, standardised when
  loaded) are attached for training (``attach_tables``); a saved codec carries each layer's
  projected codebook, so encoding and decoding need no LLM.
- Layer ``i`` pools the residual ``pools[i]``x (4, 2, 1: about 8, 17 and 33 Hz), looks up the nearest
  codebook row by cosine similarity (straight-through gradient), upsamples the choice back and
  subtracts it from the residual.
- A layer's codebook is ``proj(table)``: layer 1's table holds whole words (``tables.word_entries``),
  layers 2 and 3 the LLM's whole input-embedding table; ``proj`` (W -> D) is what trains. With
  ``codebooks: learned`` (the ablation) each layer has a learned ``(N, D)`` codebook of the same size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.models.registry import HubModel

if TYPE_CHECKING:
    from whispergpt.llm_codec.tables import LLMTables

SAMPLE_RATE = 24_000


@dataclass
class LLMCodecConfig:
    strides: list[int] = field(default_factory=lambda: [3, 4, 5, 4, 3])  # hop 720: 33.3 Hz latent
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96, 128])  # after each stride
    dim: int = 128  # D, the latent width
    layers: int = 2  # transformer layers in the encoder, and in the decoder
    heads: int = 4
    pools: list[int] = field(default_factory=lambda: [4, 2, 1])  # per VQ layer
    codebooks: Literal["llm", "learned"] = "llm"
    # filled from the LLM when the codec is built (do not set by hand)
    llm: str = ""  # name or path of the LLM whose tables the codebooks come from
    llm_width: int = 0  # W
    vocab_size: int = 0  # rows of the input-embedding table (layers 2, 3)
    num_words: int = 0  # rows of the word table (layer 1)
    tokenizer_sha: str = ""  # tables.tokenizer_fingerprint of the LLM's tokenizer
    teachers: dict = field(default_factory=dict)  # which teachers it was trained with (a record)

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) or not self.strides:
            raise ValueError(f"model.strides and model.channels need one entry per stage, got "
                             f"{self.strides} and {self.channels}")  # fmt: skip
        if any(p < 1 for p in self.pools) or not self.pools:
            raise ValueError(f"model.pools must be positive, got {self.pools}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.codebooks not in ("llm", "learned"):
            raise ValueError(f"model.codebooks must be 'llm' or 'learned', got {self.codebooks!r}")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    @property
    def align(self) -> int:
        """Samples the input is padded to a multiple of: whole frames of the slowest layer."""
        return self.hop * max(self.pools)

    def sizes(self) -> list[int]:
        """N per layer: the word table for layer 1, the vocabulary for the others."""
        return [self.num_words if i == 0 else self.vocab_size for i in range(len(self.pools))]

    def tokens_per_second(self, layers: int | None = None) -> float:
        return sum(self.frame_rate / p for p in self.pools[: layers or len(self.pools)])

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    """A residual conv unit (kernel 3) at one resolution."""

    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.ELU(), nn.Conv1d(c, c, 3, padding=1), nn.ELU(), nn.Conv1d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _transformer(cfg: LLMCodecConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True,
                                       norm_first=True)  # fmt: skip
    return nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)


class Encoder(nn.Module):
    def __init__(self, cfg: LLMCodecConfig):
        super().__init__()
        chans = [1, *cfg.channels]
        stages = []
        for i, s in enumerate(cfg.strides):
            stages += [nn.Conv1d(chans[i], chans[i + 1], s, stride=s), _Block(chans[i + 1])]
        self.convs = nn.Sequential(*stages, nn.ELU(), nn.Conv1d(chans[-1], cfg.dim, 1))
        self.transformer = _transformer(cfg)
        # the latent's last affine map: the data-dependent init standardises it per channel
        self.out = nn.Conv1d(cfg.dim, cfg.dim, 1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        z = self.convs(wave[:, None])  # (B, D, T)
        return self.out(self.transformer(z.transpose(1, 2)).transpose(1, 2))


class Decoder(nn.Module):
    def __init__(self, cfg: LLMCodecConfig):
        super().__init__()
        chans = [1, *cfg.channels]
        self.transformer = _transformer(cfg)
        stages: list[nn.Module] = [nn.Conv1d(cfg.dim, chans[-1], 1)]
        for i in reversed(range(len(cfg.strides))):
            c_out = chans[i] if i > 0 else 8  # the last stage keeps a few channels for the output conv
            stages += [_Block(chans[i + 1]), nn.ELU(),
                       nn.ConvTranspose1d(chans[i + 1], c_out, cfg.strides[i], stride=cfg.strides[i])]  # fmt: skip
        stages += [nn.ELU(), nn.Conv1d(8, 1, 7, padding=3)]
        self.convs = nn.Sequential(*stages)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.transformer(z.transpose(1, 2)).transpose(1, 2)  # (B, D, T)
        return self.convs(h)[:, 0]  # (B, S)


@dataclass
class VQOutput:
    quantized: torch.Tensor  # (B, D, T): the sum of the layers' upsampled choices
    codes: list[torch.Tensor]  # per layer (B, T / pool): word index (layer 1) or vocabulary id
    commit_loss: torch.Tensor  # scalar: commitment + codebook terms, summed over layers
    layers: list[torch.Tensor]  # per layer (B, D, T / pool): the chosen rows (straight-through)


class TableLayer(nn.Module):
    """One VQ layer: pool, cosine lookup into ``codebook()``, straight-through, upsample."""

    def __init__(self, size: int, dim: int, width: int, pool: int, learned: bool):
        super().__init__()
        self.pool, self.size = pool, size
        if learned:
            self.learned = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))
            self.proj = None
        else:
            self.learned = None
            self.proj = nn.Linear(width, dim)
            nn.init.zeros_(self.proj.bias)  # the rows' own differences decide the lookup at the start
        # the projected table, refreshed before a save: a loaded codec encodes without the LLM
        self.register_buffer("frozen", torch.zeros(size, dim) if not learned else torch.zeros(0, dim))
        self.table: torch.Tensor | None = None  # (N, W), frozen, not saved (attach_tables)

    def codebook(self) -> torch.Tensor:
        """(N, D)."""
        if self.learned is not None:
            return self.learned
        if self.table is None:
            return self.frozen
        return self.proj(self.table.to(self.proj.weight.dtype))

    @torch.no_grad()
    def refresh(self) -> None:
        if self.learned is None and self.table is not None:
            self.frozen.copy_(self.codebook())

    def lookup(self, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (M,) ids of the most cosine-similar rows."""
        return (F.normalize(x, dim=-1) @ F.normalize(codebook, dim=-1).T).argmax(-1)

    def forward(
        self, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, T) -> upsampled choice (B, D, T), ids (B, T/p), loss, choice (B, D, T/p)."""
        B, D, T = residual.shape
        x = F.avg_pool1d(residual, self.pool) if self.pool > 1 else residual  # (B, D, T/p)
        flat = x.transpose(1, 2).reshape(-1, D)  # (B*T/p, D)
        cb = self.codebook()
        ids = self.lookup(flat.detach(), cb.detach())
        q = cb[ids]  # (B*T/p, D)
        loss = F.mse_loss(flat, q.detach()) + F.mse_loss(q, flat.detach())
        q = flat + (q - flat).detach()  # straight-through to the encoder; the loss above trains proj
        q = q.reshape(B, -1, D).transpose(1, 2)  # (B, D, T/p)
        return self.upsample(q, T), ids.reshape(B, -1), loss, q

    def upsample(self, q: torch.Tensor, frames: int) -> torch.Tensor:
        return q.repeat_interleave(self.pool, dim=-1)[..., :frames] if self.pool > 1 else q

    def embed(self, ids: torch.Tensor, frames: int) -> torch.Tensor:
        """ids (B, T/p) -> the upsampled choice (B, D, T)."""
        return self.upsample(self.codebook()[ids].transpose(1, 2), frames)


class MultiScaleVQ(nn.Module):
    def __init__(self, cfg: LLMCodecConfig):
        super().__init__()
        learned = cfg.codebooks == "learned"
        self.layers = nn.ModuleList(
            TableLayer(n, cfg.dim, cfg.llm_width, p, learned) for n, p in zip(cfg.sizes(), cfg.pools)
        )

    def forward(self, z: torch.Tensor, n_layers: int | None = None) -> VQOutput:
        residual, total = z, torch.zeros_like(z)
        codes, chosen, loss = [], [], z.new_zeros(())
        for layer in self.layers[: n_layers or len(self.layers)]:
            up, ids, layer_loss, q = layer(residual)
            residual = residual - up
            total = total + up
            codes.append(ids)
            chosen.append(q)
            loss = loss + layer_loss
        return VQOutput(total, codes, loss, chosen)


class LLMCodec(HubModel, nn.Module):
    """The LLM-Codec: ``encode(wave)`` -> per-layer codes, ``decode(codes)`` -> wave (24 kHz)."""

    model_type = "llm_codec"
    config_class = LLMCodecConfig
    config_section = "model"

    def __init__(self, config: LLMCodecConfig):
        super().__init__()
        if config.llm_width < 1 or config.vocab_size < 1 or config.num_words < 1:
            raise ValueError("an LLM-Codec needs llm_width, vocab_size and num_words, its LLM's table sizes "
                             "(build it with llm_codec.build_codec)")  # fmt: skip
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = MultiScaleVQ(config)
        self.decoder = Decoder(config)
        # layer 1's word -> its one or two LLM piece ids (-1 pads); the text of a code needs it
        self.register_buffer("word_pieces", torch.full((max(config.num_words, 1), 2), -1, dtype=torch.long))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attach_tables(self, tables: LLMTables) -> None:
        """Give the layers the frozen tables of ``tables`` (standardised when they were loaded),
        held, not copied: layer 1 the word table, layers 2 and 3 the one embedding tensor."""
        c = self.config
        want = [(c.num_words, c.llm_width), (c.vocab_size, c.llm_width)]
        got = [tuple(tables.word_table.shape), tuple(tables.embeddings.shape)]
        if got != want:
            raise ValueError(
                f"tables of {tables.name!r} are {got} (words, vocabulary), the codec's are {want}"
            )
        for i, layer in enumerate(self.quantizer.layers):
            layer.table = tables.word_table if i == 0 else tables.embeddings
        self.word_pieces.copy_(tables.word_pieces())

    def refresh_codebooks(self) -> None:
        for layer in self.quantizer.layers:
            layer.refresh()

    def _save_pretrained(self, save_directory) -> None:
        self.refresh_codebooks()
        super()._save_pretrained(save_directory)

    def _apply(self, fn, recurse: bool = True):  # the frozen tables follow .to(device / dtype)
        out = super()._apply(fn, recurse)
        moved: dict[int, torch.Tensor] = {}  # one tensor shared by two layers stays one
        for layer in self.quantizer.layers:
            if layer.table is not None:
                key = id(layer.table)
                if key not in moved:
                    moved[key] = fn(layer.table)
                layer.table = moved[key]
        return out

    def pad(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, S') zero-padded to whole frames of the slowest layer."""
        extra = (-wave.shape[-1]) % self.config.align
        return F.pad(wave, (0, extra)) if extra else wave

    def forward(self, wave: torch.Tensor, n_layers: int | None = None) -> tuple[torch.Tensor, VQOutput]:
        """(B, S) -> reconstruction (B, S) and the VQ output."""
        S = wave.shape[-1]
        out = self.quantizer(self.encoder(self.pad(wave)), n_layers)
        return self.decoder(out.quantized)[..., :S], out

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, n_layers: int | None = None) -> list[torch.Tensor]:
        """(B, S) 24 kHz -> per layer (B, T / pool) codes."""
        return self.quantizer(self.encoder(self.pad(wave)), n_layers).codes

    @torch.no_grad()
    def decode(self, codes: list[torch.Tensor], num_samples: int | None = None) -> torch.Tensor:
        """Per-layer codes (the first ``len(codes)`` layers) -> (B, S)."""
        layers = self.quantizer.layers
        frames = codes[0].shape[-1] * layers[0].pool
        z = sum(layer.embed(c, frames) for layer, c in zip(layers, codes))
        wave = self.decoder(z)
        return wave if num_samples is None else wave[..., :num_samples]

    def llm_ids(self, layer: int, codes: torch.Tensor) -> list[list[int]]:
        """One layer's codes (T,) as LLM token ids: a word's one or two pieces (layer 0), or the id."""
        if layer > 0:
            return [[int(c)] for c in codes]
        return [[int(i) for i in self.word_pieces[c] if i >= 0] for c in codes]
