"""Sampling: token filters, determinism, greedy == full-forward argmax, the mel feedback loop's
fidelity, long-form sliding context. (Streaming decode: tests/codec/test_streaming.py; the CLI:
tests/inference/test_sample.py.)"""

import pytest
import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, log_mel
from whispergpt.inference.generate import filter_logits, generate, measure_decode_window_error, sample_tokens
from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models import patterns as pt

# Measured max |fed mel - log_mel(full decode)|: streaming decoder ~1e-6; 32-frame window <= 1.2e-5
# on random tiny and full-size codecs (benchmarks/README.md). The bound leaves room for BLAS
# differences and is still 100x below a one-frame misalignment or a 4-frame window.
MEL_ATOL = 1e-3


def tiny_model(pattern="coarse", fusion="concat", context=32, K=2, V=1024, seed=0) -> WhisperGPT:
    torch.manual_seed(seed)
    cfg = WhisperGPTConfig(
        num_codebooks=K, codebook_size=V, n_mels=80, pattern=pattern, fusion=fusion, d_model=32,
        n_layers=1, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def prompt_codes(codec, frames=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * HOP_LENGTH) / SAMPLE_RATE
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(frames * HOP_LENGTH, generator=g)
    return codec.encode(wave[None])


# --- filters ---------------------------------------------------------------------------------
def test_top_k_keeps_exactly_k_highest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 2.5, 0.0]])
    out = filter_logits(logits, top_k=3)
    assert torch.isfinite(out).squeeze(0).tolist() == [False, True, False, True, True, False]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert torch.equal(filter_logits(logits, top_k=0), logits)  # 0 disables
    assert torch.isfinite(filter_logits(logits, top_k=10)).all()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = probs.log()[None]
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.35) == [1]  # 0.4 >= 0.35
    assert kept(0.5) == [1, 3]  # 0.4 < 0.5 <= 0.7
    assert kept(0.75) == [1, 3, 4]  # 0.7 < 0.75 <= 0.85
    assert kept(0.9) == [1, 2, 3, 4]
    assert kept(0.99) == [0, 1, 2, 3, 4]
    assert kept(1e-6) == [1]  # at least one token
    assert kept(0.0) == [0, 1, 2, 3, 4]  # 0 disables
    # top-k then top-p on the renormalised remainder: {1, 3} -> 0.4/0.7, 0.3/0.7
    both = torch.isfinite(filter_logits(logits, top_k=2, top_p=0.5))[0].nonzero().flatten().tolist()
    assert both == [1]


