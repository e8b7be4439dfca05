"""config.json's model_type: written by save_pretrained, dispatched by load_pretrained, checked by each class."""

import json

import pytest
import torch

from whispergpt.models import WhisperGPT, WhisperGPTConfig, WrongModelType, load_pretrained, model_type_of


def _tiny() -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=16, n_mels=8, d_model=32, n_layers=1, n_heads=2,
                           context=8, mel_dim=8, mel_layers=1, mel_heads=1)  # fmt: skip
    return WhisperGPT(cfg)


def test_save_writes_model_type_and_load_pretrained_dispatches(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "whispergpt"
    assert model_type_of(tmp_path) == "whispergpt"
    loaded = load_pretrained(tmp_path)
    assert type(loaded) is WhisperGPT
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_config_without_model_type_is_a_whispergpt(tmp_path):
    """Checkpoints written before the key existed still load."""
    _tiny().save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert model_type_of(tmp_path) == "whispergpt"
    assert isinstance(WhisperGPT.from_pretrained(tmp_path), WhisperGPT)


def test_other_model_type_is_refused_naming_both(tmp_path):
    _tiny().save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["model_type"] = "encodecmae"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WrongModelType, match="'encodecmae'.*'whispergpt'"):
        WhisperGPT.from_pretrained(tmp_path)
    with pytest.raises(WrongModelType, match="unknown model_type"):
        raw["model_type"] = "nonesuch"
        (tmp_path / "config.json").write_text(json.dumps(raw))
        load_pretrained(tmp_path)
