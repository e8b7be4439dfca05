"""An acoustic model conditioned on semantic tokens (``model.semantic``) end to end on a tiny dataset
prepared with ``--semantic``: the run takes the tokenizer's size from the manifest, the lm task reads
the semantic stream, ``train`` -> ``whispergpt eval`` works, and a dataset without the stream (or
with another tokenizer) is a clear error, exit 2 through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from whispergpt.config import ConfigError, load_run_config
from whispergpt.models import WhisperGPT, load_pretrained
from whispergpt.training import train
from whispergpt.training.tasks import get_task

CLUSTERS = 6


@pytest.fixture(scope="module")
def semantic_dataset(tmp_path_factory, mae_dir, tiny_dataset, tiny_codec_dir):
    """The tiny dataset's clips prepared again with a 6-cluster semantic tokenizer (25 Hz)."""
    from whispergpt.data.prepare import prepare
    from whispergpt.semantic.tokenizer import fit_semantic, semantic_source

    root = tmp_path_factory.mktemp("semantic-ds")
    tok = root / "tok"
    fit_semantic(mae_dir, [tiny_dataset], tok, clusters=CLUSTERS, layer=1, device="cpu", progress=False)
    out = root / "prepared"
    prepare([tiny_dataset.parent / "wav"], out, tiny_codec_dir, bandwidth=1.5, n_mels=80, val_fraction=0.34,
            seed=0, device="cpu", progress=False, semantic=semantic_source(tok))  # fmt: skip
    return out


def quiet(data_dir, out, *extra: str) -> list[str]:
    small = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context=32", "model.mel_dim=8"]
    return [f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false",
            *small, *extra]  # fmt: skip


@pytest.mark.parametrize("mode", ["prefix", "aligned"])
def test_train_then_eval_a_semantic_acoustic_model(semantic_dataset, tmp_path, mode, capsys):
    from whispergpt.cli.eval import main as eval_main

    out = tmp_path / "run"
    steps = ("train.max_steps=2", "train.save_every=2", "train.eval_every=2", "train.eval_batches=1",
             "train.batch_size=2")  # fmt: skip
    cfg = load_run_config("tiny", quiet(semantic_dataset, out, f"model.semantic={mode}", *steps))
    assert (cfg.model.semantic_vocab, cfg.model.semantic_rate) == (CLUSTERS, 25)  # from the manifest
    assert get_task("lm").streams(cfg) == ("codes", "mel", "semantic")
    final = train(cfg)
    model = load_pretrained(final)
    assert isinstance(model, WhisperGPT) and model.config == cfg.model and model.semantic is not None
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    (val,) = [x for x in lines if "val_nll" in x]
    assert 0 < val["val_nll"] < 2 * torch.log(torch.tensor(1024.0)).item()

    report = tmp_path / "eval.json"
    args = [
        "--checkpoint",
        str(final),
        "--data",
        str(semantic_dataset),
        "--mel",
        "truth",
        "--out",
        str(report),
    ]
    assert eval_main(args) == 0
    (entry,) = json.loads(report.read_text())["checkpoints"]
    assert entry["config"]["semantic"] == mode
    (ev,) = entry["evaluations"]
    assert ev["metrics"]["nll"] > 0 and ev["metrics"]["frames"] > 0
    capsys.readouterr()


def test_a_dataset_without_the_semantic_stream_is_a_clear_error(
    semantic_dataset, tiny_dataset, tmp_path, capsys
):
    from whispergpt.cli.eval import main as eval_main

    with pytest.raises(ConfigError, match="stores none: prepare it with --semantic"):
        load_run_config("tiny", quiet(tiny_dataset, tmp_path, "model.semantic=prefix"))
    with pytest.raises(ConfigError, match=rf"model.semantic_vocab=5 does not match the dataset .*{CLUSTERS}"):
        load_run_config(
            "tiny", quiet(semantic_dataset, tmp_path, "model.semantic=aligned", "model.semantic_vocab=5")
        )
    with pytest.raises(ConfigError, match="semantic_rate"):
        load_run_config(
            "tiny", quiet(semantic_dataset, tmp_path, "model.semantic=aligned", "model.semantic_rate=5")
        )
    # eval: a conditioned model on a dataset prepared without --semantic exits 2, naming the flag
    cfg = load_run_config("tiny", quiet(semantic_dataset, tmp_path, "model.semantic=prefix"))
    ckpt = tmp_path / "ckpt"
    WhisperGPT(cfg.model).save_pretrained(ckpt)
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(ckpt), "--data", str(tiny_dataset), "--mel", "truth"]) == 2
    assert "--semantic" in capsys.readouterr().err
    # the lm task asks the dataset for the stream: the reader names the flag that stores it
    from whispergpt.data import PreparedDataset

    with pytest.raises(ValueError, match="prepare --semantic"):
        PreparedDataset(tiny_dataset, "train", frames=32, streams=get_task("lm").streams(cfg))