def test_temperature_zero_is_argmax_and_leaves_generator_alone():
    logits = torch.randn(3, 2, 50, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(5)
    state = g.get_state().clone()
    assert torch.equal(sample_tokens(logits, 0.0, top_k=3, top_p=0.5, generator=g), logits.argmax(-1))
    assert torch.equal(g.get_state(), state)


def test_sampling_respects_filters():
    logits = torch.zeros(4000, 8)
    logits[:, 2] = 1.0
    logits[:, 5] = 0.9
    draws = sample_tokens(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {2, 5}
    full = sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert len(full.unique()) == 8


def test_top_k_draw_keeps_lead_dims_and_skips_zero_mass():
    """The top-k inverse-CDF draw: (B, K, V) -> (B, K); a kept token of zero probability (its
    logit far below the others) is never drawn; the others at their softmax frequencies."""
    logits = torch.tensor([-1e4, 1.0, -2.0, 0.0, -3.0, 0.5, -1e5]).expand(3000, 2, 7)
    draws = sample_tokens(logits, 1.0, top_k=6, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3000, 2)
    freq = torch.bincount(draws.flatten(), minlength=7).float() / draws.numel()
    inf = float("inf")
    want = torch.tensor([-inf, 1.0, -2.0, 0.0, -3.0, 0.5, -inf]).softmax(-1)
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)
    assert freq[0] == 0 and freq[6] == 0  # index 0 is kept by top-6 but has zero mass


# --- generation ------------------------------------------------------------------------------
def test_same_seed_same_audio(tiny_codec):
    model = tiny_model("delay")
    pc = prompt_codes(tiny_codec)
    run = lambda seed: generate(  # noqa: E731
        model, tiny_codec, frames=5, prompt_codes=pc, num_samples=2,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.codes, c.codes)
    assert torch.equal(a.codes[:, :, :6], pc.expand(2, -1, -1))  # prompt kept
    assert a.codes.shape == (2, 2, 11) and a.audio.shape == (2, 11 * HOP_LENGTH)
    assert a.fed_mel.shape == (2, 80, 11)


@pytest.mark.parametrize("pattern", ["coarse", "parallel", "delay"])
def test_greedy_equals_full_forward_argmax(tiny_codec, pattern):
    """Temperature 0: every generated token is the argmax of a training-style forward over the final
    codes and the fed mel, so the cached step inputs (tokens, lagged mel) equal training's."""
    model = tiny_model(pattern)
    pc = prompt_codes(tiny_codec, frames=4)
    r = generate(model, tiny_codec, frames=12, prompt_codes=pc, temperature=0.0)
    logits = model(r.codes, r.fed_mel).logits  # (1, Ks, T, V)
    pred = logits.argmax(-1)
    assert torch.equal(pred[:, :, 4:], r.codes[:, :, 4:])
    # and the mel matters: a perturbed mel stream changes some prediction of this model
    noisy = model(r.codes, r.fed_mel + 0.5 * torch.randn_like(r.fed_mel)).logits
    assert not torch.allclose(noisy, logits)


def test_token_only_model_needs_no_codec():
    model = tiny_model("parallel", fusion="none")
    r = generate(model, None, frames=8, decode_audio=False, temperature=0.0)
    assert r.codes.shape == (1, 2, 8) and r.audio is None and r.fed_mel is None
    assert torch.equal(model(r.codes).logits.argmax(-1), r.codes)


@pytest.mark.parametrize("pattern", ["delay", "coarse"])
@pytest.mark.parametrize("decoder", ["stream", pytest.param("window", marks=pytest.mark.slow)])
def test_feedback_mel_equals_mel_of_final_decode(tiny_codec, decoder, pattern):
    """The mel fed during sampling is log_mel(codec.decode(final codes)) within MEL_ATOL, also
    past the decode window (40 frames > 32), and the tolerance is tight enough to catch a
    one-frame misalignment or a too-short window. Coarse: the decode of codebook 0 alone (what
    prepare stores as mel_decoded_coarse; tests/data/test_streams.py ties the two)."""
    model = tiny_model(pattern, context=64)  # delay: lag 1; coarse: lag 0
    pc = prompt_codes(tiny_codec, frames=4)
    r = generate(model, tiny_codec, frames=36, prompt_codes=pc, decoder=decoder,
                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert r.codes.shape[1] == (1 if pattern == "coarse" else 2)
    ref = log_mel(tiny_codec.decode(r.codes[:, :1] if pattern == "coarse" else r.codes))
    torch.testing.assert_close(r.fed_mel, ref, atol=MEL_ATOL, rtol=0)
    torch.testing.assert_close(r.audio, tiny_codec.decode(r.codes))
    # the tolerance is meaningful: a one-frame shift or a 4-frame window is far outside it
    assert (r.fed_mel[..., 1:] - ref[..., :-1]).abs().max() > 100 * MEL_ATOL
    err = measure_decode_window_error(tiny_codec, r.codes, decode_window=4)
    assert err["mel_max_abs"] > 10 * MEL_ATOL
    # and the fed stream never used audio it should not have: frame f is causal in codes <= f
    assert r.stream_audio.shape == r.audio.shape


def test_truth_prompt_mel_is_fed_for_the_prompt(tiny_codec):
    model = tiny_model("coarse")
    pc = prompt_codes(tiny_codec, frames=5)
    truth = torch.rand(1, 80, 5)
    r = generate(model, tiny_codec, frames=4, prompt_codes=pc, prompt_mel=truth, temperature=0.0)
    assert torch.equal(r.fed_mel[:, :, :5], truth)
    d = generate(model, tiny_codec, frames=4, prompt_codes=pc, temperature=0.0)
    torch.testing.assert_close(d.fed_mel[:, :, :5], log_mel(tiny_codec.decode(pc[:, :1])))


def test_long_form_slides_the_context(tiny_codec):
    """Beyond the context the cache is rebuilt from the last 3/4: greedy tokens equal the argmax of a
    training-style forward over exactly that crop (rule replicated here)."""
    C, keep, Tp, N = 8, 6, 3, 17
    model = tiny_model("coarse", context=C)
    pc = prompt_codes(tiny_codec, frames=Tp)
    r = generate(model, tiny_codec, frames=N, prompt_codes=pc, temperature=0.0)
    assert r.codes.shape[-1] == Tp + N and r.reprefills > 0
    s0, starts = 0, {}
    for s in range(Tp, Tp + N - 1):
        if s + 1 - s0 >= C:
            s0 = s + 2 - keep
        starts[s + 1] = s0
    assert r.reprefills == len(set(starts.values())) - 1
    for s, a in starts.items():
        crop_codes, crop_mel = r.codes[:, :, a : s + 1], r.fed_mel[:, :, a : s + 1]
        assert int(model(crop_codes, crop_mel).logits[0, 0, -1].argmax()) == int(r.codes[0, 0, s])
    torch.testing.assert_close(r.fed_mel, log_mel(tiny_codec.decode(r.codes)), atol=MEL_ATOL, rtol=0)


def test_generate_rejects_bad_arguments(tiny_codec):
    model = tiny_model("coarse", context=16)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tiny_codec, frames=2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tiny_codec, frames=2, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, tiny_codec, frames=2, top_k=-3)
    with pytest.raises(ValueError, match="frames"):
        generate(model, tiny_codec, frames=0)
    with pytest.raises(ValueError, match="context"):
        generate(model, tiny_codec, frames=2, prompt_codes=torch.zeros(1, 2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="codec"):
        generate(model, None, frames=2)


def test_step_helpers_agree_with_lag():
    # the sampler feeds frame s - lag at position s + 1: the pattern module's definition
    for pattern in pt.PATTERNS:
        lag = pt.mel_lag(pattern, 3)
        for s in range(6):
            assert pt.mel_frame_at_step(pattern, 3, s + 1) == s - lag


@pytest.mark.parametrize("pattern", ["coarse", "delay"])
@pytest.mark.parametrize("fusion", ["concat", "interleave"])
def test_bf16_model_samples_through_the_fast_path(tiny_codec, pattern, fusion):
    # bf16 weights with fp32 RoPE tables once promoted q/k to fp32 and SDPA raised on the dtype mismatch
    model = tiny_model(pattern, fusion).to(torch.bfloat16)
    pc = prompt_codes(tiny_codec, frames=4)
    r = generate(model, tiny_codec, frames=20, prompt_codes=pc, temperature=0.0, decode_audio=False)
    assert model._decode_memo is not None  # the CPU inference fast path ran
    assert r.codes.shape[-1] == 24 and r.codes.dtype == torch.long
    assert int(r.codes.min()) >= 0 and int(r.codes.max()) < model.config.codebook_size
    assert model.tok_emb.weight.dtype == torch.bfloat16  # not silently upcast
