"""``whispergpt llm-codec train``: LLM-Codec through the codec trainer (``whispergpt.codec.train``).

The trainer is the one EnCodec trains with: the same crops, losses (waveform L1, multi-resolution
STFT, log-mel, commitment, the optional discriminator with feature matching), checkpoints with
``files.json``, exact resume, accelerate and the folder lock. This module gives it the codec to
train (``LLMCodecTrainable``) and the two teachers' losses on top.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.codec.trainable import CodecDataConfig, CodecTrainLoopConfig, LossConfig
from whispergpt.errors import InputError
from whispergpt.llm_codec.model import LLMCodec, LLMCodecConfig, VQOutput
from whispergpt.llm_codec.tables import LLMTables, load_tables
from whispergpt.llm_codec.teachers import load_teacher, resample_frames


@dataclass
class LLMQuantizerConfig:
    commitment_weight: float = 0.25
    word_list: str = ""  # a text file of words (one per line) adding two-piece words to layer 1's table
    max_words: int = 0  # layer 1's table holds at most this many words (0: all found)
    # the codec trainer's EnCodec-only switches, fixed here: the tables need no k-means init
    warmup_steps: int = 0
    freeze_encoder: bool = False
    bandwidth_dropout: bool = False
    kmeans_batches: int = 0


@dataclass
class TeacherConfig:
    semantic: str = ""  # teachers.load_teacher: "", random, mae:PATH, whisper:NAME_OR_PATH
    consistency: str = ""
    semantic_weight: float = 1.0
    consistency_weight: float = 1.0


@dataclass
class LLMCodecTrainConfig:
    model: LLMCodecConfig = field(default_factory=LLMCodecConfig)
    quantizer: LLMQuantizerConfig = field(default_factory=LLMQuantizerConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: CodecDataConfig = field(default_factory=lambda: CodecDataConfig(segment_seconds=0.96))
    train: CodecTrainLoopConfig = field(default_factory=CodecTrainLoopConfig)


def build_codec(cfg: LLMCodecConfig, tables: LLMTables) -> LLMCodec:
    """An LLM-Codec sized to ``tables`` (the LLM's width, vocabulary and word count), tables attached
    (held, not copied: the codec's layers hold ``tables.word_table`` and ``tables.embeddings``)."""
    emb = tables.embeddings
    cfg.llm, cfg.llm_width, cfg.vocab_size = tables.name, int(emb.shape[1]), int(emb.shape[0])
    cfg.num_words, cfg.tokenizer_sha = len(tables.words), tables.fingerprint
    codec = LLMCodec(cfg)
    codec.attach_tables(tables)
    return codec


class LLMCodecTrainable(nn.Module):
    """LLM-Codec as the codec trainer trains it (the methods ``TrainableCodec`` has), plus the
    teachers' heads: linear maps from the latent width to each teacher's. The LLM's tables are the
    ones ``codec`` holds (``held_tables``): nothing here keeps another reference to them."""

    def __init__(self, codec: LLMCodec, teachers: TeacherConfig):
        super().__init__()
        self.codec, self.weights = codec, teachers
        self.freeze_encoder = False
        # frozen, not this module's state: kept out of checkpoints and optimisers
        self._teachers = {k: load_teacher(getattr(teachers, k)) for k in ("semantic", "consistency")}
        dim = codec.config.dim
        self.heads = nn.ModuleDict(
            {k: nn.Linear(dim, t.dim) for k, t in self._teachers.items() if t is not None}
        )
        codec.config.teachers = {k: getattr(teachers, k) for k in ("semantic", "consistency")}

    def n_q_choices(self) -> list[int]:
        return [len(self.codec.quantizer.layers)]

    def data_init(self, wave: torch.Tensor) -> str | None:
        """EnCodec's data-dependent init (``codec.lsuv``): without it a fresh encoder maps every
        frame to nearly one direction (its conv biases; cosine 0.998 between frames on the demo
        corpus), cosine lookup then picks one word for all of them and layer 1 never recovers."""
        from whispergpt.codec.lsuv import lsuv_modules, standardize_conv

        c = self.codec
        lsuv_modules(c, lambda: c(wave), float(wave.pow(2).mean().sqrt()))
        before, after = standardize_conv(c.encoder.out, lambda: c.encoder(c.pad(wave)))
        return f"latent spread/mean {before:.3g} -> {after:.3g} (data-dependent init)"

    quantizer_ready = True

    def init_quantizer(self, batches: list[torch.Tensor]) -> None:  # the tables need none
        pass

    @property
    def codebook_size(self) -> int:
        return self.codec.config.num_words

    def first_codes(self, out: VQOutput) -> torch.Tensor:
        return out.codes[0]

    def replaced_codes(self, n_q: int) -> float:
        return 0.0

    def forward(self, wave: torch.Tensor, n_q: int | None = None, bypass: bool = False):
        return self.codec(wave, n_q)

    def _teacher(self, name: str, wave: torch.Tensor) -> torch.Tensor:
        t = self._teachers[name]
        t.to(wave.device)
        with torch.no_grad():
            return t(wave).float()  # (B, T', E)

    def extra_losses(self, wave: torch.Tensor, recon: torch.Tensor, out: VQOutput) -> dict[str, torch.Tensor]:
        """The teachers' losses (1 - cosine), weighted: the semantic teacher's clip embedding
        against layer 1's pooled output, the consistency teacher's frames against layer 2's."""
        losses = {}
        if "semantic" in self.heads:
            target = self._teacher("semantic", wave).mean(1)  # (B, E)
            pred = self.heads["semantic"](out.layers[0].mean(-1))  # (B, D) -> (B, E)
            losses["semantic"] = (
                self.weights.semantic_weight * (1 - F.cosine_similarity(pred, target, -1)).mean()
            )
        if "consistency" in self.heads and len(out.layers) > 1:
            frames = out.layers[1].transpose(1, 2)  # (B, T2, D)
            target = resample_frames(self._teacher("consistency", wave), frames.shape[1])  # (B, T2, E)
            pred = self.heads["consistency"](frames)
            cos = F.cosine_similarity(pred, target, -1)
            losses["consistency"] = self.weights.consistency_weight * (1 - cos).mean()
        return losses

    def export(self) -> LLMCodec:
        """The codec to save (``save_pretrained`` refreshes the projected codebooks it carries)."""
        return self.codec


def held_tables(module: nn.Module) -> dict[int, torch.Tensor]:
    """The tensors ``module`` holds besides its parameters and buffers (the frozen LLM tables),
    one per storage (keyed by its address): any tensor attribute of any submodule, also inside a
    dataclass attribute (an ``LLMTables``). Layers 2 and 3 share one storage, so it counts once."""
    own = {id(t) for m in module.modules() for t in (*m._parameters.values(), *m._buffers.values())}
    held: dict[int, torch.Tensor] = {}

    def visit(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            if id(v) not in own:
                held.setdefault(v.untyped_storage().data_ptr(), v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                visit(getattr(v, f.name))

    for m in module.modules():
        for v in vars(m).values():
            visit(v)
    return held


def check_llm(config: LLMCodecConfig, tables: LLMTables, where: str | os.PathLike) -> None:
    """``InputError`` naming both LLMs when ``tables`` are not the ones the codec was built on."""
    if config.tokenizer_sha != tables.fingerprint or config.vocab_size != tables.embeddings.shape[0]:
        raise InputError(
            f"the codec's codebooks come from {config.llm!r} (tokenizer {config.tokenizer_sha}, vocabulary "
            f"{config.vocab_size}), not from {tables.name!r} (tokenizer {tables.fingerprint}, vocabulary "
            f"{tables.embeddings.shape[0]})",
            where,
            f"use --llm {config.llm}, or train a new codec into another folder",
        )


def read_words(path: str) -> list[str] | None:
    if not path:
        return None
    try:
        return Path(path).read_text().split()
    except OSError as e:
        raise ValueError(f"quantizer.word_list {path}: {e.strerror}") from e


def train(cfg: LLMCodecTrainConfig, audio: list[str | os.PathLike], out: str | os.PathLike, llm: str) -> dict:
    """Train an LLM-Codec on ``audio`` with ``llm``'s tables into ``out``; the last metrics row.
    ``OUT/`` loads with ``LLMCodec.from_pretrained(OUT)``; ``OUT/tokenizer/`` is the LLM's tokenizer."""
    from whispergpt.codec.train import train as codec_train

    tables = load_tables(llm, read_words(cfg.quantizer.word_list), cfg.quantizer.max_words)
    if (Path(out) / "config.json").is_file():  # a run to resume: its codebooks are another LLM's?
        check_llm(LLMCodec.read_config(out), tables, out)
    print(f"llm-codec train: {llm}: vocabulary {tables.embeddings.shape[0]} x {tables.embeddings.shape[1]}, "
          f"{len(tables.words)} whole words for layer 1", flush=True)  # fmt: skip

    tokenizer = tables.tokenizer

    def build(c: Any) -> LLMCodecTrainable:  # called once; the tables move into the codec
        nonlocal tables
        codec, tables = build_codec(c.model, tables), None  # on a GPU no host copy stays behind
        return LLMCodecTrainable(codec, c.teachers)

    last = codec_train(cfg, audio, out, build=build, command="llm-codec train")
    tok_dir = Path(out) / "tokenizer"
    if not tok_dir.is_dir():
        tokenizer.save_pretrained(str(tok_dir))
    return last
