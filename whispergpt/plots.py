"""PNG figures of generated audio and of eval reports (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import os

import torch

from whispergpt.audio import FRAME_RATE, log_mel


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


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """``whispergpt eval``'s figure: two panels: NLL per codebook (per checkpoint and mel source), val NLL vs training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for e in report["checkpoints"]:
        for ev in e["evaluations"]:
            per = ev["metrics"]["per_codebook"]
            label = f"{e['name']} ({ev['mel_label']})"
            ax1.plot([p["codebook"] for p in per], [p["nll"] for p in per], marker="o", label=label)
        if e["val_curve"]:
            steps, vals = zip(*e["val_curve"])
            trained = e.get("trained_mel_source", "unknown")
            crops = f"val crops, mel={trained}" if e["config"]["fusion"] != "none" else "val crops"
            ax2.plot(steps, vals, marker=".", label=f"{e['name']} ({crops})")
    ax1.set_xlabel("codebook")
    ax1.set_ylabel("NLL (nats/token)")
    ax1.set_title(f"NLL per codebook on {report['data']['split']} (whole split)")
    evs = [ev for e in report["checkpoints"] for ev in e["evaluations"]]
    ks = max((ev["metrics"]["per_codebook"][-1]["codebook"] + 1 for ev in evs), default=1)
    ax1.set_xticks(range(ks))
    ax1.set_xlim(-0.5, ks - 0.5)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("training step")
    ax2.set_ylabel("val NLL (nats/token)")
    ax2.set_title("val NLL during training (metrics.jsonl)")
    if ax2.lines:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no metrics.jsonl found", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
