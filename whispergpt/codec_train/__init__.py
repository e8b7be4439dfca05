"""Train and evaluate EnCodec-architecture codecs (``whispergpt codec train|eval``).

- ``rvq``: trainable residual VQ (EMA codebooks, k-means init, dead-code reset, straight-through)
  that exports into transformers' ``EncodecModel`` quantiser;
- ``train``: the training loop (accelerate), checkpoints/resume, export in save_pretrained layout;
- ``eval``: mel distance, SI-SNR, PESQ/STOI and codebook usage per bandwidth vs a random floor.
"""

from .rvq import ResidualVQ, export_to_encodec, rvq_for_encodec

__all__ = ["ResidualVQ", "export_to_encodec", "rvq_for_encodec"]
