import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from whispergpt.audio import (
    HOP_LENGTH,
    SAMPLE_RATE,
    WIN_LENGTH,
    AudioLoadError,
    load_audio,
    log_mel,
    mel_filterbank,
    save_audio,
)


def _tone(seconds=1.0, sr=SAMPLE_RATE, f=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_load_wav_24k_roundtrip(tmp_path):
    x = _tone()
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == torch.float32 and y.shape == (len(x),)
    torch.testing.assert_close(y, torch.from_numpy(x))


def test_load_441_stereo_resamples_and_downmixes(tmp_path):
    left, right = _tone(1.0, 44100, 440.0), _tone(1.0, 44100, 660.0)
    sf.write(tmp_path / "s.flac", np.stack([left, right], 1), 44100)
    y = load_audio(tmp_path / "s.flac")
    assert abs(y.shape[0] - SAMPLE_RATE) <= 1
    # the down-mixed tones keep their energy at 440 and 660 Hz after resampling
    spec = np.abs(np.fft.rfft(y.numpy()))
    freqs = np.fft.rfftfreq(y.shape[0], 1 / SAMPLE_RATE)
    top = sorted(freqs[np.argsort(spec)[-2:]].round())
    assert top == [440.0, 660.0]


def test_load_8bit_and_ogg(tmp_path):
    x = _tone()
    sf.write(tmp_path / "u8.wav", x, SAMPLE_RATE, subtype="PCM_U8")
    sf.write(tmp_path / "v.ogg", x, SAMPLE_RATE)
    for name in ("u8.wav", "v.ogg"):
        y = load_audio(tmp_path / name)
        assert y.shape == (SAMPLE_RATE,)
        assert float((y - torch.from_numpy(x)).abs().mean()) < 0.05


@pytest.mark.parametrize(
    "kind,match",
    [
        ("missing", "no such audio file"),
        ("corrupt", "cannot decode"),
        ("empty", "cannot decode|no audio"),
        ("nan", "non-finite"),
    ],
)
def test_load_bad_input_names_the_file(tmp_path, kind, match):
    p = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        p.write_bytes(b"RIFF\x00\x01garbage" * 50)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "nan":
        x = _tone()
        x[100] = np.nan
        sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=match) as e:
        load_audio(p)
    assert str(p) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_save_audio_writes_pcm16(tmp_path):
    save_audio(tmp_path / "o.wav", torch.from_numpy(_tone()) * 3)  # clipped, not wrapped
    info = sf.info(tmp_path / "o.wav")
    assert info.samplerate == SAMPLE_RATE and info.subtype == "PCM_16" and info.channels == 1
    assert np.abs(sf.read(tmp_path / "o.wav")[0]).max() <= 1.0


@pytest.mark.parametrize("S", [0, 319, 320, 641, 24000])
def test_log_mel_frame_count(S):
    m = log_mel(torch.randn(2, 3, S), n_mels=64)
    assert m.shape == (2, 3, 64, S // HOP_LENGTH)
    assert m.dtype == torch.float32


@pytest.mark.parametrize("t0", [0, 1, 3, 17])
def test_log_mel_is_causal(t0):
    g = torch.Generator().manual_seed(t0)
    x = torch.randn(2, 40 * HOP_LENGTH, generator=g)
    y = x.clone()
    y[:, t0 * HOP_LENGTH :] += torch.randn(2, y.shape[1] - t0 * HOP_LENGTH, generator=g)
    mx, my = log_mel(x), log_mel(y)
    assert torch.equal(mx[..., :t0], my[..., :t0])  # bit-identical before t0
    assert not torch.equal(mx[..., t0], my[..., t0])  # and frame t0 does see the change


def test_log_mel_batched_equals_per_item():
    x = torch.randn(3, 7 * HOP_LENGTH + 5)
    batched = log_mel(x)
    for i in range(3):
        torch.testing.assert_close(batched[i], log_mel(x[i]), rtol=1e-5, atol=1e-5)


def test_log_mel_normalisation_is_fixed_per_frame():
    """A loud event later in the clip must not change the scale of earlier frames."""
    x = 0.01 * torch.randn(1, 30 * HOP_LENGTH)
    y = x.clone()
    y[:, 20 * HOP_LENGTH :] *= 100
    assert torch.equal(log_mel(x)[..., :20], log_mel(y)[..., :20])


def test_filterbank_matches_transformers_slaney():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        WIN_LENGTH // 2 + 1, 80, 0.0, SAMPLE_RATE / 2, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    np.testing.assert_allclose(mel_filterbank(80), ref, rtol=1e-6, atol=1e-9)


def test_log_mel_parity_with_reference_spectrogram():
    """Same definition via transformers' numpy spectrogram on the explicitly left-padded wave."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(25 * HOP_LENGTH)).astype(np.float32)
    padded = np.concatenate([np.zeros(WIN_LENGTH - HOP_LENGTH, np.float32), x])
    fb = mel_filter_bank(
        WIN_LENGTH // 2 + 1, 80, 0.0, SAMPLE_RATE / 2, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    ref = spectrogram(
        padded,
        window_function(WIN_LENGTH, "hann", periodic=True),
        frame_length=WIN_LENGTH,
        hop_length=HOP_LENGTH,
        power=2.0,
        center=False,
        mel_filters=fb,
        mel_floor=1e-10,
        log_mel="log10",
        dtype=np.float64,
    )
    ref = (ref + 4.0) / 4.0
    ours = log_mel(torch.from_numpy(x)).double().numpy()
    assert ours.shape == ref.shape == (80, 25)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_log_mel_cuda_matches_cpu():
    x = torch.randn(2, 10 * HOP_LENGTH)
    torch.testing.assert_close(log_mel(x.cuda()).cpu(), log_mel(x), rtol=1e-4, atol=1e-4)


def test_package_works_without_torchaudio(tmp_path):
    code = (
        "import sys; sys.modules['torchaudio'] = None\n"  # any import of torchaudio now fails
        "import torch, whispergpt\n"
        "from whispergpt.audio import log_mel, load_audio, save_audio\n"
        "from whispergpt.codec import Codec\n"
        f"save_audio(r'{tmp_path}/a.wav', torch.zeros(48000), 48000)\n"
        f"w = load_audio(r'{tmp_path}/a.wav')\n"
        "assert w.shape == (24000,), w.shape\n"
        "assert log_mel(w).shape == (80, 75)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_log_mel_tables_cached_under_inference_mode_serve_autograd_later():
    import whispergpt.audio as audio_mod

    audio_mod._FB_CACHE.clear()
    audio_mod._WIN_CACHE.clear()
    with torch.inference_mode():
        log_mel(torch.zeros(1, 4 * 320))  # first use fills the caches inside inference mode
    wave = torch.randn(1, 4 * 320, requires_grad=True)
    log_mel(wave).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert wave.grad is not None and torch.isfinite(wave.grad).all()
