"""Fixtures for the EnCodecMAE tools (embed, probe, semantic): tiny checkpoints (``tiny_mae``)."""

from __future__ import annotations

import pytest
from tiny_mae import make_mae


@pytest.fixture(scope="session")
def mae_dir(tmp_path_factory, tiny_dataset):
    """A tiny mel EnCodecMAE checkpoint (80 mels, 2 layers, D=32) with a training record."""
    from whispergpt.data.dataset import read_manifest
    from whispergpt.training.record import write_training_record

    d = tmp_path_factory.mktemp("mae") / "mae-mel"
    make_mae("mel", 80).save_pretrained(d)
    write_training_record(d, read_manifest(tiny_dataset), "truth", [tiny_dataset], steps=0)
    return d


@pytest.fixture(scope="session")
def mae_latent_dir(tmp_path_factory, tiny_dataset, tiny_codec):
    """A tiny latent EnCodecMAE reading the tiny codec's latent (its width from the codec)."""
    from whispergpt.data.dataset import read_manifest
    from whispergpt.training.record import write_training_record

    width = int(tiny_codec.model.config.hidden_size)
    d = tmp_path_factory.mktemp("mae") / "mae-latent"
    make_mae("latent", width).save_pretrained(d)
    write_training_record(d, read_manifest(tiny_dataset), "truth", [tiny_dataset], steps=0)
    return d


@pytest.fixture(scope="session")
def semantic_tokenizer(tmp_path_factory, mae_dir, tiny_dataset):
    """A 6-cluster 25 Hz semantic tokenizer fitted on the tiny MAE's layer-1 frames of the tiny dataset."""
    from whispergpt.semantic.tokenizer import fit_semantic

    d = tmp_path_factory.mktemp("semantic") / "tok"
    fit_semantic(mae_dir, [tiny_dataset], d, clusters=6, layer=1, device="cpu", progress=False, threads=1)
    return d


@pytest.fixture(scope="session")
def semantic_dataset(tmp_path_factory, tiny_dataset, tiny_codec_dir, semantic_tokenizer):
    """The tiny dataset's clips prepared again with ``--semantic`` (the stream of ``semantic_tokenizer``)."""
    from whispergpt.data.prepare import prepare
    from whispergpt.semantic.tokenizer import semantic_source

    out = tmp_path_factory.mktemp("semantic-dataset") / "prepared"
    prepare([tiny_dataset.parent / "wav"], out, tiny_codec_dir, bandwidth=1.5, n_mels=80, val_fraction=0.34,
            seed=0, device="cpu", progress=False, semantic=semantic_source(semantic_tokenizer))  # fmt: skip
    return out
