"""The task a run config names decides the trainer's model, streams and loss."""

import pytest
import torch

from whispergpt.config import ConfigError, RunConfig, resolve_config
from whispergpt.config_io import dump_yaml
from whispergpt.models import WhisperGPT, nll_per_codebook
from whispergpt.training.tasks import TASKS, TaskModule, get_task


def test_unknown_task_is_a_config_error(tiny_dataset):
    with pytest.raises(ConfigError, match="task: expected one of"):
        resolve_config({"task": "nonesuch", "data": {"dir": str(tiny_dataset)}})
    with pytest.raises(ValueError, match="task: expected one of"):
        get_task("nonesuch")


def test_lm_task_loss_is_the_nll_contract(tiny_dataset):
    cfg = resolve_config({"data": {"dir": str(tiny_dataset)}, "model": {"d_model": 32, "n_layers": 1,
                         "n_heads": 2, "mel_dim": 8, "mel_heads": 1, "mel_layers": 1, "context": 16}})  # fmt: skip
    task = get_task(cfg.task)
    assert task is TASKS["lm"] and task.streams(cfg) == ("codes", "mel")
    torch.manual_seed(0)
    model = task.build(cfg)
    assert isinstance(model, WhisperGPT)
    codes = torch.randint(0, cfg.model.codebook_size, (2, cfg.model.num_codebooks, 16))
    mel = torch.randn(2, cfg.model.n_mels, 16)
    out = TaskModule(model, task)(codes, mel)
    objective, nll_sum, count = task.loss(out, codes, mel)
    ref_sum, ref_count = nll_per_codebook(model(codes, mel).logits, codes)
    torch.testing.assert_close(nll_sum, ref_sum)
    torch.testing.assert_close(count, ref_count)
    torch.testing.assert_close(objective, ref_sum.sum() / ref_count.sum())
    assert task.tokens_per_crop(model, 16) == 16 * model.num_input_codebooks
    assert "task: lm" in dump_yaml(cfg) and "model:" in dump_yaml(cfg)
    assert RunConfig().task == "lm"
