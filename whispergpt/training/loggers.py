"""Run logging on the main process: metrics.jsonl (always), wandb and tensorboard (optional).

A resumed run first drops metrics.jsonl lines logged after its checkpoint, so every step appears
once with the values of the run that produced the final weights; the wandb run id is kept in the
checkpoint so that a resume continues the same wandb run."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whispergpt.runtime import write_atomic, writing

if TYPE_CHECKING:
    from whispergpt.config import LoggingConfig


def resolve_wandb_mode(cfg: LoggingConfig) -> str:
    """``logging.wandb_mode``, else $WANDB_MODE, else online when logged in, else offline."""
    if cfg.wandb_mode is not None:
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    write_atomic(path, "".join(k + "\n" for k in kept))


class Loggers:
    """metrics.jsonl + wandb + tensorboard on the main process; no-ops elsewhere."""

    def __init__(
        self,
        cfg: LoggingConfig,
        config: dict[str, Any],
        out: Path,
        is_main: bool,
        start_step: int,
        wandb_id: str | None,
    ):
        self.is_main = is_main
        self.path = out / "metrics.jsonl"
        self.wandb = None
        self.tb = None
        self.wandb_id = wandb_id
        if not is_main:
            return
        truncate_metrics(self.path, start_step)
        mode = resolve_wandb_mode(cfg)
        if cfg.wandb and mode != "disabled":
            try:
                import wandb
            except ImportError:
                print("warning: wandb is not installed; logging to metrics.jsonl only", file=sys.stderr)
            else:
                self.wandb_id = wandb_id or secrets.token_hex(4)  # persisted so a resume continues the run
                self.wandb = wandb.init(
                    project=cfg.wandb_project,
                    name=cfg.wandb_name or out.name,
                    id=self.wandb_id,
                    resume="allow",
                    dir=str(out),
                    mode=mode,
                    config=config,
                )
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "warning: tensorboard is not installed (pip install whispergpt[tensorboard])",
                    file=sys.stderr,
                )
            else:
                self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with writing(
            self.path, "a metrics line", "free disk space and rerun: it resumes from the last checkpoint"
        ):
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
