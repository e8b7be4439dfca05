"""Hub-native models (models.registry.HubModel on PyTorchModelHubMixin) through a local, offline Hub
cache: ids resolve in the cache, revisions pick snapshots, the mixin is kept strict, pushes fail
offline with one line, and folders written before the mixin still load."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from whispergpt.errors import InputError
from whispergpt.models import (
    EnCodecMAE,
    EnCodecMAEConfig,
    FineConfig,
    FineModel,
    SemanticLM,
    SemanticLMConfig,
    WhisperGPT,
    WhisperGPTConfig,
    WrongModelType,
    load_pretrained,
)


def tiny(seed=0, d_model=32) -> WhisperGPT:
    torch.manual_seed(seed)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=16, n_mels=8, d_model=d_model, n_layers=1, n_heads=2,
                           context=8, mel_dim=8, mel_layers=1, mel_heads=1)  # fmt: skip
    return WhisperGPT(cfg)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_model_class_round_trips_through_the_local_hub_cache(tmp_path, local_hub):
    torch.manual_seed(0)
    models = {
        "org/gpt": tiny(),
        "org/fine": FineModel(FineConfig(num_codebooks=2, codebook_size=16, d_model=32, n_layers=1, n_heads=2)),
        "org/slm": SemanticLM(SemanticLMConfig(clusters=8, d_model=32, n_layers=1, n_heads=2, context=16)),
        "org/mae": EnCodecMAE(EnCodecMAEConfig(in_dim=8, num_codebooks=2, codebook_size=16, n_layers=1,
                                               d_model=32, n_heads=2, decoder_layers=1)),
    }  # fmt: skip
    for repo_id, model in models.items():
        model.save_pretrained(tmp_path / repo_id)
        local_hub.publish(tmp_path / repo_id, repo_id)
        loaded = type(model).from_pretrained(repo_id)
        assert type(loaded) is type(model) and loaded.config == model.config and same_weights(loaded, model)
        assert type(load_pretrained(repo_id)) is type(model)
    # the cache is huggingface_hub's own layout: the file is a symlink into blobs/
    snap = next((local_hub.cache / "models--org--gpt" / "snapshots").iterdir())
    assert (snap / "model.safetensors").is_symlink()
    with pytest.raises(WrongModelType, match="'whispergpt-fine' model, expected a 'whispergpt'"):
        WhisperGPT.from_pretrained("org/fine")


def test_revisions_pick_their_snapshot(tmp_path, local_hub):
    old, new = tiny(seed=0), tiny(seed=1)
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")
    c_old = local_hub.publish(tmp_path / "old", "org/m", commit="a" * 40, ref="v1")
    local_hub.publish(tmp_path / "new", "org/m", commit="b" * 40)  # refs/main
    assert same_weights(WhisperGPT.from_pretrained("org/m"), new)
    assert same_weights(WhisperGPT.from_pretrained("org/m", revision="v1"), old)
    assert same_weights(WhisperGPT.from_pretrained(f"org/m@{c_old}"), old)


def test_an_id_missing_from_the_cache_is_one_clear_line(local_hub):
    with pytest.raises(InputError) as e:
        WhisperGPT.from_pretrained("org/absent")
    msg = str(e.value)
    assert "\n" not in msg and "org/absent" in msg and "offline" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(ValueError, match="no such directory"):
        WhisperGPT.from_pretrained("./not/here")


def test_push_to_hub_offline_fails_with_one_clear_line(local_hub):
    with pytest.raises(InputError) as e:
        tiny().push_to_hub("org/new-model", private=True)
    msg = str(e.value)
    assert "\n" not in msg and "org/new-model" in msg and "offline" in msg


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
    tiny().save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["n_layer"] = 3  # a typo of n_layers: the mixin would drop it silently
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['model.n_layer'\]"):
        WhisperGPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_weights_load_strictly(tmp_path, change):
    tiny().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    name = "head.weight" if "head.weight" in state else sorted(state)[-1]
    if change == "missing":
        del state[name]
        match = rf"missing tensors \['{name}'\]"
    elif change == "unexpected":
        state["extra.weight"] = torch.zeros(2)
        match = r"unexpected tensors \['extra.weight'\]"
    else:
        state[name] = torch.zeros(3, 3)
        match = rf"shape mismatch {name}: checkpoint \(3, 3\) vs model"
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=match):
        WhisperGPT.from_pretrained(tmp_path)


def test_folders_written_before_the_mixin_still_load(tmp_path):
    """config.json + model.safetensors exactly as the hand-written save wrote them (no README)."""
    model = tiny()
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "whispergpt", **model.config.to_dict()}, indent=2) + "\n"
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert same_weights(WhisperGPT.from_pretrained(tmp_path), model)


def test_save_pretrained_writes_safetensors_config_and_a_card(tmp_path):
    tiny().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "whispergpt"
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: whispergpt\n") and "- whispergpt" in card


def test_checkpoint_resolver_takes_hub_ids(tmp_path, local_hub, tiny_dataset):
    """The resolver behind --checkpoint / --fine / --semantic-lm / --judge / --mae."""
    from whispergpt.data.dataset import read_manifest
    from whispergpt.training.record import (
        open_stage,
        resolve_checkpoint,
        training_codec,
        write_training_record,
    )

    tiny().save_pretrained(tmp_path / "m")
    write_training_record(tmp_path / "m", read_manifest(tiny_dataset), "decoded", [tiny_dataset], steps=3)
    commit = local_hub.publish(tmp_path / "m", "org/m")
    ckpt = resolve_checkpoint("org/m")
    assert ckpt.name == commit and ckpt.parent.name == "snapshots"
    assert training_codec(ckpt)[1] == 1.5  # the record travels with the weights
    with pytest.raises(InputError, match="expects a 'whispergpt-fine' model"):
        open_stage("org/m", FineModel, "--fine", "train one")


def test_push_cli_offline_is_one_line_exit_2(tmp_path, local_hub, capsys):
    from whispergpt.cli.push import main

    tiny().save_pretrained(tmp_path / "run" / "final")
    assert main([str(tmp_path / "run"), "org/pushed", "--private"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline" in err and "org/pushed" in err
    assert main([str(tmp_path / "nothing"), "org/pushed"]) == 2  # no such run: also one line
    assert "no such directory" in capsys.readouterr().err


def test_push_stages_the_folder_with_a_licensed_card(tmp_path, monkeypatch):
    """Online path up to the upload: the staged folder holds the Hub files and a card with the licence."""
    from huggingface_hub import constants

    import whispergpt.hub.upload as upload

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    seen = {}

    def fake_push(folder, repo_id, private=False, token=None):
        seen.update(files=sorted(p.name for p in folder.iterdir()), card=(folder / "README.md").read_text(),
                    repo_id=repo_id, private=private)  # fmt: skip
        return "https://huggingface.co/org/m/commit/0"

    monkeypatch.setattr(upload, "push_folder", fake_push)
    run = tmp_path / "run"
    tiny().save_pretrained(run / "final")
    (run / "final" / "files.json").write_text("{}")  # local verification only: not uploaded
    folder, url = upload.push_model(run, "org/m", private=True, license="cc-by-4.0")
    assert folder == run / "final" and url.endswith("/0")
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"] and seen["private"]
    assert "license: cc-by-4.0" in seen["card"] and "# org/m" in seen["card"]
    assert 'Pipeline.from_pretrained("org/m")' in seen["card"]
    assert "license" not in (run / "final" / "README.md").read_text().split("---")[1]  # source untouched


def test_sample_and_eval_cli_take_hub_ids(tmp_path, local_hub, tiny_codec_dir, tiny_dataset):
    """--checkpoint and --fine (sample), --checkpoint (eval) resolved through the local Hub cache."""
    from whispergpt.cli.eval import main as eval_main
    from whispergpt.cli.sample import main as sample_main

    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, pattern="coarse", d_model=32,
                           n_layers=1, n_heads=2, context=32, mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    WhisperGPT(cfg).save_pretrained(tmp_path / "coarse")
    fine = FineModel(
        FineConfig(num_codebooks=2, codebook_size=1024, d_model=32, n_layers=1, n_heads=2, context=16)
    )
    fine.save_pretrained(tmp_path / "fine")
    local_hub.publish(tmp_path / "coarse", "org/coarse")
    local_hub.publish(tmp_path / "fine", "org/fine")
    out = tmp_path / "samples"
    argv = ["--checkpoint", "org/coarse", "--fine", "org/fine", "--codec", str(tiny_codec_dir),
            "--seconds", "0.05", "--out", str(out), "--no-progress"]  # fmt: skip
    assert sample_main(argv) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert "models--org--coarse" in rec["checkpoint"] and "models--org--fine" in rec["fine"]["checkpoint"]
    report = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", "org/coarse", "--data", str(tiny_dataset), "--out", str(report)]) == 0
    assert json.loads(report.read_text())
