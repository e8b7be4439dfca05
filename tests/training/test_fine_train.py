"""The fine stage trains through the same trainer as the decoder: task fine, its loss contract,
the shipped fine recipes, checkpoints, metrics and an exact resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from whispergpt import checkpoint as ckpt_io
from whispergpt.config import ConfigError, load_recipe, load_run_config
from whispergpt.config_io import dump_yaml, recipe_path
from whispergpt.models import FineModel, load_pretrained, nll_per_codebook
from whispergpt.training import train
from whispergpt.training.tasks import TASKS, TaskModule, get_task


def quiet(data_dir, out, *extra: str) -> list[str]:
    return [f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false", *extra]


@pytest.mark.parametrize("name", ["fine_tiny", "fine_quickstart"])
def test_fine_recipes_take_the_shape_from_the_data(name, tiny_dataset, tmp_path):
    raw = yaml.safe_load(recipe_path(name).read_text())
    assert raw["task"] == "fine" and "extends" in raw
    assert load_recipe(name)["fine"]["num_codebooks"] is None
    cfg = load_run_config(name, quiet(tiny_dataset, tmp_path))
    assert (cfg.fine.num_codebooks, cfg.fine.codebook_size) == (2, 1024)  # the tiny codec: K=2
    assert cfg.data.frames == cfg.fine.context and cfg.data.mel_source == "truth"
    text = dump_yaml(cfg)
    assert "task: fine" in text and "fine:" in text and "\nmodel:" not in text  # only the active section


def test_fine_shape_mismatch_is_a_config_error(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"fine.num_codebooks=4 does not match the dataset"):
        load_run_config("fine_tiny", quiet(tiny_dataset, tmp_path, "fine.num_codebooks=4"))


def test_fine_task_loss_is_the_nll_contract(tiny_dataset, tmp_path):
    cfg = load_run_config("fine_tiny", quiet(tiny_dataset, tmp_path))
    task = get_task("fine")
    assert task is TASKS["fine"] and task.streams(cfg) == ("codes",)
    model = task.build(cfg)
    assert isinstance(model, FineModel)
    codes = torch.randint(0, 1024, (3, 2, 16))
    out = TaskModule(model, task)(codes)  # (B, S, T, V)
    objective, nll_sum, count = task.loss(out, codes)
    ref_sum, ref_count = nll_per_codebook(model(codes).logits, codes[:, 1:])
    torch.testing.assert_close(nll_sum, ref_sum)
    assert count.tolist() == [3 * 16] and torch.isclose(objective.double(), ref_sum.sum() / 48)
    assert task.tokens_per_crop(model, 16) == 16 * 2


def test_train_fine_writes_a_fine_checkpoint_and_resumes_exactly(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    extra = ("train.max_steps=3", "train.save_every=2", "train.eval_every=3", "train.eval_batches=1")
    cfg = load_run_config("fine_tiny", quiet(tiny_dataset, out, *extra))
    final = train(cfg)
    model = load_pretrained(final)
    assert isinstance(model, FineModel) and model.config == cfg.fine
    record = json.loads((final / "training_data.json").read_text())
    assert record["codec"] and record["steps"] == 3
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    (val,) = [x for x in lines if "val_nll" in x]
    assert len(val["val_nll_per_codebook"]) == 1 and val["val_nll"] > 0  # codebook 1, given codebook 0

    # resume: drop what step 3 wrote, rerun; it continues from step 2 and ends on the same weights
    ref = load_file(str(final / "model.safetensors"))
    shutil.rmtree(final)
    shutil.rmtree(ckpt_io.checkpoints_dir(out) / ckpt_io.checkpoint_name(3))
    again = train(load_run_config("fine_tiny", quiet(tiny_dataset, out, *extra)))
    got = load_file(str(again / "model.safetensors"))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3]  # metrics.jsonl truncated to the checkpoint: no step logged twice
