"""One planned training run of a preset (``Run``): shared by the preset runner and the fine-stage runs of ``compare_bits``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    """One training run of a preset: where it goes and its raw config (before the dataset)."""

    set: str
    setting: str
    model: str
    seed: int
    dir: Path
    raw: dict
    record: dict = field(default_factory=dict)  # run.json: the plan, FLOPs, wall times

    @property
    def name(self) -> str:
        return f"{self.set}/{self.setting}/{self.model}/seed{self.seed}"
