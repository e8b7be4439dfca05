"""The two frozen teachers of LLM-Codec's training, by name.

- the **semantic** teacher gives one global embedding per clip; layer 1's pooled output is pulled
  towards it (the paper: a T5 text/audio encoder);
- the **consistency** teacher gives frames; layer 2's frames are pulled towards them (the paper:
  Whisper's encoder; without it its training collapses).

A teacher is named by a string (a config key, recorded in the codec's config):

- ``""``: off;
- ``mae:PATH``: our EnCodecMAE (``whispergpt embed``'s features: its last layer's frames);
- ``whisper:NAME_OR_PATH``: a Hugging Face Whisper model's encoder (audio resampled to 16 kHz);
- ``random``: a small frozen random conv net on the log-mel, seeded: it checks the plumbing only
  and teaches nothing real.

A teacher maps ``(B, S)`` 24 kHz audio to ``(B, T', E)`` frames; the global embedding is their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.audio import log_mel


class RandomTeacher(nn.Module):
    """Frozen random convs over the 80-bin log-mel (75 Hz): plumbing only."""

    dim = 64

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv1d(80, 64, 3, padding=1), nn.GELU(), nn.Conv1d(64, self.dim, 3, padding=1)
            )
        self.requires_grad_(False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(log_mel(wave, 80)).transpose(1, 2)  # (B, T', E)


class MAETeacher(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        from whispergpt.semantic.features import MAEInput, load_mae

        self.model, directory = load_mae(path)
        self.input = MAEInput.from_checkpoint(self.model, directory)
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.d_model)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        from whispergpt.semantic.features import encode_frames

        x = torch.stack([self.input.features(w) for w in wave])  # (B, C, T)
        return encode_frames(self.model, x).to(wave.device)


class WhisperTeacher(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperModel

        self.features = WhisperFeatureExtractor.from_pretrained(name)
        self.encoder = WhisperModel.from_pretrained(name).get_encoder().eval().requires_grad_(False)
        self.dim = int(self.encoder.config.d_model)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        from whispergpt.audio import resample

        clips = [resample(w.detach().cpu().float().numpy(), 24_000, 16_000) for w in wave]
        feats = self.features(clips, sampling_rate=16_000, return_tensors="pt").input_features
        frames = self.encoder(feats.to(wave.device)).last_hidden_state  # (B, 1500, E): 30 s windows
        keep = max(1, round(frames.shape[1] * min(1.0, wave.shape[-1] / (30 * 24_000))))
        return frames[:, :keep]


def load_teacher(spec: str) -> nn.Module | None:
    """A teacher by name (module docstring); None for ``""``; ``ValueError`` for an unknown kind."""
    if not spec:
        return None
    if spec == "random":
        return RandomTeacher()
    kind, _, where = spec.partition(":")
    if kind == "mae" and where:
        return MAETeacher(where)
    if kind == "whisper" and where:
        return WhisperTeacher(where)
    raise ValueError(f"unknown teacher {spec!r}: expected '', 'random', 'mae:PATH' or 'whisper:NAME_OR_PATH'")


def resample_frames(frames: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T', E) -> (B, length, E), linear in time."""
    return F.interpolate(frames.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(
        1, 2
    )
