"""Evaluation: teacher-forced NLL / perplexity (``teacher_forced``, ``semantic``), bits per second,
metrics of generated audio (``score``, ``distribution``, ``paired``, ``tokens``) and consistency.

Nothing here downloads anything: embeddings come from the codec's encoder, NLL from our own
checkpoints. See docs/EVAL.md.
"""

from whispergpt.evaluation.distribution import MIN_N, distribution_metrics, frechet_distance, mmd2_unbiased
from whispergpt.evaluation.paired import paired_metrics

__all__ = ["MIN_N", "distribution_metrics", "frechet_distance", "mmd2_unbiased", "paired_metrics"]
