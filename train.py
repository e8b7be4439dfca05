"""Train a WhisperGPT model: ``python train.py [--debug] CONFIG.yaml [key=value ...]``.

Multi-process / multi-GPU / DeepSpeed ZeRO:
``accelerate launch --config_file configs/accelerate/zero2.yaml train.py CONFIG.yaml ...``.
Same as ``whispergpt train`` (errors and exit codes: ``whispergpt/cli/__init__.py``); see
``whispergpt/training/trainer.py``.
"""

import sys

from whispergpt.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("train"))
