import pytest
import torch

from whispergpt.codec import Codec
from whispergpt.evaluation.embed import encode_clips, pool_latent


def test_latent_is_what_encode_quantizes(tiny_codec):
    wave = 0.1 * torch.randn(2, 320 * 20 + 100, generator=torch.Generator().manual_seed(0))
    lat = tiny_codec.latent(wave)
    assert lat.shape == (2, tiny_codec.model.config.hidden_size, 20)
    assert torch.equal(tiny_codec.quantize(lat), tiny_codec.encode(wave))
    # a lower bandwidth's codes are a prefix of a higher one's (score quantizes each clip once)
    high = Codec(tiny_codec.model, bandwidth=6.0)
    assert torch.equal(high.quantize(lat)[:, : tiny_codec.num_codebooks], tiny_codec.quantize(lat))


def test_encode_clips_batches_without_changing_latents(tiny_codec):
    g = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(320 * n, generator=g) for n in (12, 30, 12)]
    lats = encode_clips(tiny_codec, waves, batch_samples=320 * 12)  # forces batches of one
    together = encode_clips(tiny_codec, waves)
    for w, a, b in zip(waves, lats, together):
        assert a.shape[-1] == w.shape[-1] // 320
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(a, tiny_codec.latent(w[None])[0], atol=1e-5)
    emb = pool_latent(lats[1], start=10)
    assert emb.shape == (2 * lats[1].shape[0],) and emb.dtype.name == "float64"
    with pytest.raises(ValueError, match="need >= 2 latent frames"):
        pool_latent(lats[0], start=11)
