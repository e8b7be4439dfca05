"""Codebook patterns: layouts, inverses, mel lag, and delay against transformers' MusicGen."""

from __future__ import annotations

import pytest
import torch

from whispergpt.models import patterns as pt

PAD = 99


def _codes(B: int = 2, K: int = 3, T: int = 4, V: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, K, T), generator=g)


def test_delay_layout_matches_docstring_example():
    codes = torch.tensor([[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]])  # a..d, e..h, i..l
    P = PAD
    expected = torch.tensor([[[0, 1, 2, 3, P, P], [P, 4, 5, 6, 7, P], [P, P, 8, 9, 10, 11]]])
    assert torch.equal(pt.build_step_tokens(codes, "delay", PAD), expected)
    tokens, mel = pt.build_inputs(codes, torch.arange(4.0).view(1, 1, 4), "delay", PAD)
    assert torch.equal(tokens[0, :, 0], torch.full((3,), PAD))  # BOS
    assert torch.equal(tokens[:, :, 1:], expected[:, :, :-1])
    # mel frame p - 1 - lag at position p (lag K-1 = 2): positions 3, 4, 5 read frames 0, 1, 2
    assert mel[0, 0].tolist() == [0, 0, 0, 0, 1, 2]


def test_delay_matches_musicgen_build_delay_pattern_mask():
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    B, K, T, V = 2, 4, 7, 32
    cfg = MusicgenDecoderConfig(
        vocab_size=V,
        num_codebooks=K,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=V,
        bos_token_id=V,
    )
    torch.manual_seed(0)
    mg = MusicgenForCausalLM(cfg)
    codes = _codes(B, K, T, V, seed=1)
    # MusicGen's decoder input starts with a BOS column; codes[k, t] then sits at t + k + 1.
    prompt = torch.cat([torch.full((B, K, 1), V), codes], dim=-1).reshape(B * K, T + 1)
    _, pattern_mask = mg.build_delay_pattern_mask(prompt, pad_token_id=V, max_length=T + K)
    theirs = pattern_mask.reshape(B, K, T + K)[:, :, 1:]  # drop the BOS column -> (B, K, T + K - 1)
    ours = pt.build_step_tokens(codes, "delay", V)
    assert ours.shape == theirs.shape == (B, K, pt.num_steps("delay", K, T))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("pattern", pt.PATTERNS)
def test_step_tokens_roundtrip_and_step_of(pattern):
    K, T = 3, 5
    codes = _codes(K=K, T=T)
    steps = pt.build_step_tokens(codes, pattern, PAD)
    Kin = pt.input_codebooks(pattern, K)
    assert steps.shape == (2, Kin, pt.num_steps(pattern, K, T))
    assert torch.equal(pt.revert_step_tokens(steps, pattern, T), codes[:, :Kin])
    for k in range(Kin):
        for t in range(T):
            assert torch.equal(steps[:, k, pt.step_of(pattern, k, t)], codes[:, k, t])
    # every non-placed slot holds the pad id
    placed = sum(len(pt.predicted_at_step(pattern, K, p, T)) for p in range(steps.shape[-1]))
    assert placed == Kin * T
    assert int((steps == PAD).sum()) == 2 * (steps[0].numel() - placed)


@pytest.mark.parametrize("pattern", pt.PATTERNS)
def test_revert_logits_and_predicted_at_step_agree(pattern):
    K, T, V = 3, 5, 7
    Ks = pt.scored_codebooks(pattern, K)
    P = pt.num_steps(pattern, K, T)
    step_logits = torch.randn(2, Ks, P, V)
    frame_logits = pt.revert_logits(step_logits, pattern, T)
    assert frame_logits.shape == (2, Ks, T, V)
    seen = set()
    for p in range(P):
        for k, t in pt.predicted_at_step(pattern, K, p, T):
            assert pt.step_of(pattern, k, t) == p
            assert torch.equal(frame_logits[:, k, t], step_logits[:, k, p])
            seen.add((k, t))
    assert seen == {(k, t) for k in range(Ks) for t in range(T)}


def test_counts_and_lags():
    assert pt.PATTERNS == ("coarse", "parallel", "delay", "depth")
    assert [pt.input_codebooks(p, 8) for p in pt.PATTERNS] == [1, 8, 8, 8]
    assert [pt.mel_lag(p, 8) for p in pt.PATTERNS] == [0, 0, 7, 0]
    assert [pt.num_steps(p, 8, 10) for p in pt.PATTERNS] == [10, 10, 17, 10]
    assert pt.num_steps("delay", 8, 0) == 0
    assert pt.mel_frame_at_step("delay", 3, 0) == -3
    assert pt.predicted_at_step("delay", 3, 1) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="pattern must be one of"):
        pt.mel_lag("stagger", 4)
    with pytest.raises(ValueError, match="use pattern 'coarse'"):
        pt.input_codebooks("depth", 1)


@pytest.mark.parametrize("pattern", pt.PATTERNS)
def test_mel_read_at_a_step_comes_from_frames_completed_earlier(pattern):
    """Sampling invariant: a mel frame read at position p is computable from steps < p."""
    K, T = 4, 6
    Kin = pt.input_codebooks(pattern, K)
    for p in range(pt.num_steps(pattern, K, T)):
        f = pt.mel_frame_at_step(pattern, K, p)
        if f < 0:
            continue
        # all K codebooks of frame f (those the pattern generates) are placed before step p
        assert all(pt.step_of(pattern, k, f) < p for k in range(Kin))
        # and the lag is the smallest that guarantees it: frame f + 1 would not be complete
        assert max(pt.step_of(pattern, k, f + 1) for k in range(Kin)) >= p


def test_build_step_mel_places_frames_with_lag():
    mel = torch.arange(6.0).view(1, 1, 6) + 1
    out = pt.build_step_mel(mel, "coarse", 2, 6)
    assert out[0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    out = pt.build_step_mel(mel, "delay", 3, 8)
    assert out[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
