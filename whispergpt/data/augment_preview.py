"""``whispergpt augment-preview RECIPE.yaml AUDIO --out DIR [--n 4] [--seed 0]``: hear and see a
recipe before spending hours of encoding.

Writes into DIR:

- ``original.wav`` and ``copy-<n>.wav`` (n = 1..N): copy ``n`` is exactly the audio that
  ``whispergpt prepare ... --augment RECIPE.yaml --seed SEED`` encodes as copy ``n`` of AUDIO
  (same seed derivation, same chain);
- ``chains.json``: per copy ``{copy, seed, chain}`` (or ``skipped`` with the reason);
- ``grid.png``: log-mel spectrograms, the original on top, one row per copy.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np

from whispergpt.audio import SAMPLE_RATE, load_audio, log_mel, save_audio
from whispergpt.data.augment import (
    AugmentedClipError,
    AugmentRecipe,
    apply_chain,
    copy_seed,
    describe_chain,
    load_recipe,
    sample_chain,
)


def preview(
    recipe: str | os.PathLike | AugmentRecipe,
    audio: str | os.PathLike,
    out: str | os.PathLike,
    n: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Write the preview files (see the module docstring); returns the ``chains.json`` records."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if not isinstance(recipe, AugmentRecipe):
        recipe = load_recipe(recipe)
    src = str(Path(audio).expanduser().resolve())  # the name prepare seeds copies with
    wave = load_audio(src, SAMPLE_RATE).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_audio(out / "original.wav", wave)
    rows, records = [("original", wave)], []
    for k in range(1, n + 1):
        s = copy_seed(seed, src, k)
        chain = sample_chain(recipe, s)
        record = dict(copy=k, seed=s, chain=chain)
        try:
            y = apply_chain(wave, chain, s)
        except AugmentedClipError as e:
            record["skipped"] = str(e)
        else:
            save_audio(out / f"copy-{k}.wav", y)
            rows.append((f"copy {k}: {describe_chain(chain)}", y))
        records.append(record)
    (out / "chains.json").write_text(json.dumps(records, indent=1))
    _grid(rows, out / "grid.png")
    return records


def _grid(rows: list[tuple[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.9 * len(rows)), sharex=True, squeeze=False)
    for ax, (title, w) in zip(axes[:, 0], rows):
        mel = log_mel(torch.from_numpy(np.ascontiguousarray(w))).numpy()  # (M, T)
        ax.imshow(
            mel,
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(0, w.shape[-1] / SAMPLE_RATE, 0, mel.shape[0]),
        )
        ax.set_title(textwrap.fill(title, 150), fontsize=7, loc="left")
        ax.set_ylabel("mel bin", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
