"""EnCodecMAE: span masking, the encoder's view, the loss weights, targets, encode, save/load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from whispergpt.models import EnCodecMAE, EnCodecMAEConfig, WhisperGPT, WhisperGPTConfig, load_pretrained
from whispergpt.models.encodecmae import masked_count, span_mask, split_frames
from whispergpt.models.registry import WrongModelType

C, K, V, T = 12, 3, 32, 40


def make(seed: int = 0, **kw) -> EnCodecMAE:
    base = dict(in_dim=C, num_codebooks=K, codebook_size=V, n_layers=2, d_model=32, n_heads=2,
                decoder_layers=1, decoder_d_model=16, decoder_heads=2, context=T, span=5)  # fmt: skip
    torch.manual_seed(seed)
    return EnCodecMAE(EnCodecMAEConfig(**{**base, **kw}))


def batch(b: int = 3, t: int = T, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, t, generator=g)
    codes = torch.randint(0, V, (b, K, t), generator=g)
    semantic = torch.randint(0, 7, (b, t), generator=g)
    return x, codes, semantic


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# --- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames,ratio,span", [(100, 0.5, 5), (64, 0.3, 8), (7, 0.8, 15), (2, 0.5, 3)])
def test_span_mask_count_and_spans(frames, ratio, span):
    mask = span_mask(64, frames, ratio, span, gen(0))
    n = masked_count(frames, ratio)
    assert mask.shape == (64, frames) and mask.dtype == torch.bool
    assert (mask.sum(1) == n).all() and 1 <= n <= frames - 1
    if n % span == 0:  # equal spans that never overlap: every run is a whole number of spans
        assert all(r % span == 0 for row in mask for r in runs(row))
    assert len({tuple(r.tolist()) for r in mask}) > 1  # rows differ


def test_span_mask_is_a_function_of_the_generator():
    a, b = span_mask(8, 75, 0.5, 15, gen(3)), span_mask(8, 75, 0.5, 15, gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, span_mask(8, 75, 0.5, 15, gen(4)))
    torch.manual_seed(5)
    c = span_mask(8, 75, 0.5, 15)  # None: the global RNG
    torch.manual_seed(5)
    assert torch.equal(c, span_mask(8, 75, 0.5, 15))
    assert masked_count(300, 0.5) == 150 and masked_count(10, 0.01) == 1 and masked_count(10, 0.99) == 9
    with pytest.raises(ValueError, match="at least 2 frames"):
        masked_count(1, 0.5)


def test_split_frames_in_time_order():
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    vis, msk = split_frames(mask)
    assert vis.tolist() == [[1, 2], [0, 3]] and msk.tolist() == [[0, 3], [1, 2]]
    with pytest.raises(ValueError, match="same number"):
        split_frames(torch.tensor([[True, False], [True, True]]))


def test_encoder_never_sees_masked_frames():
    model = make().eval()
    x, codes, _ = batch()
    mask, _ = model.predict(x, gen(7))
    seen = []
    hook = model.encoder.ln_f.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    ref = model(x, codes, generator=gen(7))
    poked = x.clone()
    poked.transpose(1, 2)[mask] = 1e3 * torch.randn_like(poked.transpose(1, 2)[mask])  # masked frames only
    out = model(poked, codes, generator=gen(7))
    hook.remove()
    n_visible = T - masked_count(T, model.config.mask_ratio)
    assert seen[0].shape == (3, n_visible, 32)  # the encoder ran over the visible frames alone
    assert torch.equal(seen[0], seen[1])
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    # and the test can fail: a visible frame changes the encoder's output
    visible = x.clone()
    visible.transpose(1, 2)[~mask] += 1.0
    assert not torch.equal(model(visible, codes, generator=gen(7))[0], ref[0])


def test_masks_train_from_global_rng_eval_fixed():
    model = make()
    x, codes, _ = batch()
    model.train()
    torch.manual_seed(11)
    a = model(x, codes)[0]
    torch.manual_seed(11)
    assert torch.equal(a, model(x, codes)[0])  # training: the global RNG, restored by the trainer
    torch.manual_seed(12)
    assert not torch.equal(a, model(x, codes)[0])
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        e1 = model(x, codes)[1]
        torch.manual_seed(2)
        before = torch.random.get_rng_state()
        e2 = model(x, codes)[1]
        assert torch.equal(torch.random.get_rng_state(), before)  # eval draws nothing from it
    assert torch.equal(e1, e2)  # eval: the same masks every call (reproducible validation NLL)


# --- loss ---------------------------------------------------------------------------------------


def _ce(logits: torch.Tensor, targets: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (B, S, T, V)`` against ``targets (B, S, T)`` at ``frames (B, T)``."""
    lg = logits.permute(0, 2, 1, 3)[frames]  # (N, S, V)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), targets.permute(0, 2, 1)[frames].reshape(-1))


