"""Resuming an out_dir with a changed model: one line naming each drifted key, before any tensor."""

from __future__ import annotations

import pytest

from whispergpt.cli import main

pytestmark = pytest.mark.faults


def run(data, out, *extra: str) -> int:
    return main(["train", "tiny.yaml", f"data.dir={data}", f"out_dir={out}", "logging.wandb=false",
                 "logging.progress=false", "train.max_steps=2", "train.save_every=2", "train.eval_every=1000",
                 "train.batch_size=2", *extra])  # fmt: skip


@pytest.mark.case("train", "drifted model keys")
def test_a_drifted_model_key_is_one_line_naming_it(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_dataset, out) == 0
    capsys.readouterr()
    assert run(tiny_dataset, out, "train.max_steps=4", "model.d_model=32", "model.n_layers=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "model.d_model: 64 (checkpoint) vs 32 (this run)" in err[0]
    assert "model.n_layers: 2 (checkpoint) vs 1 (this run)" in err[0]
    assert "train.resume_from=none" in err[0] and "size mismatch" not in err[0]
    # the same keys resume
    assert run(tiny_dataset, out, "train.max_steps=4") == 0


CODEC_TINY = ["model.num_filters=4", "model.hidden_size=16", "model.codebook_size=64",
              "model.target_bandwidths=[0.9, 1.8]", "quantizer.kmeans_batches=2", "quantizer.kmeans_iters=3",
              "data.segment_seconds=0.2", "data.batch_size=2", "train.progress=false", "train.ckpt_every=2"]  # fmt: skip


@pytest.mark.case("codec train", "drifted model keys")
def test_a_drifted_codec_key_is_one_line_naming_it(tiny_dataset, tmp_path, capsys):
    wav, out = tiny_dataset.parent / "wav", tmp_path / "codec"
    argv = ["codec", "train", str(wav), *CODEC_TINY, "--out", str(out)]
    assert main([*argv, "train.max_steps=2"]) == 0
    capsys.readouterr()
    assert main([*argv, "train.max_steps=4", "model.hidden_size=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.hidden_size: 16 (checkpoint) vs 8 (this run)" in err[0], err
    assert main([*argv, "train.max_steps=4", "train.lr=1e-4"]) == 0  # a loop key may change
