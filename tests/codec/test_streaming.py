"""StreamingDecoder: chunked / frame-by-frame decode equals ``Codec.decode``; its own causal padding
equals what transformers' EnCodec convs do (short inputs included)."""

import pytest
import torch

from whispergpt.codec import Codec
from whispergpt.codec.streaming import StreamingDecoder, causal_padding, pad_left


def test_streaming_decoder_equals_full_decode(tiny_codec):
    codes = torch.randint(0, 1024, (2, 2, 20), generator=torch.Generator().manual_seed(0))
    assert StreamingDecoder.supported(tiny_codec)
    sd = StreamingDecoder(tiny_codec, batch=2, num_codebooks=2)
    chunks = [sd.push(codes[:, :, a:b]) for a, b in [(0, 3), (3, 4), (4, 11), (11, 20)]]
    full = tiny_codec.decode(codes)
    torch.testing.assert_close(torch.cat(chunks, -1), full, atol=1e-5, rtol=0)
    assert full.abs().max() > 0.1  # not trivially silent


def test_coarse_stream_decodes_codebook_0_alone(tiny_codec):
    codes = torch.randint(0, 1024, (1, 1, 6), generator=torch.Generator().manual_seed(1))
    sd = StreamingDecoder(tiny_codec, batch=1, num_codebooks=1)
    parts = [sd.push(codes[:, :, f : f + 1]) for f in range(6)]
    torch.testing.assert_close(torch.cat(parts, -1), tiny_codec.decode(codes), atol=1e-5, rtol=0)


def test_reflect_pad_of_a_short_input_sees_zeros_on_the_right():
    # [1, 2] is extended to [1, 2, 0, 0] before reflecting 3 samples, then cut back to 2 + 3
    x = torch.tensor([[[1.0, 2.0]]])
    assert pad_left(x, 3).tolist() == [[[0.0, 0.0, 2.0, 1.0, 2.0]]]
    assert pad_left(x, 1).tolist() == [[[2.0, 1.0, 2.0]]]
    assert pad_left(x, 2, "constant").tolist() == [[[0.0, 0.0, 1.0, 2.0]]]
    assert causal_padding(7) == 6 and causal_padding(3, dilation=2) == 4 and causal_padding(4, 1, 2) == 2


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 7, 12])
def test_own_padding_equals_the_encodec_conv(length):
    """Every stride-1 conv of a decoder with dilated residual convs: conv(pad_left(x)) == module(x)."""
    from transformers.models.encodec import modeling_encodec as me

    codec = Codec.random(seed=1, config_overrides=dict(num_residual_layers=2))
    convs = [
        m
        for m in codec.model.decoder.modules()
        if isinstance(m, me.EncodecConv1d) and m.conv.stride[0] == 1 and m.conv.kernel_size[0] > 1
    ]
    assert any(m.conv.dilation[0] > 1 for m in convs) and any(m.conv.kernel_size[0] == 7 for m in convs)
    g = torch.Generator().manual_seed(length)
    with torch.no_grad():
        for m in convs:
            k, dil = m.conv.kernel_size[0], m.conv.dilation[0]
            x = torch.randn(2, m.conv.in_channels, length, generator=g)
            ours = m.conv(pad_left(x, causal_padding(k, dil), m.pad_mode))
            torch.testing.assert_close(ours, m(x), atol=1e-6, rtol=0)
