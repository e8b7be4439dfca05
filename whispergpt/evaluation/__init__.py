"""Offline sample metrics (``whispergpt score``): distribution, paired and token metrics.

Nothing here downloads anything: embeddings come from the codec's encoder, NLL from our own
checkpoints. See docs/EVAL.md ("Scoring generated audio").
"""

from whispergpt.evaluation.distribution import MIN_N, distribution_metrics, frechet_distance, mmd2_unbiased
from whispergpt.evaluation.paired import paired_metrics

__all__ = ["MIN_N", "distribution_metrics", "frechet_distance", "mmd2_unbiased", "paired_metrics"]
