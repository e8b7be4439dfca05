"""``train.lora``: LoRA adapters (peft) on every transformer block's attention and MLP projections.

peft's adapters are injected into the model in place (``peft.inject_adapter_in_model``), so the
model keeps its class and the trainer its code path; every other weight is frozen.

- A checkpoint holds ``adapter/`` (``adapter_model.safetensors`` + ``adapter_config.json``, peft's
  format) next to the *merged* model (``config.json`` + ``model.safetensors``, loadable as any
  model). Resuming rebuilds the frozen base as the run started it (the seeded init, then
  ``train.init_from``) and loads the adapter: the run continues bit for bit.
- ``final/`` is the merged model, so sampling, eval and the fast decode path need nothing new;
  ``final/adapter/`` keeps the adapter alone.
- One process, DDP, and DeepSpeed ZeRO <= 2 in fp32 (the merge reads the live module, whole on
  every rank there; a DeepSpeed run resumes through its own state, adapters included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ADAPTER_DIR = "adapter"
ADAPTER_NAME = "default"


def target_pattern(targets: list[str]) -> str:
    """peft's ``target_modules`` regex: the named linears of every ``Stack`` block, nothing else."""
    attn = [t for t in targets if t in ("qkv", "proj")]
    mlp = [t for t in targets if t in ("fc", "out")]
    parts = ([rf"attn\.({'|'.join(attn)})"] if attn else []) + ([f"({'|'.join(mlp)})"] if mlp else [])
    return rf".*blocks\.\d+\.({'|'.join(parts)})"


def apply_lora(model: torch.nn.Module, settings: Any) -> dict[str, Any]:
    """Inject adapters (``settings``: ``config.LoraSettings``) and freeze every other parameter;
    returns ``{r, alpha, dropout, targets, trainable, total}``."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=target_pattern(list(settings.targets)), bias="none",
    )  # fmt: skip
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not trainable:
        raise ValueError(f"train.lora.targets {settings.targets} matched no layer of this model")
    total = sum(p.numel() for p in model.parameters())
    return dict(r=settings.r, alpha=settings.alpha, dropout=settings.dropout, targets=list(settings.targets),
                trainable=trainable, total=total)  # fmt: skip


def lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model with every adapter merged (``W + scale * B A``), computed
    aside: the live model keeps its base weights and adapters untouched."""
    state = {
        k.replace(".base_layer.", "."): v.detach() for k, v in model.state_dict().items() if ".lora_" not in k
    }
    with torch.no_grad():
        for name, layer in lora_layers(model):
            base = layer.get_base_layer().weight
            state[f"{name}.weight"] = (base + layer.get_delta_weight(ADAPTER_NAME)).to(base.dtype).detach()
    return {k: v.contiguous().cpu() for k, v in state.items()}


def save_merged(model: torch.nn.Module, build, directory: Path) -> None:
    """``directory``: the merged model (``build()`` makes a plain one, seeded aside) + ``adapter/``."""
    from whispergpt.models.registry import strict_load

    with torch.random.fork_rng(devices=[]):  # its random init must not move the run's RNG
        fresh = build()
    strict_load(fresh, merged_state_dict(model), "the merged LoRA model")
    fresh.save_pretrained(directory)
    save_adapter(model, directory)


def save_adapter(model: torch.nn.Module, directory: Path) -> None:
    """``directory/adapter/``: peft's ``adapter_model.safetensors`` + ``adapter_config.json``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(directory) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()
    }
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = model.peft_config[ADAPTER_NAME].to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")


def load_adapter(model: torch.nn.Module, directory: Path) -> None:
    """Load ``directory/adapter/`` into the injected ``model``: every adapter tensor must be there."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_DIR / "adapter_model.safetensors"
    if not path.is_file():
        raise ValueError(
            f"{directory}: a LoRA run's checkpoint needs {ADAPTER_DIR}/adapter_model.safetensors"
        )
    result = set_peft_model_state_dict(model, load_file(str(path)), adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: adapter does not match this run (missing {missing}, unexpected {result.unexpected_keys})"
        )