def test_masked_only_weight_is_cross_entropy_over_masked_frames():
    model = make(masked_weight=1.0, visible_weight=0.0).eval()
    x, codes, _ = batch()
    mask, (logits,) = model.predict(x, gen(2))
    objective, nll_sum, count = model(x, codes, generator=gen(2))
    torch.testing.assert_close(objective.float(), _ce(logits, codes, mask))
    n = int(mask.sum())
    assert count.tolist() == [n] * K
    for k in range(K):  # reported NLL: per codebook, masked frames only
        ref = F.cross_entropy(logits[:, k][mask], codes[:, k][mask], reduction="sum")
        torch.testing.assert_close(nll_sum[k].float(), ref)
    # the other weights: visible frames only, and the mix
    vis = make(masked_weight=0.0, visible_weight=1.0).eval()
    torch.testing.assert_close(vis(x, codes, generator=gen(2))[0].float(), _ce(logits, codes, ~mask))
    mix = make(masked_weight=0.9, visible_weight=0.1).eval()
    want = 0.9 * _ce(logits, codes, mask) + 0.1 * _ce(logits, codes, ~mask)
    torch.testing.assert_close(mix(x, codes, generator=gen(2))[0].float(), want)


def test_codebook_weights_and_gradients():
    model = make(masked_weight=1.0, visible_weight=0.0, codebook_weights=[0.0, 2.0, 0.0]).eval()
    x, codes, _ = batch()
    mask, (logits,) = model.predict(x, gen(2))
    objective, _, _ = model(x, codes, generator=gen(2))
    torch.testing.assert_close(objective.float(), 2.0 * _ce(logits[:, 1:2], codes[:, 1:2], mask))
    objective.backward()
    assert model.mask_token.grad is not None and model.inp.weight.grad.abs().sum() > 0
    assert model.code_head.weight.grad.abs().sum() > 0


def test_recon_weight_adds_the_masked_frames_mse_only():
    x, codes, _ = batch()
    base = make(masked_weight=0.9, visible_weight=0.1).eval()
    aux = make(masked_weight=0.9, visible_weight=0.1, recon_weight=0.5).eval()
    assert base.recon_head is None
    aux.load_state_dict({**base.state_dict(), **{k: v for k, v in aux.state_dict().items() if "recon" in k}})
    mask, _ = aux.predict(x, gen(2))
    (obj0, nll0, n0), (obj1, nll1, n1) = base(x, codes, generator=gen(2)), aux(x, codes, generator=gen(2))
    torch.testing.assert_close(nll1, nll0)  # the reported NLL is the codes' alone
    assert n1.tolist() == n0.tolist()
    # reference: the decoder output at the masked frames, through the head, vs the standardised frames
    visible, masked = split_frames(mask)
    h = aux._hidden(x, visible)
    pred = torch.stack([aux.recon_head(h[b, masked[b]]) for b in range(x.shape[0])])  # (B, Nm, C)
    tgt = torch.stack([x[b, :, masked[b]].T for b in range(x.shape[0])])
    tgt = (tgt - tgt.mean(-1, keepdim=True)) / (tgt.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close((obj1 - obj0).float(), 0.5 * F.mse_loss(pred, tgt))
    obj1.backward()
    assert aux.recon_head.weight.grad.abs().sum() > 0 and aux.inp.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="recon_weight"):
        make(recon_weight=-1.0)


