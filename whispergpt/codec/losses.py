"""Adversarial losses of codec training: a multi-scale STFT discriminator (hinge) and feature
matching (``loss.adversarial``). The waveform/STFT/mel reconstruction terms are in ``train``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class STFTDiscriminator(nn.Module):
    """One scale of the multi-scale STFT discriminator: 2-D convs over (real, imag) x (time, freq)."""

    def __init__(self, n_fft: int, filters: int = 16, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        self.hop = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        wn = nn.utils.parametrizations.weight_norm
        convs = [wn(nn.Conv2d(2, filters, (3, 9), padding=(1, 4)))]
        for d in dilations:  # dilate along time, stride 2 along frequency
            convs.append(
                wn(nn.Conv2d(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)))
            )
        convs.append(wn(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.post = wn(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(
            wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )  # (B, F, T')
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, T', F)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return self.post(x), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts: list[int], filters: int = 16):
        super().__init__()
        self.discs = nn.ModuleList(STFTDiscriminator(n, filters) for n in n_ffts)

    def forward(self, wave: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wave) for d in self.discs]


def disc_hinge_loss(real: list, fake: list) -> torch.Tensor:
    return sum(F.relu(1 - r[0]).mean() + F.relu(1 + f[0]).mean() for r, f in zip(real, fake)) / len(real)


def gen_adv_losses(real: list, fake: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge generator loss and relative L1 feature matching (normalised by the real features' scale)."""
    adv = sum(F.relu(1 - f[0]).mean() for f in fake) / len(fake)
    feat = 0.0
    n = 0
    for (_, fr), (_, ff) in zip(real, fake):
        for a, b in zip(fr, ff):
            feat = feat + (b - a.detach()).abs().mean() / (a.detach().abs().mean() + 1e-6)
            n += 1
    return adv, feat / max(n, 1)
