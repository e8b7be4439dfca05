"""train.init_from: weights only (fresh optimizer, schedule, step), strict shapes naming both sides,
partial init listing what it skipped, the parent in the training record, hub ids resolved."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from whispergpt.cli.train import main
from whispergpt.config import load_run_config
from whispergpt.models import WhisperGPT
from whispergpt.training.trainer import Trainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def quiet(data_dir, out, *extra):
    return [f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false", *extra]


@pytest.fixture(scope="module")
def parent_run(tiny_dataset, tmp_path_factory):
    """A 3-step tiny run: its final/ is the model fine-tuned below."""
    out = tmp_path_factory.mktemp("parent") / "run"
    assert main([str(TINY), *quiet(tiny_dataset, out, "train.max_steps=3", "train.save_every=3")]) == 0
    return out


def test_init_from_loads_weights_only(parent_run, tiny_dataset, tmp_path):
    parent = load_file(str(parent_run / "final" / "model.safetensors"))
    cfg = load_run_config(TINY, quiet(tiny_dataset, tmp_path / "child", f"train.init_from={parent_run}"))
    trainer = Trainer(cfg)
    own = trainer.core.state_dict()
    assert own.keys() == parent.keys() and all(torch.equal(own[k], parent[k]) for k in own)
    assert trainer.step == 0 and trainer.tokens_seen == 0
    assert not trainer.opt.state  # no moments: a fresh AdamW
    assert trainer.sched.last_epoch == 0 and trainer.sched.get_last_lr()[0] == pytest.approx(cfg.train.lr / 5)
    assert trainer.parent["init"] == "full" and trainer.parent["resolved"].endswith("final")


def test_init_from_run_records_its_parent(parent_run, tiny_dataset, tmp_path):
    out = tmp_path / "child"
    argv = quiet(tiny_dataset, out, f"train.init_from={parent_run / 'final'}", "train.max_steps=1")
    assert main([str(TINY), *argv]) == 0
    state = json.loads((out / "checkpoints" / "step-0000001" / "trainer_state.json").read_text())
    assert state["step"] == 1  # counted from 0, not from the parent's 3
    opt = torch.load(out / "checkpoints" / "step-0000001" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in opt["state"].values()} == {1}  # one AdamW step since init
    rec = json.loads((out / "final" / "training_data.json").read_text())
    assert rec["parent"]["source"] == str(parent_run / "final") and rec["parent"]["init"] == "full"
    assert "fine-tuned from" in (out / "final" / "README.md").read_text()


def test_mismatched_config_is_an_error_naming_both_sides(parent_run, tiny_dataset, tmp_path):
    cfg = load_run_config(
        TINY, quiet(tiny_dataset, tmp_path / "c", f"train.init_from={parent_run}", "model.d_model=32")
    )
    with pytest.raises(ValueError, match=r"d_model: 64 \(init_from\) vs 32 \(this run\)"):
        Trainer(cfg)


def test_partial_init_loads_what_matches_and_lists_the_rest(parent_run, tiny_dataset, tmp_path, capsys):
    """A deeper model: the first layers come from the parent, the new layer keeps its fresh init."""
    argv = quiet(tiny_dataset, tmp_path / "c", f"train.init_from={parent_run}", "train.init_strict=false",
                 "model.n_layers=3")  # fmt: skip
    trainer = Trainer(load_run_config(TINY, argv))
    parent = load_file(str(parent_run / "final" / "model.safetensors"))
    own = trainer.core.state_dict()
    skipped = trainer.parent["skipped"]
    new = sorted(k for k in own if k not in parent)
    assert new and all(".2." in k for k in new)  # only the third block is new
    assert skipped == [f"{k} (not in {parent_run})" for k in new]
    assert trainer.parent["loaded"] == len(parent) and trainer.parent["init"] == "partial"
    assert all(torch.equal(own[k], parent[k]) for k in parent)
    assert "kept fresh: " + new[0] in capsys.readouterr().out


def test_init_from_takes_a_hub_id(parent_run, tiny_dataset, tmp_path, local_hub):
    local_hub.publish(parent_run / "final", "org/parent")
    trainer = Trainer(
        load_run_config(TINY, quiet(tiny_dataset, tmp_path / "c", "train.init_from=org/parent"))
    )
    assert "models--org--parent" in trainer.parent["resolved"]
    parent = WhisperGPT.from_pretrained("org/parent").state_dict()
    assert all(torch.equal(v, parent[k]) for k, v in trainer.core.state_dict().items())


def test_the_finetune_recipe_loads_the_quickstart_shape(tiny_dataset, tmp_path):
    cfg = load_run_config("finetune_quickstart.yaml", quiet(tiny_dataset, tmp_path, "train.lora.r=8"))
    assert cfg.train.init_from == "runs/quickstart/train/hybrid" and cfg.model.d_model == 128
    assert cfg.train.lora.r == 8 and cfg.train.max_steps == 200
