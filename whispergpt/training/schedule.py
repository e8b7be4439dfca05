"""What each optimizer step sees: the learning rate, the parameter groups, the training crops
(a pure function of ``(seed, rank, sample index)``, so resuming is starting at an index) and the
fixed validation set."""

from __future__ import annotations

import hashlib
import math
import struct
from typing import TYPE_CHECKING

import torch

from whispergpt.data import PreparedDataset

if TYPE_CHECKING:
    from whispergpt.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def sample_seed(*ints: int) -> int:
    """A 63-bit seed hashed from integers (seed, rank, sample index): independent streams."""
    digest = hashlib.blake2b(struct.pack(f"<{len(ints)}q", *ints), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TrainCrops(torch.utils.data.Dataset):
    """Map-style view whose item ``n`` is the ``n``-th random crop drawn by ``rank``.

    Sample ``n = (step * grad_accum + micro) * batch_size + i`` depends only on
    ``(seed, rank, n)``: resuming at a step is starting the sampler at that index, and any number
    of DataLoader workers gives the same batches."""

    def __init__(self, dataset: PreparedDataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.rank, n))
        return self.dataset.random_crop(g)


def train_loader(
    dataset: PreparedDataset, tc: TrainConfig, num_workers: int, rank: int, start_step: int
) -> torch.utils.data.DataLoader:
    """The rest of ``rank``'s training batches from optimizer step ``start_step`` to ``max_steps``."""
    per_step = tc.grad_accum * tc.batch_size
    return torch.utils.data.DataLoader(
        TrainCrops(dataset, tc.seed, rank),
        batch_size=tc.batch_size,
        sampler=range(start_step * per_step, tc.max_steps * per_step),
        num_workers=num_workers,
        # its own generator: creating the iterator must not consume the global RNG (resume)
        generator=torch.Generator().manual_seed(tc.seed),
        pin_memory=torch.cuda.is_available(),
    )


def val_indices(num_items: int, eval_batches: int | str, batch_size: int) -> list[int]:
    """The fixed validation set: all tiles ("full") or ``eval_batches * batch_size`` tiles spread
    evenly over the split (so that every file region is represented, independent of world size)."""
    if eval_batches == "full":
        return list(range(num_items))
    n = min(num_items, int(eval_batches) * batch_size)
    return sorted({(i * num_items) // n for i in range(n)}) if n else []


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear / embedding weights); never biases, norm gains or pad vectors."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # an empty group (LoRA trains matrices only) is dropped: DeepSpeed drops it too, and the LR
    # scheduler must see the optimizer's groups
    return [g for g in groups if g["params"]]
