"""Fault injection for the killed-worker test: rank ``RANK`` SIGKILLs itself in training step ``STEP``.

Patches ``nll_per_codebook`` in ``training/tasks.py``'s namespace (what the decoder task's loss calls), like
``nan_fault.py``; run under ``accelerate launch``::

    kill_fault.py RANK STEP CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import os
import signal
import sys

from whispergpt.cli import train as train_cli
from whispergpt.training import tasks

if __name__ == "__main__":
    rank, step = int(sys.argv[1]), int(sys.argv[2])
    real, calls = tasks.nll_per_codebook, [0]

    def patched(logits, codes):
        if logits.requires_grad and int(os.environ.get("RANK", "0")) == rank:
            calls[0] += 1
            if calls[0] == step:  # grad_accum 1: call i is step i
                os.kill(os.getpid(), signal.SIGKILL)
        return real(logits, codes)

    tasks.nll_per_codebook = patched
    sys.exit(train_cli.main(sys.argv[3:]))
