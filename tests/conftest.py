import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_codec():
    """A tiny random EnCodec (1.5 kbps -> K=2, V=1024) with filled codebooks; shared, read-only."""
    from whispergpt.codec import Codec

    return Codec.random(bandwidth=1.5, seed=0)


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory, tiny_codec):
    """The tiny codec in EncodecModel save_pretrained layout (for CLI tests)."""
    d = tmp_path_factory.mktemp("codec") / "tiny-codec"
    tiny_codec.save_pretrained(d)
    return d
