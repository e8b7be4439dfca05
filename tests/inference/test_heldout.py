"""``whispergpt sample --data``: held-out prompts by the documented rule, continuations next to their
real references, resume of an interrupted run, and input errors before any work."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from whispergpt.audio import HOP_LENGTH, load_audio
from whispergpt.cli.sample import main
from whispergpt.data import PreparedDataset
from whispergpt.inference.heldout import pick_prompts
from whispergpt.models import WhisperGPT, WhisperGPTConfig


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=80, pattern="delay", fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=64, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("ckpt") / "model"
    WhisperGPT(cfg).save_pretrained(d)
    return d


def test_pick_prompts_is_seeded_spreads_over_files_and_stays_inside_them():
    files = [dict(path=f"f{i}", frames=n) for i, n in enumerate([100, 30, 60, 80])]
    a = pick_prompts(files, 5, 20, 20, seed=3)
    assert a == pick_prompts(files, 5, 20, 20, seed=3)
    assert a != pick_prompts(files, 5, 20, 20, seed=4)
    assert {p["file"] for p in a[:3]} == {0, 2, 3}  # every eligible file before any repeats; f1 is too short
    assert all(0 <= p["start"] <= files[p["file"]]["frames"] - 40 for p in a)
    with pytest.raises(ValueError, match="no file in the split has 200 frames"):
        pick_prompts(files, 1, 100, 100, seed=0)


def args(ckpt, codec, data, out, *extra):
    return [
        "--checkpoint", str(ckpt), "--codec", str(codec), "--data", str(data), "--split", "val",
        "--num-prompts", "3", "--prompt-seconds", "0.4", "--seconds", "0.4", "--batch-size", "2",
        "--seed", "5", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def test_heldout_continuations_sit_next_to_their_real_audio_and_resume(
    tmp_path, ckpt_dir, tiny_codec_dir, tiny_dataset
):
    out = tmp_path / "heldout"
    assert main(args(ckpt_dir, tiny_codec_dir, tiny_dataset, out)) == 0
    rec = json.loads((out / "generation.json").read_text())
    Tp, Tc = 30, 30  # 0.4 s at 75 frames/s
    assert rec["prompt_frames"] == Tp and rec["generated_frames"] == Tc and rec["num_prompts"] == 3
    ds = PreparedDataset(tiny_dataset, "val")
    assert [(p["file"], p["start"]) for p in rec["prompts"]] == [
        (p["file"], p["start"]) for p in pick_prompts(ds.files, 3, Tp, Tc, 5)
    ]
    for p in rec["prompts"]:
        full, _ = sf.read(out / f"{p['name']}.wav", dtype="float32")
        cont, _ = sf.read(out / f"{p['name']}_continuation.wav", dtype="float32")
        ref, _ = sf.read(out / f"{p['name']}_reference.wav", dtype="float32")
        assert len(full) == (Tp + Tc) * HOP_LENGTH and len(cont) == len(ref) == Tc * HOP_LENGTH
        np.testing.assert_array_equal(full[Tp * HOP_LENGTH :], cont)
        # the reference is the original audio that followed the prompt (16-bit WAV rounding)
        a = (p["start"] + Tp) * HOP_LENGTH
        original = load_audio(p["path"]).numpy()[a : a + Tc * HOP_LENGTH]
        np.testing.assert_allclose(ref, original, atol=2e-4)
        assert p["reference_source"] == "original audio"

    # an interrupted run: the second batch (prompt 2) never finished; the first batch is kept as is
    before = {f.name: f.read_bytes() for f in out.glob("prompt_*.wav")}
    mtimes = {f.name: f.stat().st_mtime_ns for f in out.glob("prompt_00[01]*.wav")}
    for f in out.glob("prompt_002*.wav"):
        f.unlink()
    assert main(args(ckpt_dir, tiny_codec_dir, tiny_dataset, out)) == 0
    assert {f.name: f.read_bytes() for f in out.glob("prompt_*.wav")} == before  # same audio
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("prompt_00[01]*.wav")} == mtimes  # not redone


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--prompt", "x.wav"], "drop --prompt"),
        (["--num-prompts", "0"], "--num-prompts >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_heldout_input_errors_exit_2_before_any_work(
    tmp_path, ckpt_dir, tiny_codec_dir, tiny_dataset, extra, match, capsys
):
    out = tmp_path / "never"
    assert main(args(ckpt_dir, tiny_codec_dir, tiny_dataset, out, *extra)) == 2
    assert match in capsys.readouterr().err and not out.exists()
