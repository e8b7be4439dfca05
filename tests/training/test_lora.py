"""train.lora (peft): only adapters get gradients, the merged model equals the adapted one,
checkpoints hold the adapter and resume bit for bit, final/ is merged with final/adapter/ beside it."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from whispergpt.cli.train import main
from whispergpt.config import load_run_config
from whispergpt.models import WhisperGPT
from whispergpt.training import lora
from whispergpt.training.trainer import Trainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def quiet(data_dir, out, *extra):
    return [f"data.dir={data_dir}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false", *extra]


@pytest.fixture(scope="module")
def parent(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-parent") / "run"
    assert main([str(TINY), *quiet(tiny_dataset, out, "train.max_steps=2", "train.save_every=2")]) == 0
    return out / "final"


def lora_args(parent, *extra):
    return [f"train.init_from={parent}", "train.lora.r=4", "train.lora.alpha=8", *extra]


def test_only_adapters_get_gradients_and_merging_changes_nothing(parent, tiny_dataset, tmp_path):
    trainer = Trainer(load_run_config(TINY, quiet(tiny_dataset, tmp_path / "c", *lora_args(parent))))
    core = trainer.core
    trainable = {n for n, p in core.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert trainer.lora["trainable"] == sum(p.numel() for n, p in core.named_parameters() if n in trainable)
    codes, mel = (x[None] for x in trainer.train_ds[0])
    core.train()
    nll, count = core.nll(codes.long(), mel)
    (nll.sum() / count.sum()).backward()
    with_grad = {n for n, p in core.named_parameters() if p.grad is not None}
    assert with_grad == trainable  # every adapter, nothing else
    with torch.no_grad():  # B starts at zero: make the adapters do something before comparing
        for n, p in core.named_parameters():
            if ".lora_B" in n:
                p.normal_(0, 0.05)
    merged = WhisperGPT(core.config)
    merged.load_state_dict(lora.merged_state_dict(core))
    core.eval(), merged.eval()
    with torch.no_grad():
        a, b = core(codes.long(), mel).logits, merged(codes.long(), mel).logits
        base = WhisperGPT.from_pretrained(parent).eval()(codes.long(), mel).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert (a - base).abs().max() > 1e-3  # the adapters matter


def test_adapter_checkpoints_resume_bit_for_bit_and_final_is_merged(parent, tiny_dataset, tmp_path):
    args = lora_args(
        parent, "train.max_steps=4", "train.save_every=2", "train.keep_last=5", "train.eval_every=0"
    )
    whole = tmp_path / "whole"
    assert main([str(TINY), *quiet(tiny_dataset, whole, *args)]) == 0
    step2 = whole / "checkpoints" / "step-0000002"
    adapter = load_file(str(step2 / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(".lora_" in k for k in adapter)
    assert WhisperGPT.from_pretrained(step2)  # the checkpoint's model files are the merged model
    resumed = tmp_path / "resumed"  # a run killed after step 2: only that checkpoint survives
    shutil.copytree(step2, resumed / "checkpoints" / "step-0000002")
    assert main([str(TINY), *quiet(tiny_dataset, resumed, *args)]) == 0
    a = load_file(str(whole / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = whole / "final"
    assert not any(".lora_" in k or "base_layer" in k for k in a)  # merged: a plain model
    cfg = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    from peft import LoraConfig

    assert LoraConfig.from_pretrained(str(final / "adapter")).r == 4  # peft reads its own format
    rec = json.loads((final / "training_data.json").read_text())
    assert rec["lora"]["r"] == 4 and 0 < rec["lora"]["trainable"] < rec["lora"]["total"]
    assert "LoRA r=4" in (final / "README.md").read_text()
    base = load_file(str(parent / "model.safetensors"))
    assert not torch.equal(a["decoder.blocks.0.attn.qkv.weight"], base["decoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(a["decoder.blocks.0.ln1.weight"], base["decoder.blocks.0.ln1.weight"])  # frozen


def test_lora_config_is_checked(tiny_dataset, tmp_path):
    from whispergpt.config import ConfigError

    with pytest.raises(ConfigError, match="targets must be a non-empty subset"):
        load_run_config(TINY, quiet(tiny_dataset, tmp_path, "train.lora.r=4", "train.lora.targets=[attn]"))
