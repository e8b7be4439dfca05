"""The README's Python example runs as written (streaming included), against a tiny model placed
where it says, with the codec its training record names."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # ~50 s on 2 shared CPU cores: three 5 s generations
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, tiny_dataset, capsys):
    from whispergpt.data.dataset import read_manifest
    from whispergpt.models import WhisperGPT, WhisperGPTConfig
    from whispergpt.training.record import write_training_record

    monkeypatch.chdir(tmp_path)
    final = Path("runs/quickstart/train/hybrid/final")
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, pattern="delay", d_model=32,
                           n_layers=1, n_heads=2, context=128, mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    WhisperGPT(cfg).save_pretrained(final)
    write_training_record(final, read_manifest(tiny_dataset), "decoded", [tiny_dataset], steps=0)
    t = np.arange(16000) / 16000  # 1 s of stereo at 16 kHz
    sf.write(
        "prompt.wav", np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, 16000
    )
    scope: dict = {}
    exec(compile(python_example(), "README.md", "exec"), scope)
    assert scope["wav"].shape == (4, 375 * 320) and scope["wav"].dtype == torch.float32
    cont, sr = sf.read("continuation.wav")
    assert sr == 24000 and len(cont) == (75 + 375) * 320
    shapes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("(1, ")]
    assert len(shapes) > 10 and shapes[0] == "(1, 24000)"  # the prompt first, then 8-frame chunks
