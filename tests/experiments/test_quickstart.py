"""The README quickstart, shortened (``--quick``): the whole pipeline on a real, tiny corpus.

Needs espeak-ng, FluidSynth + a GM soundfont and music21 (``.ci/run`` installs them). Outside CI
the test skips when they are missing; in CI it runs and fails with the install command instead.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow


def _have_tools() -> bool:
    try:
        import music21  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("espeak-ng") and shutil.which("fluidsynth"))


@pytest.mark.skipif(not _have_tools() and not os.environ.get("CI"), reason="demo corpus tools not installed")
def test_quickstart_quick_end_to_end_and_rerun(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "whispergpt", "quickstart", "--quick", "--sources", "espeak,music21"]
    cmd += ["--out", str(out), "--no-install"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "hub unreachable: using the shipped offline codec" in first.stderr

    for m in ("speech", "music"):
        manifest = json.loads((out / "prepared" / m / "manifest.json").read_text())
        assert manifest["splits"]["train"]["files"] > 0 and manifest["decoded_mel"]
        report = json.loads((out / "eval" / f"{m}.json").read_text())
        names = {e["name"]: e for e in report["checkpoints"]}
        assert set(names) == {"hybrid", "token_only"}
        assert names["hybrid"]["trained_mel_source"] == "decoded"
        for e in names.values():
            for ev in e["evaluations"]:
                assert ev["metrics"]["tokens"] == report["data"]["frames"] * 2  # K=2 at 1.5 kbps
        assert (out / "eval" / f"{m}.png").stat().st_size > 0
        wav = out / "samples" / m / "sample_0.wav"
        info = sf.info(wav)
        assert info.samplerate == 24000 and info.duration == pytest.approx(2.0, abs=0.05)  # 1 s prompt + 1 s
        assert (out / "samples" / m / "sample_0.png").stat().st_size > 0
        # both models continued the same held-out prompts, scored against the real audio
        for run in ("hybrid", "token_only"):
            rec = json.loads((out / "heldout" / m / run / "generation.json").read_text())
            assert (
                rec["num_prompts"] == 2 and (out / "heldout" / m / run / "prompt_000_reference.wav").is_file()
            )
            assert json.loads((out / "score" / m / run / "score.json").read_text())["counts"]["pairs"] == 2
        table = (out / "score" / f"{m}.md").read_text()
        assert "| metric | hybrid | token_only | differs |" in table and "paired mel_distance" in table
        assert table.strip() in first.stdout.replace("\r", "")
    for run in ("hybrid", "token_only"):
        assert (out / "train" / run / "final" / "model.safetensors").is_file()

    # re-running resumes: every step is skipped, nothing is redone
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    skipped = [line for line in second.stdout.splitlines() if "done already, skipping" in line]
    assert len(skipped) == 17, second.stdout  # 9 steps + 4 held-out samplings + 4 scorings
    assert Path(out / "quickstart.json").is_file()
