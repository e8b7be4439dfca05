"""model.token_input: summed vs concatenated codebook embeddings of a pattern step."""

from __future__ import annotations

import pytest
import torch
from test_model import K, V, inputs, small_config, small_model  # the same small model as the model tests

from whispergpt import WhisperGPT
from whispergpt.models import patterns as pt
from whispergpt.models.token_input import embed_tokens


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(token_input="mean"), "token_input must be one of"),
        (dict(token_input="concat", fusion="none"), "divisible"),  # 32 dims over K=3 codebooks
        (dict(token_input="concat", fusion="concat", tie_weights=True), "full-width token tables"),
    ],
)
def test_config_checks_token_input(kw, match):
    with pytest.raises(ValueError, match=match):
        small_config(**kw)


def test_concat_gives_each_codebook_its_own_slice():
    # concat fusion: tokens get d_model - mel_dim = 24 = 3 x 8 dims
    model = small_model("delay", "concat", token_input="concat")
    E = 24 // K
    assert tuple(model.tok_emb.weight.shape) == (K * (V + 1), E)
    ids = torch.randint(0, V, (2, K, 5)) + model.tok_offsets[None, :, None]
    x = embed_tokens(model.tok_emb, ids, "concat")  # (B, P, 24)
    table = model.tok_emb.weight
    for k in range(K):
        torch.testing.assert_close(x[..., k * E : (k + 1) * E], table[ids[:, k]])
    # one step (B, Kin) gives the same rows as position 0 of the sequence
    torch.testing.assert_close(embed_tokens(model.tok_emb, ids[:, :, 0], "concat"), x[:, 0])


def test_concat_steps_equal_full_forward_and_stay_causal():
    model = small_model("delay", "concat", token_input="concat")
    codes, mel = inputs(T=6)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", model.pad_id)
    full = model.forward_steps(tokens, step_mel)
    P = tokens.shape[-1]
    cache = model.new_cache(2, P)
    with torch.inference_mode():
        stepped = [
            model.step(
                tokens[:, :, p],
                step_mel[:, :, p] if pt.mel_frame_at_step("delay", K, p) >= 0 else None,
                cache,
            )
            for p in range(P)
        ]
    torch.testing.assert_close(torch.stack(stepped, dim=2), full)
    # a token of frame 3 changes no logit of frames before it was placed
    changed = codes.clone()
    changed[:, 1, 3] = (changed[:, 1, 3] + 1) % V
    a, b = model(codes, mel).logits, model(changed, mel).logits
    torch.testing.assert_close(a[:, 0, :5], b[:, 0, :5])  # codebook 0 of frame 4 sees cb 1 of frame 3
    assert not torch.allclose(a[:, 0, 5], b[:, 0, 5])


def test_concat_equals_sum_with_one_input_codebook():
    """coarse reads one codebook: both modes build the same model."""
    a = small_model("coarse", "none", token_input="sum")
    b = WhisperGPT(small_config("coarse", "none", token_input="concat")).eval()
    b.load_state_dict(a.state_dict())
    codes, mel = inputs()
    torch.testing.assert_close(a(codes).logits, b(codes).logits)


def test_concat_roundtrip(tmp_path):
    model = small_model("delay", "concat", token_input="concat")
    model.save_pretrained(tmp_path / "m")
    loaded = WhisperGPT.from_pretrained(tmp_path / "m")
    assert loaded.config.token_input == "concat"
    codes, mel = inputs()
    assert torch.equal(loaded.eval()(codes, mel).logits, model(codes, mel).logits)
