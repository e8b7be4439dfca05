"""``whispergpt embed``: shapes per pool and layer, the features equal what prepare stores, bad files
skipped as in prepare, and exit 2 for a non-MAE checkpoint or an out-of-range layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from whispergpt.audio import log_mel, save_audio
from whispergpt.cli.embed import main
from whispergpt.semantic.embed import load_embedding
from whispergpt.semantic.features import MAEInput, embed_clips, encode_frames, load_mae


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    t = np.arange(24000) / 24000
    save_audio(d / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))  # 75 frames
    save_audio(d / "b.wav", (0.1 * np.random.default_rng(0).standard_normal(12345)).astype(np.float32))  # 38
    sub = d / "sub"
    sub.mkdir()
    save_audio(sub / "a.wav", (0.3 * np.sin(2 * np.pi * 440 * t[:9600])).astype(np.float32))  # 30
    return d


def test_pool_none_and_mean_shapes_per_layer(tmp_path, mae_dir, wavs):
    out = tmp_path / "frames"
    assert (
        main([str(mae_dir), str(wavs), "--out", str(out), "--pool", "none", "--layer", "1", "--quiet"]) == 0
    )
    index = json.loads((out / "index.json").read_text())
    assert index["layer"] == 1 and index["pool"] == "none" and index["input"] == "mel" and index["dim"] == 32
    got = {f["file"]: f["frames"] for f in index["files"]}
    assert got == {
        "a.safetensors": 75,
        "b.safetensors": 38,
        "a-2.safetensors": 30,
    }  # sorted paths: a, b, sub/a
    assert load_embedding(out / "b.safetensors").shape == (38, 32)

    mean = tmp_path / "mean"
    assert main([str(mae_dir), str(wavs / "b.wav"), "--out", str(mean), "--quiet"]) == 0
    last = load_embedding(mean / "b.safetensors")
    assert last.shape == (32,) and json.loads((mean / "index.json").read_text())["layer"] == 2
    # the mean of the last layer's frames, not of layer 1's
    frames_l1 = load_embedding(out / "b.safetensors")
    assert not torch.allclose(last, frames_l1.mean(0), atol=1e-4)
    model, d = load_mae(mae_dir)
    wave = torch.from_numpy(np.asarray(__import__("soundfile").read(wavs / "b.wav", dtype="float32")[0]))
    x = MAEInput.from_checkpoint(model, d).features(wave)[0]
    torch.testing.assert_close(last, encode_frames(model, x, 2).mean(0))


def test_mel_features_equal_the_prepared_stream(mae_dir, tiny_dataset):
    model, d = load_mae(mae_dir)
    inputs = MAEInput.from_checkpoint(model, d)
    ds = inputs.open_dataset([tiny_dataset], "train")
    from whispergpt.audio import load_audio

    wave = load_audio(ds.files[0]["path"])
    # the stored mel is float16 (prepare's default): equal up to its rounding
    torch.testing.assert_close(inputs.dataset_features(ds, 0), inputs.features(wave)[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(inputs.features(wave)[0], log_mel(wave))


def test_dataset_that_cannot_serve_the_mae_input_is_an_input_error(mae_dir, mae_latent_dir, tiny_dataset):
    model, d = load_mae(mae_latent_dir)
    with pytest.raises(ValueError, match="prepare --latent"):
        MAEInput.from_checkpoint(model, d).open_dataset([tiny_dataset])
    model, d = load_mae(mae_dir)
    inputs = MAEInput.from_checkpoint(model, d)
    inputs.dim = 64
    with pytest.raises(ValueError, match="n_mels=80, the MAE reads 64"):
        inputs.open_dataset([tiny_dataset])


def test_latent_mae_reads_the_training_codec(mae_latent_dir, tiny_codec):
    model, d = load_mae(mae_latent_dir)
    inputs = MAEInput.from_checkpoint(model, d)
    wave = 0.1 * torch.randn(1, 3200, generator=torch.Generator().manual_seed(1))
    assert inputs.kind == "latent" and inputs.bandwidth == 1.5
    torch.testing.assert_close(inputs.features(wave), tiny_codec.latent(wave))


def test_chunked_encoding_covers_every_frame(mae_dir):
    model, _ = load_mae(mae_dir)
    x = torch.randn(80, 101)
    whole = encode_frames(model, x, None, chunk_frames=1000)
    parts = encode_frames(model, x, None, chunk_frames=40)  # 3 windows of 33-34 frames
    assert whole.shape == parts.shape == (101, 32)
    torch.testing.assert_close(parts[:34], encode_frames(model, x[:, :34], None))


def test_batched_clips_equal_one_by_one(mae_dir):
    model, d = load_mae(mae_dir)
    inputs = MAEInput.from_checkpoint(model, d)
    g = torch.Generator().manual_seed(0)
    clips = [0.1 * torch.randn(n, generator=g) for n in (3200, 6400, 3200, 3300)]
    pooled = embed_clips(model, inputs, clips, layer=1)
    frames = embed_clips(model, inputs, clips, layer=1, pool=False, batch_frames=10)
    for c, p, f in zip(clips, pooled, frames):
        one = encode_frames(model, inputs.features(c)[0], 1)  # (T, D)
        torch.testing.assert_close(f, one, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p, one.mean(0), atol=1e-5, rtol=1e-5)
    assert [f.shape[0] for f in frames] == [10, 20, 10, 10]


def test_bad_files_are_reported_and_skipped(tmp_path, mae_dir, wavs, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.wav").write_bytes(b"RIFF not really a wav")
    save_audio(src / "tiny.wav", np.zeros(100, dtype=np.float32))  # shorter than one frame
    (src / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    out = tmp_path / "out"
    assert main([str(mae_dir), str(src), str(wavs / "a.wav"), "--out", str(out), "--quiet"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [f["file"] for f in index["files"]] == ["a.safetensors"]
    reasons = {p.rsplit("/", 1)[1]: r for p, r in ((s["path"], s["reason"]) for s in index["skipped"])}
    assert set(reasons) == {"broken.wav", "tiny.wav", "gone.wav"}
    assert "cannot decode" in reasons["broken.wav"] and "shorter than one frame" in reasons["tiny.wav"]
    assert "1 embedded, 3 skipped, of 4 candidates" in capsys.readouterr().out
    # nothing usable at all: exit 2, the index still says why
    assert main([str(mae_dir), str(src / "broken.wav"), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "no usable audio" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "none" / "index.json").read_text())["skipped"]) == 1


def test_not_an_mae_and_layer_out_of_range_exit_2(tmp_path, mae_dir, tiny_codec_dir, wavs, capsys):
    wav = str(wavs / "a.wav")
    assert main([str(tiny_codec_dir), wav, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not an EnCodecMAE checkpoint" in err and "'encodec'" in err and "'encodecmae'" in err
    assert main([str(mae_dir), wav, "--out", str(tmp_path / "o"), "--layer", "3"]) == 2
    err = capsys.readouterr().err
    assert "--layer is out of range: expected 1..2" in err and "got 3" in err
    assert main([str(mae_dir), wav, "--out", str(tmp_path / "o"), "--layer", "0"]) == 2
    assert main([str(mae_dir), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_mae_checkpoint_takes_a_hub_id(mae_dir, local_hub):
    """The --mae / embed / probe checkpoint resolver: a Hub id from the (offline) cache."""
    from whispergpt.semantic.features import load_mae

    local_hub.publish(mae_dir, "org/mae")
    model, directory = load_mae("org/mae")
    assert "models--org--mae" in str(directory) and type(model).__name__ == "EnCodecMAE"