def test_kmeans_and_both_targets():
    x, codes, semantic = batch()
    only = make(targets="kmeans", kmeans_clusters=7, masked_weight=1.0, visible_weight=0.0).eval()
    assert only.code_head is None and only.num_streams == 1
    mask, (logits,) = only.predict(x, gen(4))
    assert logits.shape == (3, 1, T, 7)
    objective, nll_sum, count = only(x, codes, semantic, generator=gen(4))
    torch.testing.assert_close(objective.float(), _ce(logits, semantic[:, None], mask))
    assert count.tolist() == [int(mask.sum())]
    with pytest.raises(ValueError, match="semantic tokens"):
        only(x, codes)

    both = make(targets="both", kmeans_clusters=7, kmeans_weight=0.5, masked_weight=1.0, visible_weight=0.0)
    both.eval()
    mask, (code_logits, km_logits) = both.predict(x, gen(4))
    objective, nll_sum, count = both(x, codes, semantic[:, None], generator=gen(4))
    assert nll_sum.shape == (K + 1,) and count.tolist() == [int(mask.sum())] * (K + 1)
    want = _ce(code_logits, codes, mask) + 0.5 * _ce(km_logits, semantic[:, None], mask)
    torch.testing.assert_close(objective.float(), want)
    with pytest.raises(ValueError, match="codes of shape"):
        both(x, None, semantic)


def test_bad_inputs_and_configs():
    model = make()
    x, codes, _ = batch()
    with pytest.raises(ValueError, match=r"x must be \(B, C=12, T\)"):
        model(x[:, :5], codes)
    with pytest.raises(ValueError, match="codes of shape"):
        model(x, codes[:, :2])
    for bad, message in [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(n_heads=5), "divisible"),
        (dict(codebook_weights=[1.0]), "one weight per codebook"),
        (dict(masked_weight=0.0, visible_weight=0.0), "not both 0"),
        (dict(input="wave"), "input must be one of"),
        (dict(context=1), "context"),
    ]:
        with pytest.raises(ValueError, match=message):
            make(**bad)
    with pytest.raises(ValueError, match="kmeans_clusters"):
        make(targets="both")
    with pytest.raises(ValueError, match="in_dim"):
        EnCodecMAE(EnCodecMAEConfig(num_codebooks=2, codebook_size=8))


# --- encode, save / load ---------------------------------------------------------------------------


def test_encode_layers_shapes_and_range():
    model = make().eval()
    x = torch.randn(2, C, 3 * T)  # longer than the training context: RoPE has no table limit
    with torch.no_grad():
        last = model.encode(x)
        assert last.shape == (2, 3 * T, 32)
        assert torch.equal(model.encode(x, layer=2), last)
        first = model.encode(x, layer=1)
    assert first.shape == (2, 3 * T, 32) and not torch.allclose(first, last)
    assert model.num_layers == 2
    for bad in (0, 3, -1, True):
        with pytest.raises(ValueError, match=r"layer must be in 1\.\.2"):
            model.encode(x, layer=bad)
    # no masking and bidirectional: the first frame's output depends on the last frame
    y = x.clone()
    y[..., -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model.encode(y)[:, 0], last[:, 0])


def test_save_load_roundtrip_and_dispatch(tmp_path):
    model = make(targets="both", kmeans_clusters=7).eval()
    model.save_pretrained(tmp_path / "mae")
    raw = json.loads((tmp_path / "mae" / "config.json").read_text())
    assert raw["model_type"] == "encodecmae" and raw["in_dim"] == C and "pos_emb" not in raw
    for loaded in (EnCodecMAE.from_pretrained(tmp_path / "mae"), load_pretrained(tmp_path / "mae")):
        assert isinstance(loaded, EnCodecMAE) and loaded.config == model.config
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        x, codes, semantic = batch()
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval().encode(x), model.encode(x), rtol=0, atol=0)
    gpt = WhisperGPT(
        WhisperGPTConfig(num_codebooks=2, d_model=32, n_layers=1, n_heads=2, mel_dim=8, mel_heads=1)
    )
    gpt.save_pretrained(tmp_path / "gpt")
    with pytest.raises(WrongModelType, match="holds a 'whispergpt' model, expected a 'encodecmae'"):
        EnCodecMAE.from_pretrained(tmp_path / "gpt")
    with pytest.raises(WrongModelType, match="holds a 'encodecmae' model"):
        WhisperGPT.from_pretrained(tmp_path / "mae")
    with pytest.raises(OSError, match="model.safetensors is missing"):
        (tmp_path / "mae" / "model.safetensors").unlink()
        EnCodecMAE.from_pretrained(tmp_path / "mae")
