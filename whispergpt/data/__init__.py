"""Datasets: ``prepare`` (audio folder -> codec tokens + causal log-mels) and the reader."""

from whispergpt.data.dataset import (
    CODEC_LATENT,
    FORMAT_VERSION,
    MANIFEST,
    MEL_SOURCES,
    SHARDS_DIR,
    PreparedDataset,
    read_manifest,
)

__all__ = [
    "CODEC_LATENT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MEL_SOURCES",
    "SHARDS_DIR",
    "PreparedDataset",
    "read_manifest",
]
