"""The training record: round trip, checkpoint resolution (final/, step-*), the codec lookup for new
runs (record in every checkpoint) and legacy ones (record in final/ only, or config.yaml only)."""

import json

import pytest
import yaml

from whispergpt.checkpoint import TRAINER_STATE
from whispergpt.training.record import (
    TRAINING_DATA_FILE,
    read_training_record,
    resolve_checkpoint,
    training_codec,
    write_training_record,
)

MANIFEST = dict(
    codec="my-codec", bandwidth=3.0, num_codebooks=4, codebook_size=1024, n_mels=80, sample_rate=24000
)


def model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def step_dir(run, step):
    d = model_dir(run / "checkpoints" / f"step-{step:07d}")
    (d / TRAINER_STATE).write_text(json.dumps({"step": step}))
    return d


def test_record_round_trip(tmp_path):
    path = write_training_record(tmp_path, MANIFEST, "decoded", [tmp_path / "a", "b"], 12)
    assert path == tmp_path / TRAINING_DATA_FILE
    rec = read_training_record(tmp_path)
    assert rec == dict(
        codec="my-codec", bandwidth=3.0, num_codebooks=4, codebook_size=1024, n_mels=80, sample_rate=24000,
        mel_source="decoded", data_dirs=[str(tmp_path / "a"), "b"], steps=12,
        data=dict(train=dict(files=0, hours=0.0), val=dict(files=0, hours=0.0), domains={}),  # no manifests
    )  # fmt: skip
    assert training_codec(tmp_path) == ("my-codec", 3.0)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_resolve_checkpoint_prefers_final_then_the_newest_step(tmp_path):
    run = tmp_path / "run"
    step_dir(run, 10)
    newest = step_dir(run, 20)
    (run / "checkpoints" / ".tmp-step-0000030").mkdir()  # an interrupted save is ignored
    assert resolve_checkpoint(run) == newest
    assert resolve_checkpoint(newest) == newest  # a model dir is itself
    final = model_dir(run / "final")
    assert resolve_checkpoint(run) == final
    with pytest.raises(ValueError, match="no such directory"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="expected a model directory"):
        resolve_checkpoint(tmp_path)


def test_step_checkpoint_reads_its_own_record(tmp_path):
    run = tmp_path / "run"
    step = step_dir(run, 5)
    write_training_record(step, MANIFEST, "truth", ["d"], 5)
    final = model_dir(run / "final")
    write_training_record(final, dict(MANIFEST, bandwidth=6.0), "truth", ["d"], 9)
    assert training_codec(resolve_checkpoint(run)) == ("my-codec", 6.0)
    assert training_codec(step) == ("my-codec", 3.0)
    assert read_training_record(step)["steps"] == 5


def test_legacy_step_checkpoint_falls_back_to_final_then_config_yaml(tmp_path):
    run = tmp_path / "run"
    step = step_dir(run, 5)
    assert read_training_record(step) is None and training_codec(step) is None
    # legacy: config.yaml -> data.dir (a list that agrees) -> manifest.json, relative to the run's parent
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"codec": "from-yaml", "bandwidth": 1.5}))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": ["data", "data"]}}))
    assert training_codec(step) == ("from-yaml", 1.5)
    assert training_codec(model_dir(run / "final")) == ("from-yaml", 1.5)
    # legacy: the record of the run's final/ covers its step checkpoints
    write_training_record(run / "final", MANIFEST, "decoded", ["data"], 9)
    assert training_codec(step) == ("my-codec", 3.0)


def test_legacy_config_with_disagreeing_data_dirs_gives_none(tmp_path):
    run = tmp_path / "run"
    for name, bw in (("a", 1.5), ("b", 6.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"codec": "c", "bandwidth": bw}))
    model_dir(run / "final")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"data": {"dir": [str(tmp_path / "a"), str(tmp_path / "b")]}})
    )
    assert training_codec(run / "final") is None


def test_training_writes_the_record_into_every_checkpoint(tiny_dataset, tmp_path):
    from pathlib import Path

    from whispergpt import checkpoint as ckpt_io
    from whispergpt.cli.train import main

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    out = tmp_path / "run"
    argv = [f"data.dir={tiny_dataset}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false"]
    assert main([str(tiny), *argv, "train.max_steps=2", "train.save_every=1", "train.keep_last=5"]) == 0
    steps = ckpt_io.list_checkpoints(out)
    assert [s for s, _ in steps] == [1, 2]
    final = read_training_record(out / "final")
    for s, path in steps:
        rec = json.loads((path / TRAINING_DATA_FILE).read_text())  # its own file, not final's
        assert rec.pop("val") == (None if s == 1 else final["val"])  # evaluated at the last step only
        assert rec == {k: v for k, v in dict(final, steps=s).items() if k != "val"}
    assert final["steps"] == 2 and final["bandwidth"] == 1.5
    assert training_codec(steps[0][1]) == (final["codec"], 1.5)
    # what the model card is written from
    assert final["task"] == "lm" and final["command"].startswith("whispergpt train ")
    assert "train.max_steps=2" in final["command"]
    assert final["val"]["step"] == 2 and len(final["val"]["val_nll_per_codebook"]) >= 1
    assert final["data"]["train"]["files"] == 4 and final["data"]["val"]["files"] == 2
    assert final["data"]["domains"] == {"prepared": 4} and final["data"]["train"]["hours"] > 0
    card = (out / "final" / "README.md").read_text()
    nll = final["val"]["val_nll"]
    for text in ("library_name: whispergpt", final["command"], f"{nll:.4f}", "at 1.5 kbps", "- steps: 2",
                 "train: 4 files", "- parameters: "):  # fmt: skip
        assert text in card, text


def test_record_carries_the_semantic_tokenizer_and_grid(tmp_path):
    manifest = dict(MANIFEST, frame_rate=75, semantic="/tok",
                    semantic_tokenizer=dict(clusters=6, rate=25, group=3, mae_checkpoint="/mae"))  # fmt: skip
    write_training_record(tmp_path, manifest, "truth", ["a"], 1)
    rec = read_training_record(tmp_path)
    assert rec["frame_rate"] == 75
    assert rec["semantic_tokenizer"] == dict(dir="/tok", clusters=6, rate=25, group=3, mae_checkpoint="/mae")
