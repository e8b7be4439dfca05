"""docs/HIERARCHY.md's command chain, run as written at tiny scale: the documented bash block with the
quickstart recipes swapped for the tiny ones, the tiny random codec, a few steps and short samples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whispergpt.audio import save_audio
from whispergpt.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = {"mae_quickstart.yaml": "mae_tiny.yaml", "semantic_quickstart.yaml": "semantic_tiny.yaml",
        "quickstart.yaml": "tiny.yaml", "fine_quickstart.yaml": "fine_tiny.yaml"}  # fmt: skip
STEPS = ("train.max_steps=2 train.save_every=2 train.eval_every=2 train.eval_batches=1 train.batch_size=2 "
         "logging.wandb=false logging.progress=false")  # fmt: skip


def documented_chain() -> list[str]:
    text = (REPO / "docs" / "HIERARCHY.md").read_text()
    section = text[text.index("### The command chain") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def tiny_line(line: str, codec_dir: Path) -> str | None:
    if line.startswith("whispergpt data demo"):
        return None  # the test writes the corpus itself
    line = line.replace("--codec default", f"--codec {codec_dir}").replace("--clusters 256", "--clusters 6")
    line = line.replace("--prompt-seconds 2", "--prompt-seconds 0.4").replace("--seconds 8", "--seconds 1.2")
    m = re.match(r"python train\.py (\S+)(.*)$", line)
    if m:  # the tiny recipe, at the quickstart recipe's paths, then the documented overrides
        recipe = load_recipe(m.group(1))
        dirs = recipe["data"]["dir"]
        dirs = f"[{', '.join(dirs)}]" if isinstance(dirs, list) else dirs
        head = f'python {REPO / "train.py"} {TINY[m.group(1)]} out_dir={recipe["out_dir"]} "data.dir={dirs}"'
        line = f"{head}{m.group(2)} {STEPS}"
    line = re.sub(r"^python sample\.py", f"python {REPO / 'sample.py'}", line)
    line = re.sub(r"^whispergpt ", "python -m whispergpt ", line)
    return line.replace("python ", f"{sys.executable} ", 1) if line.startswith("python ") else line


@pytest.mark.slow
def test_the_documented_chain_runs_at_tiny_scale(tmp_path, tiny_codec_dir):
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 24000
    for m, base in (("speech", 180), ("music", 440)):
        d = tmp_path / "runs" / "quickstart" / "corpus" / m
        d.mkdir(parents=True)
        for i in range(4):
            w = 0.3 * np.sin(2 * np.pi * (base + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
            save_audio(d / f"{m}{i}.wav", w.astype(np.float32), 24000)
    lines = [x for x in (tiny_line(line, tiny_codec_dir) for line in documented_chain()) if x]
    assert any("semantic_tiny.yaml" in x for x in lines) and sum("--semantic-lm" in x for x in lines) == 2
    script = tmp_path / "chain.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(lines) + "\n")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python -c` lines
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline", HF_HUB_OFFLINE="1", PATH=path)
    proc = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    q = tmp_path / "runs" / "quickstart"
    for m in ("speech", "music"):
        rec = json.loads((q / "hierarchy" / m / "generation.json").read_text())
        assert [s["stage"] for s in rec["stages"]] == ["semantic", "acoustic", "fine"]
        assert rec["generated_frames"] == 90 and (q / "hierarchy" / m / "sample_0.wav").is_file()
    report = json.loads((q / "reports" / "semantic_speech.json").read_text())
    assert report["bits_per_second"][0]["strategy"] == "semantic"
