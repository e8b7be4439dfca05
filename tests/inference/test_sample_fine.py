"""``whispergpt sample --fine``: a coarse decoder + a fine stage to a WAV decoded from all K
codebooks, both checkpoints recorded; mismatched pairs exit 2 naming both values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, load_audio
from whispergpt.cli.sample import main
from whispergpt.errors import InputError
from whispergpt.inference.fine_stage import check_pairing
from whispergpt.models import FineConfig, FineModel, WhisperGPT, WhisperGPTConfig
from whispergpt.training.record import write_training_record


def record(d, codec, bandwidth=1.5, K=2, V=1024):
    manifest = dict(codec=str(codec), bandwidth=bandwidth, num_codebooks=K, codebook_size=V, n_mels=80,
                    sample_rate=SAMPLE_RATE)  # fmt: skip
    write_training_record(d, manifest, "truth", ["data"], 1)


def coarse_model(K=2, pattern="coarse") -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=K, codebook_size=1024, n_mels=80, pattern=pattern, fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=48, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    return WhisperGPT(cfg)


def fine_model(K=2, V=1024, coarse_codebooks=1) -> FineModel:
    torch.manual_seed(1)
    cfg = FineConfig(num_codebooks=K, codebook_size=V, coarse_codebooks=coarse_codebooks, d_model=32,
                     n_layers=1, n_heads=2, context=16)  # fmt: skip
    return FineModel(cfg)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_codec_dir):
    root = tmp_path_factory.mktemp("pair")
    coarse_model().save_pretrained(root / "coarse")
    record(root / "coarse", tiny_codec_dir)
    fine_model().save_pretrained(root / "fine")
    record(root / "fine", tiny_codec_dir)
    return root / "coarse", root / "fine"


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    p = tmp_path_factory.mktemp("wav") / "prompt.wav"
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(p, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), SAMPLE_RATE)
    return p


def test_sample_fine_decodes_all_codebooks_and_records_both(tmp_path, pair, prompt_wav, tiny_codec):
    coarse, fine = pair
    out = tmp_path / "out"
    argv = ["--checkpoint", str(coarse), "--fine", str(fine), "--prompt", str(prompt_wav), "--prompt-seconds",
            "0.2", "--seconds", "0.5", "--out", str(out), "--num-samples", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert rec["checkpoint"] == str(coarse) and rec["fine"]["checkpoint"] == str(fine)
    assert rec["fine"]["model"]["coarse_codebooks"] == 1 and rec["fine"]["timing"]["real_time_factor"] > 0
    Tp, N = 15, 38  # 0.2 s -> 15 frames; 0.5 s -> round(37.5) = 38
    wav, sr = sf.read(out / "sample_0.wav")
    assert sr == SAMPLE_RATE and len(wav) == (Tp + N) * HOP_LENGTH
    # the prompt keeps its true codes of all K codebooks (the decoder is causal): its audio is the
    # all-K decode of the encoded prompt, not the codebook-0 one a coarse model alone gives
    prompt = load_audio(prompt_wav)[: Tp * HOP_LENGTH][None]
    with torch.no_grad():
        codes = tiny_codec.encode(prompt)  # (1, K, Tp)
        full, only0 = (
            np.clip(tiny_codec.decode(c)[0].numpy(), -1, 1) for c in (codes, codes[:, :1])
        )  # as saved
    head = wav[: Tp * HOP_LENGTH]
    assert np.abs(head - full).max() < 2e-4 < np.abs(head - only0).max()


def test_sample_fine_with_heldout_prompts(tmp_path, pair, tiny_dataset):
    coarse, fine = pair
    out = tmp_path / "heldout"
    argv = ["--checkpoint", str(coarse), "--fine", str(fine), "--data", str(tiny_dataset), "--num-prompts", "2",
            "--prompt-seconds", "0.2", "--seconds", "0.2", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert rec["fine"]["checkpoint"] == str(fine) and (out / "prompt_001.wav").is_file()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("K4", ["num_codebooks=4", "num_codebooks=2"]),
        ("V512", ["codebook_size=512", "codebook_size=1024"]),
        ("codec", ["@ 3.0 kbps", "@ 1.5 kbps"]),
        ("lm", ["expects a 'whispergpt-fine' model", "'whispergpt' model"]),
    ],
)
def test_mismatched_fine_exits_2_naming_both_values(tmp_path, pair, tiny_codec_dir, capsys, kind, words):
    coarse, _ = pair
    bad = tmp_path / kind
    if kind == "lm":
        coarse_model().save_pretrained(bad)
    else:
        fine_model(K=4 if kind == "K4" else 2, V=512 if kind == "V512" else 1024).save_pretrained(bad)
    record(bad, tiny_codec_dir, bandwidth=3.0 if kind == "codec" else 1.5)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(coarse), "--fine", str(bad), "--seconds", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not out.exists()  # nothing generated or written


def test_pairing_needs_the_coarse_codebooks_generated():
    coarse = coarse_model(K=4).config  # generates codebook 0 only
    with pytest.raises(InputError, match=r"coarse_codebooks=2.*generates 1"):
        check_pairing(coarse, "coarse", fine_model(K=4, coarse_codebooks=2), "fine")
    notes = check_pairing(
        coarse_model(K=4, pattern="delay").config, "c", fine_model(K=4, coarse_codebooks=2), "f"
    )
    assert any("keeps 0..1 and predicts 2..3" in n for n in notes)
