"""The one-position step's fused pieces equal the plain ones bit for bit (the sampler's hot loop)."""

from __future__ import annotations

import torch

from whispergpt.models.blocks import (
    BlockWeights,
    Int8Linear,
    LayerKV,
    Stack,
    apply_rope,
    rope_cos_sin,
    rope_qkv,
    step_rope_tables,
)
from whispergpt.models.config import WhisperGPTConfig


def test_rope_qkv_is_apply_rope_on_q_and_k_and_leaves_v():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 3, 4, 16, generator=g)  # (B, 3, H, hd)
    cos, sin = rope_cos_sin(0, 50, 16, 10000.0, torch.device("cpu"))
    cos3, sin3 = step_rope_tables(cos, sin)
    for pos in (0, 7, 49):
        out = rope_qkv(qkv, cos3[pos], sin3[pos])
        torch.testing.assert_close(out[:, :2], apply_rope(qkv[:, :2], cos[pos], sin[pos]), rtol=0, atol=0)
        torch.testing.assert_close(out[:, 2], qkv[:, 2], rtol=0, atol=0)
    bf16 = qkv.bfloat16()  # computed in the tables' dtype, returned in the input's
    out = rope_qkv(bf16, cos3[5], sin3[5])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[:, :2], apply_rope(bf16[:, :2], cos[5], sin[5]), rtol=0, atol=0)


def test_layer_kv_views_share_one_buffer():
    kv = LayerKV(2, 4, 10, 8, "cpu", torch.float32)
    kv.kv.select(3, 3).copy_(torch.ones(2, 2, 4, 8))
    assert kv.k[:, :, 3].eq(1).all() and kv.v[:, :, 3].eq(1).all()
    assert kv.k[:, :, :3].eq(0).all() and kv.v[:, :, 4:].eq(0).all()


def test_fused_step_equals_module_step_and_prefill():
    """The decode copies' step (fused RoPE, one KV copy, direct layer norms) == the modules' step ==
    the forward, over 40 positions (the copies' GEMM layout rounds differently: not bitwise)."""
    cfg = WhisperGPTConfig(d_model=32, n_layers=2, n_heads=4, context=64, mel_dim=16, mel_heads=2)
    torch.manual_seed(0)
    stack = Stack(32, 2, 4, cfg, 64).eval()
    weights = [BlockWeights.of(b) for b in stack.blocks]
    x = torch.randn(2, 40, 32)
    with torch.inference_mode():
        full = stack(x, stack.new_kv(2, 64, "cpu", torch.float32), 0)
        kv_fast, kv_mod = stack.new_kv(2, 64, "cpu", torch.float32), stack.new_kv(2, 64, "cpu", torch.float32)
        for p in range(40):
            fast = stack.step(x[:, p], kv_fast, p, weights)
            mod = stack.step(x[:, p], kv_mod, p, None)
            torch.testing.assert_close(fast, mod, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fast, full[:, p], rtol=1e-5, atol=1e-5)
        for a, b in zip(kv_fast, kv_mod):
            torch.testing.assert_close(a.kv, b.kv, rtol=1e-5, atol=1e-6)
            assert a.kv[:, :, :, 40:].eq(0).all()  # nothing written past the last position


def test_int8_linear_is_the_dequantised_product_for_every_width():
    """``decode_dtype="int8"``: the weight-only kernel equals the product with the dequantised
    weights up to bf16 activations, at widths the kernel takes (multiples of 16) and at widths it
    does not (it returns wrong values there, so those layers keep bf16 weights)."""
    g = torch.Generator().manual_seed(0)
    for d_in, d_out in ((256, 2048), (1024, 256), (80, 32), (24, 8), (7, 5)):
        w, b = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
        lin = Int8Linear(w, b)
        assert (lin.fallback is None) == (d_in % 16 == 0)
        if lin.fallback is None:
            deq = lin.q.float() * lin.scale.float()[:, None]
            assert (deq - w).abs().max() <= w.abs().amax(1).max() / 127  # half a step per channel, at most
        else:
            deq = w.bfloat16().float()
        for batch in (1, 3, 8):
            x = torch.randn(batch, d_in, generator=g)
            ref = x.bfloat16().float() @ deq.t() + b
            out = lin(x)
            assert out.dtype == torch.float32 and out.shape == (batch, d_out)
            torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
            half = lin(x.bfloat16())  # any input dtype: returned in it, bias included
            assert half.dtype == torch.bfloat16
            torch.testing.assert_close(half.float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())
        nobias = Int8Linear(w, None)(x)
        torch.testing.assert_close(nobias, ref - b, rtol=3e-2, atol=3e-2 * ref.abs().max().item())
