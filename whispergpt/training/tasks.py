"""What the trainer needs to know about each kind of model it trains (``task:`` in a run config).

The trainer (``trainer.py``) is the same for every model: accelerate/DeepSpeed, exact resume,
checkpoints, metrics.jsonl, the NLL contract. A :class:`Task` supplies the rest:

- ``section``: the run-config field holding the model's config (``config.TASK_SECTIONS``);
- ``streams``: the prepared-dataset streams one training item holds, in order (``codes``, ``mel``);
- ``build``: a fresh model from the config (it has ``save_pretrained`` / ``from_pretrained``,
  ``num_parameters`` and a ``model_type``);
- ``forward``: ``model, *batch -> output`` (tensors only, so DeepSpeed ZeRO-3 can hook the backward);
- ``loss``: ``output, *batch -> (objective, nll_sum (Ks,), count (Ks,))``. ``objective`` is the
  scalar this micro-batch back-propagates; ``nll_sum / count`` per codebook is what is reported and
  reduced across ranks (sum of nats over the sum of counts, never a mean of means);
- ``tokens_per_crop``: the tokens one crop of ``frames`` frames feeds the model (tokens/s);
- ``external_parameters``: parameters a module reads outside its own ``forward`` (ZeRO-3 must be told).

A new model adds a Task subclass here, registers it in :data:`TASKS` and its section in
``config.TASK_SECTIONS``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from whispergpt.models import EnCodecMAE, FineModel, SemanticLM, WhisperGPT, nll_per_codebook
from whispergpt.models.semantic_lm import rate_tokens


class Task:
    name = ""
    section = ""

    def streams(self, cfg: Any) -> tuple[str, ...]:
        return ("codes", "mel")

    def build(self, cfg: Any) -> nn.Module:
        raise NotImplementedError

    def forward(self, model: nn.Module, *batch: torch.Tensor) -> Any:
        raise NotImplementedError

    def loss(self, output: Any, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def tokens_per_crop(self, model: nn.Module, frames: int) -> int:
        raise NotImplementedError

    def external_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return []

    def model_config(self, cfg: Any) -> Any:
        """The model's config dataclass (the run config's ``section``)."""
        return getattr(cfg, self.section)


class LMTask(Task):
    """The Whisper-GPT decoder: ``codes (B, K, T), mel (B, M, T)[, semantic (B, T)] -> logits
    (B, Ks, T, V)``; the semantic stream (``prepare --semantic``) with ``model.semantic != none``."""

    name = "lm"
    section = "model"

    def streams(self, cfg: Any) -> tuple[str, ...]:
        return ("codes", "mel", "semantic") if cfg.model.semantic != "none" else ("codes", "mel")

    def build(self, cfg: Any) -> nn.Module:
        return WhisperGPT(cfg.model)

    def forward(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        codes, mel, *semantic = batch
        return model(codes, mel, *semantic).logits  # (B, Ks, T, V)

    def loss(self, output: Any, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nll_sum, count = nll_per_codebook(output, batch[0])
        return nll_sum.sum() / count.sum(), nll_sum, count

    def tokens_per_crop(self, model: nn.Module, frames: int) -> int:
        return frames * model.num_input_codebooks  # codec tokens read (coarse: codebook 0 only)

    def external_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # the output projection reads head.weight (or, tied, the embedding) from the top-level forward
        head = getattr(model, "head", None)
        return [head.weight if head is not None else model.tok_emb.weight]


class FineTask(Task):
    """The fine acoustic stage (``models/fine.py``): ``codes (B, K, T) -> logits (B, K-Kc, T, V)``,
    ``logits[:, j]`` scoring codebook ``Kc + j`` given the true codebooks ``< Kc + j``."""

    name = "fine"
    section = "fine"

    def streams(self, cfg: Any) -> tuple[str, ...]:
        return ("codes",)

    def build(self, cfg: Any) -> nn.Module:
        return FineModel(cfg.fine)

    def forward(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        return model(batch[0]).logits  # (B, S, T, V)

    def loss(self, output: Any, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first = output.shape[1]  # S: the last S codebooks are scored
        nll_sum, count = nll_per_codebook(output, batch[0][:, -first:])
        return nll_sum.sum() / count.sum(), nll_sum, count

    def tokens_per_crop(self, model: nn.Module, frames: int) -> int:
        return frames * model.config.num_codebooks  # the crop's codec tokens: K-1 read, S scored

    def external_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # read outside their modules' forward: the stage embedding's and the heads' weights
        return [model.stage_emb.weight, model.head.weight]


class MAETask(Task):
    """EnCodecMAE: ``codes (B, K, T), x (B, C, T)[, semantic (B, T)] -> (objective, nll_sum, count)``.

    The model computes its own loss (the mask it draws decides which frames are scored); the NLL
    reported is that of the masked frames, per target stream (models/encodecmae.py).
    """

    name = "mae"
    section = "mae"

    def streams(self, cfg: Any) -> tuple[str, ...]:
        extra = ("semantic",) if cfg.mae.targets != "codes" else ()
        return ("codes", cfg.mae.input, *extra)

    def build(self, cfg: Any) -> nn.Module:
        return EnCodecMAE(cfg.mae)

    def forward(self, model: nn.Module, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        codes, x, *semantic = batch
        return tuple(model(x, codes, *semantic))  # a plain tuple of tensors (DeepSpeed hooks)

    def loss(self, output: Any, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        objective, nll_sum, count = output
        return objective, nll_sum, count

    def tokens_per_crop(self, model: nn.Module, frames: int) -> int:
        return frames  # input frames (75 per second of audio), masked ones included


class SemanticTask(Task):
    """The semantic LM (``models/semantic_lm.py``): ``semantic (B, T) -> (logits (B, 1, S, V),
    tokens (B, 1, S))``; the crop's per-codec-frame stream read at the semantic rate (every g-th
    frame, ``S = ceil(T / g)``), each token scored given the ones before it."""

    name = "semantic"
    section = "semantic_lm"

    def streams(self, cfg: Any) -> tuple[str, ...]:
        return ("semantic",)

    def build(self, cfg: Any) -> nn.Module:
        return SemanticLM(cfg.semantic_lm)

    def forward(self, model: nn.Module, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = rate_tokens(batch[0], model.group)  # (B, T) -> (B, S)
        return model(tokens)[:, None], tokens[:, None]  # (B, 1, S, V), (B, 1, S)

    def loss(self, output: Any, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, tokens = output
        nll_sum, count = nll_per_codebook(logits, tokens)
        return nll_sum.sum() / count.sum(), nll_sum, count

    def tokens_per_crop(self, model: nn.Module, frames: int) -> int:
        return -(-frames // model.group)  # semantic tokens read

    def external_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return LMTask().external_parameters(model.lm)


TASKS: dict[str, Task] = {t.name: t for t in (LMTask(), FineTask(), MAETask(), SemanticTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


class TaskModule(nn.Module):
    """``*batch -> output`` around the model (keys ``core.<name>``): a plain tensor output lets
    DeepSpeed ZeRO-3 hook the backward pass (it does not look inside output dataclasses)."""

    def __init__(self, core: nn.Module, task: Task):
        super().__init__()
        self.core = core
        self.task = task

    def forward(self, *batch: torch.Tensor) -> Any:
        return self.task.forward(self.core, *batch)
