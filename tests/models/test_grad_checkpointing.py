"""Gradient checkpointing (train.grad_checkpointing): the same loss and gradients, fewer bytes of
activations kept for the backward pass (measured with saved-tensor hooks)."""

import pytest
import torch

from whispergpt.models import FineConfig, FineModel, WhisperGPT, WhisperGPTConfig
from whispergpt.models.blocks import set_grad_checkpointing


def saved_bytes_and_grads(model, *inputs):
    """(bytes of tensors autograd keeps for backward, loss, {name: grad})."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
        logits = out.logits if hasattr(out, "logits") else out
        loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    return (
        sum(seen.values()),
        loss.detach(),
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_same_loss_and_gradients_with_less_saved_activation(pattern):
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=64, n_mels=16, pattern=pattern, d_model=64, n_layers=3,
                           n_heads=4, context=48, mel_dim=16, mel_layers=2, mel_heads=2, dropout=0.1)  # fmt: skip
    model = WhisperGPT(cfg).train()
    codes, mel = torch.randint(0, 64, (2, 2, 48)), torch.randn(2, 16, 48)
    plain_bytes, plain_loss, plain = saved_bytes_and_grads(model, codes, mel)
    assert set_grad_checkpointing(model) >= 2  # decoder and mel branch (and depth) stacks
    ckpt_bytes, ckpt_loss, ckpt = saved_bytes_and_grads(model, codes, mel)
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=0, atol=0, msg=k)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)
    with torch.no_grad():  # inference and the KV-cache path are unaffected
        assert torch.equal(model.eval()(codes, mel).logits, model(codes, mel).logits)


def test_fine_model_too():
    torch.manual_seed(0)
    model = FineModel(
        FineConfig(num_codebooks=3, codebook_size=32, d_model=32, n_layers=2, n_heads=2, context=16)
    )
    codes = torch.randint(0, 32, (2, 3, 16))
    b0, l0, g0 = saved_bytes_and_grads(model.train(), codes)
    set_grad_checkpointing(model)
    b1, l1, g1 = saved_bytes_and_grads(model, codes)
    assert torch.equal(l0, l1) and all(torch.equal(g0[k], g1[k]) for k in g0) and b1 < b0
