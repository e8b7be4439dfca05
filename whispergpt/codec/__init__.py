"""The neural audio codec: loading (``Codec``), exact streaming decode, and codec training/eval."""

from whispergpt.codec.codec import (
    HUB_CODEC,
    PRIME_FRAMES,
    SHIPPED_CODEC_DIR,
    Codec,
    codec_latent,
    fill_codebooks,
    match_codec,
    open_codec,
    pick_bandwidth,
    same_codec_name,
)
from whispergpt.codec.streaming import StreamingDecoder

__all__ = [
    "HUB_CODEC",
    "PRIME_FRAMES",
    "SHIPPED_CODEC_DIR",
    "Codec",
    "StreamingDecoder",
    "codec_latent",
    "fill_codebooks",
    "match_codec",
    "open_codec",
    "pick_bandwidth",
    "same_codec_name",
]
