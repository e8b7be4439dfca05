"""Codec training data: audio files found, loaded into memory, and cropped deterministically."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from whispergpt.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioLoadError, load_audio


def find_audio_files(items: list[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, by audio extension) into a sorted file list."""
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"audio input {item!r} is neither a file nor a directory")
    return files


class CropSampler:
    """Random fixed-length crops from audio held in memory, sampled in proportion to file length.

    ``batch(step, rank)`` is a pure function of (seed, step, rank), so a resumed run sees the same
    stream of crops as an uninterrupted one (no RNG state to checkpoint).
    """

    def __init__(self, waves: list[torch.Tensor], segment: int, seed: int = 0, min_rms: float = 1e-3):
        if not waves:
            raise ValueError("no usable audio: pass at least one readable audio file or directory")
        self.waves = waves
        self.segment = segment
        self.seed = seed
        self.min_rms = min_rms
        lengths = torch.tensor([max(w.numel(), 1) for w in waves], dtype=torch.float64)
        self.probs = lengths / lengths.sum()

    @property
    def seconds(self) -> float:
        return sum(w.numel() for w in self.waves) / SAMPLE_RATE

    def crop(self, gen: torch.Generator) -> torch.Tensor:
        for _ in range(8):
            w = self.waves[int(torch.multinomial(self.probs, 1, generator=gen))]
            if w.numel() <= self.segment:
                out = F.pad(w, (0, self.segment - w.numel()))
            else:
                start = int(torch.randint(0, w.numel() - self.segment + 1, (1,), generator=gen))
                out = w[start : start + self.segment]
            if out.pow(2).mean().sqrt() >= self.min_rms:
                break
        return out

    def batch(self, batch_size: int, step: int, rank: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 131 + rank)
        return torch.stack([self.crop(gen) for _ in range(batch_size)])  # (B, S)


def load_corpus(files: list[Path]) -> tuple[list[torch.Tensor], list[dict]]:
    """Load every file at 24 kHz mono; unreadable files are reported and skipped."""
    waves, skipped = [], []
    for f in files:
        try:
            waves.append(load_audio(f))
        except AudioLoadError as e:
            print(f"skipping {e}", file=sys.stderr)
            skipped.append({"path": str(f), "reason": str(e)})
    return waves, skipped
