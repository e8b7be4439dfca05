"""Training: the Trainer, its checkpoints, and the record of what a model was trained on."""

from .trainer import (
    TRAINING_DATA_FILE,
    DataConfig,
    LoggingConfig,
    NonFiniteLossError,
    RunConfig,
    TrainConfig,
    TrainCrops,
    Trainer,
    load_run_config,
    lr_at,
    main,
    resolve_config,
    sample_seed,
    train,
    val_indices,
)

__all__ = [
    "TRAINING_DATA_FILE",
    "DataConfig",
    "LoggingConfig",
    "NonFiniteLossError",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "TrainCrops",
    "load_run_config",
    "lr_at",
    "main",
    "resolve_config",
    "sample_seed",
    "train",
    "val_indices",
]
