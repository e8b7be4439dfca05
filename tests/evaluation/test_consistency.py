"""``whispergpt consistency``: chroma continuity and the probe judge's agreement, per folder and paired."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.cli.consistency import main
from whispergpt.errors import InputError
from whispergpt.evaluation.consistency import run_consistency
from whispergpt.experiments.probe import language_judge

PROMPT_FRAMES = 45  # 0.6 s
N = PROMPT_FRAMES * HOP_LENGTH


def _tone(hz: float, rng) -> np.ndarray:
    t = np.arange(N) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6)) + 0.003 * rng.standard_normal(N)).astype(
        np.float32
    )


def _noise(kind: str, rng) -> np.ndarray:
    w = rng.standard_normal(N + 32)
    x = np.convolve(w, np.ones(32) / 32, "valid")[:N] if kind == "low" else np.diff(w)[:N]
    return (0.1 * x / x.std()).astype(np.float32)


def _folder(path, prompts, continuations, references):
    """A held-out folder as ``sample --data`` writes it."""
    path.mkdir(parents=True)
    names = []
    for i, (p, c, r) in enumerate(zip(prompts, continuations, references)):
        name = f"prompt_{i:03d}"
        sf.write(path / f"{name}.wav", np.concatenate([p, c]), SAMPLE_RATE)
        sf.write(path / f"{name}_continuation.wav", c, SAMPLE_RATE)
        sf.write(path / f"{name}_reference.wav", r, SAMPLE_RATE)
        names.append(dict(name=name, file=i, path=f"src{i}.wav", start=0))
    meta = dict(prompt_frames=PROMPT_FRAMES, prompts=names, checkpoint="ckpt")
    (path / "generation.json").write_text(json.dumps(meta))
    return path


def test_chroma_continuity_follows_the_prompts_pitch(tmp_path):
    rng = np.random.default_rng(0)
    hz = [220.0, 261.6, 329.6, 392.0]
    prompts = [_tone(h, rng) for h in hz]
    same = _folder(tmp_path / "same", prompts, [_tone(h, rng) for h in hz], [_tone(h, rng) for h in hz])
    # a tritone away: the pitch classes share nothing with the prompt's
    off = _folder(
        tmp_path / "off", prompts, [_tone(h * 2 ** (6 / 12), rng) for h in hz], [_tone(h, rng) for h in hz]
    )
    report = run_consistency([same, off], n_boot=200)
    a, b = report["folders"]
    assert set(report["metrics"]) == {"chroma_continuity"}  # no --mae: no judge
    assert a["clips"]["continuation"]["chroma_continuity"]["value"] > 0.95
    assert b["clips"]["continuation"]["chroma_continuity"]["value"] < 0.3
    assert b["clips"]["reference"]["chroma_continuity"]["value"] > 0.95  # the ceiling, unchanged
    assert a["paired"] is None and b["paired"]["chroma_continuity"]["value"] < -0.6


def test_judge_agreement_and_paired_difference(tmp_path, mae_dir):
    rng = np.random.default_rng(1)
    kinds = ["low", "high", "low", "high", "low", "high"]
    prompts = [_noise(k, rng) for k in kinds]
    refs = [_noise(k, rng) for k in kinds]
    keep = _folder(tmp_path / "keep", prompts, [_noise(k, rng) for k in kinds], refs)
    flip = {"low": "high", "high": "low"}
    swap = _folder(tmp_path / "swap", prompts, [_noise(flip[k], rng) for k in kinds], refs)
    judge = language_judge(str(mae_dir), None, cache=tmp_path / "cache", task="toy")
    report = run_consistency([keep, swap], judge, n_boot=200)
    assert report["judge_task"] == "toy" and report["language_probe_cv_accuracy"] > 0.9
    a, b = report["folders"]
    assert a["clips"]["continuation"]["language_agreement"]["value"] == 1.0
    assert b["clips"]["continuation"]["language_agreement"]["value"] == 0.0
    assert a["clips"]["reference"]["language_agreement"]["value"] == 1.0
    assert b["paired"]["language_agreement"]["value"] == -1.0
    assert (
        b["clips"]["continuation"]["language_prob"]["value"]
        < a["clips"]["continuation"]["language_prob"]["value"]
    )
    assert -1.0 <= b["clips"]["continuation"]["mae_similarity"]["value"] <= 1.0


def test_cli_writes_report_and_rejects_other_folders(tmp_path, capsys):
    rng = np.random.default_rng(2)
    f = _folder(tmp_path / "f", [_tone(440, rng)] * 2, [_tone(440, rng)] * 2, [_tone(440, rng)] * 2)
    assert main([str(f), "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    assert json.loads((tmp_path / "out" / "consistency.json").read_text())["folders"][0]["prompts"] == 2
    assert "chroma_continuity" in (tmp_path / "out" / "consistency.md").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="generation.json"):
        run_consistency([tmp_path / "empty"])
    (tmp_path / "empty" / "generation.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        run_consistency([tmp_path / "empty"])
    assert (
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 2
    )  # the CLI's exit for input errors


def test_reference_is_compared_with_the_original_prompt(tmp_path):
    """The real continuation is judged against the prompt cut from the original file (like with
    like), the generated one against the decoded prompt in ``<name>.wav``."""
    rng = np.random.default_rng(3)
    start = 10  # frames
    original = np.concatenate(
        [np.zeros(start * HOP_LENGTH, np.float32), _tone(440.0, rng), _tone(440.0, rng)]
    )
    sf.write(tmp_path / "orig.wav", original, SAMPLE_RATE)
    decoded_prompt = _tone(440.0 * 2 ** (6 / 12), rng)  # a tritone away from the original prompt
    f = _folder(tmp_path / "f", [decoded_prompt], [_tone(440.0, rng)], [_tone(440.0, rng)])
    meta = json.loads((f / "generation.json").read_text())
    meta["prompts"][0].update(path=str(tmp_path / "orig.wav"), start=start, reference_source="original audio")
    (f / "generation.json").write_text(json.dumps(meta))
    clips = run_consistency([f], n_boot=10)["folders"][0]["clips"]
    assert clips["reference"]["chroma_continuity"]["value"] > 0.95  # vs the original prompt (440 Hz)
    assert clips["continuation"]["chroma_continuity"]["value"] < 0.3  # vs the decoded prompt
