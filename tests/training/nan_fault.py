"""Fault injection for the non-finite-loss tests: the training loss turns NaN from a given step on.

Patches ``nll_per_codebook`` in ``training/tasks.py``'s namespace (what the decoder task's loss calls), counting only
training calls (with grad), so evaluation does not shift the count. As a script it runs
``whispergpt train`` with the fault, e.g. under ``accelerate launch``::

    nan_fault.py STEP GRAD_ACCUM CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import sys

import torch

from whispergpt.cli import train as train_cli
from whispergpt.training import tasks


def nan_from_step(step: int, grad_accum: int = 1):
    """A ``nll_per_codebook`` whose summed nats are NaN from optimizer step ``step`` (1-based) on."""
    real = tasks.nll_per_codebook
    calls = 0

    def patched(logits: torch.Tensor, codes: torch.Tensor):
        nonlocal calls
        nll_sum, count = real(logits, codes)
        if logits.requires_grad:
            calls += 1
            if (calls - 1) // grad_accum + 1 >= step:
                nll_sum = nll_sum * float("nan")
        return nll_sum, count

    return patched


if __name__ == "__main__":
    tasks.nll_per_codebook = nan_from_step(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(train_cli.main(sys.argv[3:]))
