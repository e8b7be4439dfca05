"""open_codec / pick_bandwidth: the one codec opener (sampling, evaluation, codec eval)."""

import pytest

from whispergpt.codec import open_codec, pick_bandwidth


def test_pick_bandwidth_prefers_the_asked_one_then_the_one_giving_k(tiny_codec):
    m = tiny_codec.model  # bandwidths 1.5 / 3 / 6 / 12 / 24 kbps -> K = 2 / 4 / 8 / 16 / 32
    assert pick_bandwidth(m) == (6.0, None)
    assert pick_bandwidth(m, num_codebooks=2, bandwidth=1.5) == (1.5, None)
    b, note = pick_bandwidth(m, num_codebooks=4, codebook_size=1024)
    assert b == 3.0 and "6.0 kbps gives K=8" in note and "3.0 kbps (K=4)" in note
    b, note = pick_bandwidth(m, num_codebooks=2, bandwidth=5.0)
    assert b == 1.5 and "not offered" in note
    with pytest.raises(ValueError, match="not supported"):
        pick_bandwidth(m, bandwidth=5.0)
    with pytest.raises(ValueError, match="K=3"):
        pick_bandwidth(m, num_codebooks=3)
    with pytest.raises(ValueError, match="codebook_size V=512"):
        pick_bandwidth(m, num_codebooks=2, codebook_size=512)


def test_open_codec_loads_once_at_the_chosen_bandwidth(tiny_codec_dir):
    codec, note = open_codec(tiny_codec_dir, num_codebooks=4, bandwidth=1.5, device="cpu")
    assert (codec.bandwidth, codec.num_codebooks, codec.name) == (3.0, 4, str(tiny_codec_dir))
    assert "1.5 kbps gives K=2" in note
    with pytest.raises(OSError, match="could not load codec"):
        open_codec("nonexistent-org/not-a-codec-xyz")
