import pytest
import torch

from whispergpt.audio import HOP_LENGTH, log_mel
from whispergpt.codec import Codec


def _audio(B=2, frames=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * HOP_LENGTH) / 24000
    return 0.3 * torch.sin(2 * torch.pi * 220 * (1 + torch.rand(B, 1, generator=g)) * t) + 0.05 * torch.randn(
        B, frames * HOP_LENGTH, generator=g
    )


def test_properties(tiny_codec):
    assert tiny_codec.sample_rate == 24000 and tiny_codec.frame_rate == 75
    assert tiny_codec.num_codebooks == 2 and tiny_codec.codebook_size == 1024


def test_encode_shapes_match_log_mel(tiny_codec):
    x = _audio()
    x = torch.cat([x, x[:, :123]], dim=1)  # trailing partial hop is dropped by both
    codes = tiny_codec.encode(x)
    assert codes.dtype == torch.long and codes.shape == (2, 2, 40)
    assert codes.shape[-1] == log_mel(x).shape[-1]
    assert codes.unique().numel() > 20, "random codec must not collapse to code 0"
    audio = tiny_codec.decode(codes)
    assert audio.shape == (2, 40 * HOP_LENGTH)
    assert tiny_codec.decode(codes[:, :1]).shape == (2, 40 * HOP_LENGTH)  # coarse-only decode


def test_batched_encode_equals_per_item(tiny_codec):
    x = _audio(B=3)
    batched = tiny_codec.encode(x)
    for i in range(3):
        assert torch.equal(batched[i], tiny_codec.encode(x[i])[0])


@pytest.mark.parametrize("t0", [1, 2, 5, 13])
def test_encode_and_decode_are_causal(tiny_codec, t0):
    x = _audio(B=1, frames=30)
    y = x.clone()
    y[:, t0 * HOP_LENGTH :] += 0.5 * torch.randn(1, y.shape[1] - t0 * HOP_LENGTH)
    cx, cy = tiny_codec.encode(x), tiny_codec.encode(y)
    assert torch.equal(cx[..., :t0], cy[..., :t0])
    assert not torch.equal(cx[..., t0:], cy[..., t0:])
    # decoded samples of frames < t0 depend only on codes of frames < t0
    mixed = torch.cat([cx[..., :t0], cy[..., t0:]], dim=-1)
    ax, am = tiny_codec.decode(cx), tiny_codec.decode(mixed)
    # equal up to float reordering (~1e-5); a leak of the changed codes would be O(0.1)
    torch.testing.assert_close(ax[:, : t0 * HOP_LENGTH], am[:, : t0 * HOP_LENGTH], rtol=0, atol=1e-4)
    assert (ax[:, t0 * HOP_LENGTH :] - am[:, t0 * HOP_LENGTH :]).abs().max() > 1e-2


def test_save_and_from_pretrained_roundtrip(tiny_codec, tiny_codec_dir):
    loaded = Codec.from_pretrained(tiny_codec_dir, bandwidth=1.5)
    x = _audio()
    assert torch.equal(loaded.encode(x), tiny_codec.encode(x))
    assert Codec.from_pretrained(tiny_codec_dir, bandwidth=6.0).num_codebooks == 8


def test_bad_bandwidth_says_what_to_pass(tiny_codec_dir):
    with pytest.raises(ValueError, match=r"pass one of \[1.5, 3.0, 6.0, 12.0, 24.0\]"):
        Codec.from_pretrained(tiny_codec_dir, bandwidth=5.0)


def test_unreachable_hub_id_is_oserror(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="local directory"):
        Codec.from_pretrained("nonexistent-org/not-a-codec-xyz")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(OSError, match="config.json"):
        Codec.from_pretrained(tmp_path)


def test_decode_rejects_bad_shapes(tiny_codec):
    with pytest.raises(ValueError, match=r"\(B, K, T\)"):
        tiny_codec.decode(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="codebooks"):
        tiny_codec.decode(torch.zeros(1, 99, 5, dtype=torch.long))
