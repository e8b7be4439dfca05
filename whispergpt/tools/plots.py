"""PNG figures of generated audio (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import os

import torch

from ..audio import FRAME_RATE, log_mel


def save_spectrogram(
    path: str | os.PathLike, wave: torch.Tensor, boundary_s: float | None, title: str
) -> None:
    """Log-mel PNG of ``wave (S,)`` with a vertical line at the prompt boundary (seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = log_mel(wave.float().cpu()).numpy()  # (M, T)
    seconds = mel.shape[-1] / FRAME_RATE
    fig, ax = plt.subplots(figsize=(max(4.0, min(16.0, 2.0 + seconds)), 3.2), dpi=100)
    im = ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    if boundary_s:
        ax.axvline(boundary_s, color="cyan", linewidth=1.5, linestyle="--", label="prompt | continuation")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, pad=0.01)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
