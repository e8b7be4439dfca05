"""``from whispergpt import Pipeline``: audio in at any rate / channels, 24 kHz float32 out; the
streamed chunks are the whole output exactly; the CLI's WAV is the API's for the same seed."""

import numpy as np
import pytest
import soundfile as sf
import torch

from whispergpt import Pipeline
from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.models import FineConfig, FineModel, WhisperGPT, WhisperGPTConfig


def tiny_model(pattern="delay", fusion="concat", K=2) -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=K, codebook_size=1024, n_mels=80, pattern=pattern, fusion=fusion,
                           d_model=32, n_layers=1, n_heads=2, context=32, mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    return WhisperGPT(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("api") / "model"
    tiny_model().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pipe(model_dir, tiny_codec_dir):
    return Pipeline.from_pretrained(model_dir, codec=str(tiny_codec_dir), device="cpu")


def stereo_44k(seconds=0.12) -> np.ndarray:
    t = np.arange(int(seconds * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 330 * t)
    return np.stack([left, 0.5 * left]).astype(np.float32)  # (C, S) at 44.1 kHz


def test_continue_audio_any_rate_and_channels_in_24k_float32_out(pipe):
    wav = pipe.continue_audio(stereo_44k(), 44100, seconds=0.1, temperature=1.0, top_k=50, seed=0)
    Tp = int(0.12 * SAMPLE_RATE) // HOP_LENGTH  # whole frames of the resampled prompt
    assert wav.dtype == torch.float32 and wav.shape == (1, (Tp + 8) * HOP_LENGTH)
    assert pipe.sample_rate == SAMPLE_RATE
    again = pipe.continue_audio(stereo_44k().T, 44100, seconds=0.1, top_k=50, seed=0)  # (S, C) layout
    assert torch.equal(wav, again)
    other = pipe.continue_audio(stereo_44k(), 44100, seconds=0.1, top_k=50, seed=1)
    assert not torch.equal(wav[:, Tp * HOP_LENGTH :], other[:, Tp * HOP_LENGTH :])
    with pytest.raises(ValueError, match="context"):
        pipe.continue_audio(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, seconds=0.1)


@pytest.mark.parametrize("prompt", [True, False])
def test_streamed_chunks_concatenate_to_the_whole_output_exactly(pipe, prompt):
    kw = dict(seconds=0.2, temperature=1.0, top_k=50, seed=3)
    if prompt:
        whole = pipe.continue_audio(stereo_44k(), 44100, num_samples=2, **kw)
        chunks = list(
            pipe.continue_audio(stereo_44k(), 44100, num_samples=2, stream=True, chunk_frames=4, **kw)
        )
    else:
        whole = pipe.generate(num_samples=2, **kw)
        chunks = list(pipe.generate(num_samples=2, stream=True, chunk_frames=4, **kw))
    assert len(chunks) > 3 and all(c.shape[0] == 2 and c.dtype == torch.float32 for c in chunks)
    assert all(c.shape[-1] == 4 * HOP_LENGTH for c in chunks[1 if prompt else 0 : -1])
    assert torch.equal(torch.cat(chunks, dim=-1), whole)  # bit for bit, not up to rounding


def test_chunks_follow_the_full_decode(pipe):
    """The streaming decode is the codec's decode of the same codes, up to float rounding."""
    out = pipe.sample(None, 0.2, num_samples=1, seed=0, top_k=50)
    full = pipe.codec.decode(out.codes)
    assert (out.audio - full).abs().max() < 1e-4


def test_stream_with_a_fine_stage_and_a_token_only_model(tmp_path, tiny_codec_dir):
    tiny_model("coarse").save_pretrained(tmp_path / "coarse")
    torch.manual_seed(0)
    FineModel(FineConfig(num_codebooks=2, codebook_size=1024, d_model=32, n_layers=1, n_heads=2,
                         context=16)).save_pretrained(tmp_path / "fine")  # fmt: skip
    tiny_model("parallel", fusion="none").save_pretrained(tmp_path / "tokens")
    for kw in (dict(fine=tmp_path / "fine"), {}):
        src = tmp_path / ("coarse" if kw else "tokens")
        p = Pipeline.from_pretrained(src, codec=str(tiny_codec_dir), device="cpu", **kw)
        whole = p.generate(seconds=0.15, seed=0, top_k=20)
        assert torch.equal(
            torch.cat(list(p.generate(seconds=0.15, seed=0, top_k=20, stream=True)), -1), whole
        )
    assert p.sample(None, 0.15, seed=0, top_k=20).codes.shape[1] == 2  # the fine stage filled codebook 1


def test_the_cli_wav_is_the_api_wav(tmp_path, model_dir, tiny_codec_dir, pipe):
    from whispergpt.audio import load_audio
    from whispergpt.cli.sample import main
    from whispergpt.inference.api import to_mono_24k

    sf.write(tmp_path / "prompt.wav", stereo_44k().T, 44100)
    out = tmp_path / "cli"
    argv = ["--checkpoint", str(model_dir), "--codec", str(tiny_codec_dir), "--prompt", str(tmp_path / "prompt.wav"),
            "--seconds", "0.1", "--out", str(out), "--seed", "5", "--top-k", "50", "--num-samples", "2",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    data, sr = sf.read(tmp_path / "prompt.wav", dtype="float32")
    api = pipe.continue_audio(data, sr, seconds=0.1, seed=5, top_k=50, num_samples=2)
    for i in range(2):
        cli, _ = sf.read(out / f"sample_{i}.wav", dtype="int16")
        expected = np.clip(api[i].numpy(), -1, 1)  # save_audio: 16-bit PCM of the clipped wave
        sf.write(tmp_path / "api.wav", expected, SAMPLE_RATE, subtype="PCM_16")
        assert np.array_equal(cli, sf.read(tmp_path / "api.wav", dtype="int16")[0])
    assert torch.equal(load_audio(tmp_path / "prompt.wav"), to_mono_24k(data, sr))  # the same prompt


def test_pipeline_from_a_hub_id(model_dir, local_hub, tiny_codec_dir):
    local_hub.publish(model_dir, "org/tiny")
    p = Pipeline.from_pretrained("org/tiny", codec=str(tiny_codec_dir), device="cpu")
    assert "models--org--tiny" in str(p.checkpoint) and p.generate(seconds=0.05).shape == (1, 4 * HOP_LENGTH)
