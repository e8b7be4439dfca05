"""Train a WhisperGPT model: ``python train.py CONFIG.yaml [key=value ...]``.

Multi-process / multi-GPU / DeepSpeed ZeRO:
``accelerate launch --config_file configs/accelerate/zero2.yaml train.py CONFIG.yaml ...``.
Same as ``whispergpt train``; see ``whispergpt/training.py``.
"""

import sys

from whispergpt.training.trainer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
