"""Fault injection for the sharded-prepare tests: rank 1 is killed (SIGKILL) in its second shard.

As a script it runs ``whispergpt prepare`` under ``accelerate launch``; in rank 1, the fifth
``np.save`` (the first stream of its second shard, with the four default streams) waits until
rank 0's part is finished and then kills its own process, leaving a half-written ``.tmp-`` shard::

    accelerate launch ... prepare_fault.py prepare SRC --out DIR --codec C ...
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from whispergpt.cli import main


def kill_in_second_shard(out: Path) -> None:
    real, saves = np.save, []

    def dying_save(path, arr):
        saves.append(path)
        real(path, arr)
        if len(saves) == 5:
            part0 = out / "parts" / "part-00000-of-00002.json"
            while not (part0.is_file() and json.loads(part0.read_text())["part"]["finished"]):
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

    np.save = dying_save


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        kill_in_second_shard(Path(sys.argv[sys.argv.index("--out") + 1]))
    sys.exit(main(sys.argv[1:]))
