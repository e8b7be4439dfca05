"""Semantic tokens: the alignment rule, k-means determinism, the tokenizer folder, and exit 2 with the
expected and actual value for a non-MAE checkpoint, a bad layer, a bad rate and too many clusters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from whispergpt.audio import load_audio
from whispergpt.cli.semantic import main
from whispergpt.data import PreparedDataset
from whispergpt.semantic.features import MAEInput, encode_frames, load_mae
from whispergpt.semantic.tokenizer import (
    SemanticConfig,
    SemanticTokenizer,
    codec_frame_tokens,
    fit_semantic,
    group_size,
    kmeans,
    num_semantic_frames,
    pool_to_rate,
)


def test_group_and_pooling_rule():
    assert group_size(25) == 3 and group_size(75) == 1 and group_size(5) == 15
    with pytest.raises(ValueError, match="must divide 75"):
        group_size(10)
    x = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)  # (T=7, D=2)
    pooled = pool_to_rate(x, 25)
    assert num_semantic_frames(7) == 3 and pooled.shape == (3, 2)
    torch.testing.assert_close(pooled[0], x[0:3].mean(0))  # frames 3s..3s+2
    torch.testing.assert_close(pooled[1], x[3:6].mean(0))
    torch.testing.assert_close(pooled[2], x[6])  # the last group holds the one frame that exists
    assert pool_to_rate(x, 75).equal(x)


def test_codec_frame_tokens_rule():
    tok = torch.tensor([5, 6, 7])
    assert codec_frame_tokens(tok, 7).tolist() == [5, 5, 5, 6, 6, 6, 7]
    assert codec_frame_tokens(tok, 9).tolist() == [5, 5, 5, 6, 6, 6, 7, 7, 7]
    assert codec_frame_tokens(tok, 3, rate=75).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="need ceil"):
        codec_frame_tokens(tok, 10)  # 10 frames need 4 tokens


def test_nearest_centroid_tokens():
    cfg = SemanticConfig(clusters=2, dim=1, layer=1)
    tok = SemanticTokenizer(cfg, torch.tensor([[0.0], [10.0]]))
    feats = torch.tensor([[1.0], [0.0], [-1.0], [9.0], [10.0], [11.0], [8.0]])  # (T=7, D=1)
    assert tok.tokens(feats).tolist() == [0, 1, 1]
    assert tok.frame_tokens(feats).tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_fit_is_deterministic_and_the_folder_round_trips(tmp_path, mae_dir, tiny_dataset):
    a = fit_semantic(
        mae_dir, [tiny_dataset], tmp_path / "a", clusters=8, layer=1, seed=3, device="cpu", progress=False
    )
    b = fit_semantic(
        mae_dir, [tiny_dataset], tmp_path / "b", clusters=8, layer=1, seed=3, device="cpu", progress=False
    )
    c = fit_semantic(
        mae_dir, [tiny_dataset], tmp_path / "c", clusters=8, layer=1, seed=4, device="cpu", progress=False
    )
    assert a.centroids.equal(b.centroids) and not a.centroids.equal(c.centroids)
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    assert np.array_equal(kmeans(x, 5, seed=1, threads=1)[0], kmeans(x, 5, seed=1, threads=2)[0])
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model_type"] == "semantic-tokenizer" and cfg["layer"] == 1 and cfg["rate"] == 25
    assert cfg["group"] == 3 and cfg["frames"] == 4 * 50 and cfg["mae_checkpoint"] == str(mae_dir)  # 4 x 2 s
    assert a.centroids.shape == (8, 32) and (tmp_path / "a" / "mae" / "model.safetensors").is_file()
    # tokens of a file through the tokenizer's own MAE copy = the rule applied to the MAE frames
    ds = PreparedDataset(tiny_dataset, "train")
    wave = load_audio(ds.files[0]["path"])
    frame_tokens = a.audio_frame_tokens(wave)
    model, d = load_mae(mae_dir)
    frames = encode_frames(model, MAEInput.from_checkpoint(model, d).features(wave)[0], 1)
    assert frame_tokens.shape == (wave.shape[0] // 320,) and frame_tokens.equal(a.frame_tokens(frames))
    assert len(set(frame_tokens.tolist())) > 1
    # refitting into the same folder replaces it
    fit_semantic(mae_dir, [tiny_dataset], tmp_path / "a", clusters=4, layer=1, device="cpu", progress=False)
    assert SemanticTokenizer.from_pretrained(tmp_path / "a").clusters == 4


def test_cli_errors_exit_2_with_expected_and_actual(tmp_path, mae_dir, tiny_codec_dir, tiny_dataset, capsys):
    def run(*extra, ckpt=mae_dir):
        return main(
            ["fit", str(ckpt), str(tiny_dataset), "--out", str(tmp_path / "tok"), "--device", "cpu", *extra]
        )

    assert run("--clusters", "1000") == 2
    err = capsys.readouterr().err
    assert (
        "--clusters is larger than the number of 25 Hz frames" in err
        and "expected at most 200, got 1000" in err
    )
    assert run("--layer", "5") == 2
    assert "expected 1..2" in capsys.readouterr().err
    assert run(ckpt=tiny_codec_dir) == 2
    assert "not an EnCodecMAE checkpoint" in capsys.readouterr().err
    assert run("--rate", "10") == 2
    assert "must divide 75" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()
    assert run("--clusters", "3", "--max-frames", "50") == 0
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["frames"] == 50
    with pytest.raises(ValueError, match="not a semantic tokenizer"):
        SemanticTokenizer.from_pretrained(mae_dir)


def test_prepare_semantic_stores_the_aligned_tokens_and_inspect_shows_them(
    tmp_path, mae_dir, tiny_dataset, tiny_codec_dir, capsys
):
    from whispergpt.audio import save_audio
    from whispergpt.cli.prepare import main_inspect, main_prepare

    tok_dir = tmp_path / "tok"
    tok = fit_semantic(mae_dir, [tiny_dataset], tok_dir, clusters=6, layer=1, device="cpu", progress=False)
    wav = tmp_path / "wav"
    wav.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((24000, 7040)):  # 75 and 22 frames (22 = 3 * 7 + 1: a last group of one frame)
        save_audio(wav / f"w{i}.wav", 0.2 * torch.randn(n, generator=g))
    out = tmp_path / "ds"
    common = [str(wav), "--codec", str(tiny_codec_dir), "--bandwidth", "1.5", "--val-fraction", "0",
              "--no-decoded-mel", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main_prepare([*common, "--out", str(out), "--semantic", str(tok_dir)]) == 0
    ds = PreparedDataset(out, "train", streams=("codes", "semantic"))
    for i, f in enumerate(ds.files):
        codes, sem = ds.file_arrays(i)
        assert sem.dtype == torch.int64 and sem.shape == (codes.shape[1],)
        assert sem.equal(tok.audio_frame_tokens(load_audio(f["path"])))
        assert sem.equal(sem[(torch.arange(len(sem)) // 3) * 3])  # constant over each group of 3
    capsys.readouterr()
    assert main_inspect([str(out), "--verify"]) == 0
    shown = capsys.readouterr().out
    assert (
        "semantic     6 clusters of MAE layer 1 at 25 Hz (codec frame t carries semantic token t // 3)"
        in shown
    )
    assert "verify       all 1 shards ok" in shown
    # a folder that is not a tokenizer: exit 2 before any work
    assert main_prepare([*common, "--out", str(tmp_path / "ds2"), "--semantic", str(mae_dir)]) == 2
    assert "not a semantic tokenizer" in capsys.readouterr().err and not (tmp_path / "ds2").exists()
