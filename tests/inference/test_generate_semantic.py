"""``generate(..., semantic=...)`` for acoustic models conditioned on semantic tokens
(``model.semantic``): the logits each cached step samples from equal a training-style forward over
the final codes, fed mel and semantic tokens; long-form re-prefills carry the prefix of their
window; bad arguments are ValueErrors."""

from __future__ import annotations

import pytest
import torch

import whispergpt.inference.generate as gen
from whispergpt.inference.generate import generate
from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models import patterns as pt
from whispergpt.models.semantic import aligned_tokens, prefix_tokens

VS = 5  # semantic vocab


def model_of(semantic, pattern="delay", fusion="concat", context=32, lookahead=1) -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=80, pattern=pattern, fusion=fusion, d_model=32,
        n_layers=1, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2, depth_dim=16,
        depth_heads=2, depth_layers=1, semantic=semantic, semantic_vocab=None if semantic == "none" else VS,
        semantic_lookahead=lookahead,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def semantic_of(T: int, seed: int = 0) -> torch.Tensor:
    """(1, T): 25 Hz tokens repeated 3 times, as prepare --semantic stores them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VS, (1, -(-T // 3)), generator=g).repeat_interleave(3, dim=1)[:, :T]


def prompt(codec, frames=4):
    g = torch.Generator().manual_seed(0)
    return codec.encode(0.2 * torch.randn(1, frames * 320, generator=g))


@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
@pytest.mark.parametrize("pattern", ["coarse", "delay", "depth"])
@pytest.mark.parametrize("fusion", ["concat", "interleave"])
def test_sampled_logits_equal_the_full_forward(tiny_codec, monkeypatch, semantic, pattern, fusion):
    model = model_of(semantic, pattern, fusion)
    Tp, N = 4, 14
    sem = semantic_of(Tp + N)
    seen = []

    def recording(logits, *args, **kw):
        if logits.dim() == 3:  # a temporal step's (B, Ks, V); depth's per-codebook draws are 2-D
            seen.append(logits.clone())
        return sample_tokens(logits, *args, **kw)

    sample_tokens = gen.sample_tokens
    monkeypatch.setattr(gen, "sample_tokens", recording)
    r = generate(model, tiny_codec, frames=N, prompt_codes=prompt(tiny_codec, Tp), semantic=sem, num_samples=2,
                 decode_audio=False, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert r.reprefills == 0 and len(seen) == r.codes.shape[-1] + (1 if pattern == "delay" else 0) - Tp
    full = model(r.codes, r.fed_mel, sem.expand(2, -1)).logits  # (B, Ks, T, V)
    T = Tp + N
    for i, got in enumerate(seen):
        s = Tp + i  # the step these logits predict
        for k in range(got.shape[1]):
            f = s - k if pattern == "delay" else s
            if 0 <= f < T:
                torch.testing.assert_close(got[:, k], full[:, k, f], atol=1e-4, rtol=0)
    # the semantic stream steers the samples: same seed, other tokens, other continuation
    n = len(seen)
    other = (sem + 1) % VS
    generate(model, tiny_codec, frames=N, prompt_codes=prompt(tiny_codec, Tp), semantic=other, num_samples=2,
             decode_audio=False, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert not torch.allclose(seen[n], seen[0], atol=1e-4)


@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
def test_long_form_reprefills_with_the_window_semantic(tiny_codec, monkeypatch, semantic):
    """Past the context the cache restarts at frame s0 with the prefix of frames [s0, s0 + C) (prefix),
    or the same per-step tokens (aligned): each step's logits equal a training-style forward over
    that crop (the re-prefill rule replicated, as in tests/inference/test_generate.py)."""
    C, keep, Tp, N = 9, 7, 3, 20  # keep = round(0.75 * 9)
    model = model_of(semantic, "coarse", "concat", context=C)
    T = Tp + N
    sem = semantic_of(T, seed=2)
    seen = []

    def recording(logits, *args, **kw):
        seen.append(logits.clone())  # (1, 1, V) of step Tp + len(seen)
        return sample_tokens(logits, *args, **kw)

    sample_tokens = gen.sample_tokens
    monkeypatch.setattr(gen, "sample_tokens", recording)
    r = generate(model, tiny_codec, frames=N, prompt_codes=prompt(tiny_codec, Tp), semantic=sem,
                 decode_audio=False, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.reprefills > 0
    s0, starts = 0, {}
    for s in range(Tp, T - 1):
        if s + 1 - s0 >= C:
            s0 = s + 2 - keep
        starts[s + 1] = s0
    assert r.reprefills == len(set(starts.values())) - 1
    for s, a in starts.items():
        e = min(a + C, T)  # the crop a training window starting at frame a holds
        tokens, step_mel = pt.build_inputs(r.codes[:, :, a:e], r.fed_mel[:, :, a:e], "coarse", 1024)
        # prefix: the crop's own; aligned: the global tokens (sampling reads past the crop's end)
        sem_in = (
            prefix_tokens(sem[:, a:e], 3) if semantic == "prefix" else aligned_tokens(sem, 3, 1, a, e - a)
        )
        crop = model.forward_steps(tokens, step_mel, None, sem_in)  # (1, 1, e - a, V)
        torch.testing.assert_close(crop[0, 0, s - a], seen[s - Tp][0, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
def test_static_step_gives_the_tokens_of_the_default_path(tiny_codec, semantic):
    """generate(static=True) (the step sample --compile traces) with re-prefills whose prefix shrinks
    at the end of the stream: the same tokens as the default step."""
    model = model_of(semantic, "delay", "interleave", context=10)
    N = 25
    sem = semantic_of(N, seed=3)
    out = {
        static: generate(
            model,
            tiny_codec,
            frames=N,
            semantic=sem,
            num_samples=2,
            decode_audio=False,
            static=static,
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        for static in (False, True)
    }
    assert out[True].reprefills == out[False].reprefills >= 2
    assert torch.equal(out[True].codes, out[False].codes)


def test_bad_semantic_arguments(tiny_codec):
    model = model_of("aligned", "coarse")
    with pytest.raises(ValueError, match="conditioned on semantic tokens"):
        generate(model, tiny_codec, frames=4)
    with pytest.raises(ValueError, match="cover the prompt and the continuation, 4 codec frames, got 3"):
        generate(model, tiny_codec, frames=4, semantic=semantic_of(3))
    with pytest.raises(ValueError, match=r"semantic must be \(1 or 2, 4\)"):
        generate(model, tiny_codec, frames=4, num_samples=2, semantic=semantic_of(4).expand(3, -1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\]"):
        generate(model, tiny_codec, frames=4, semantic=semantic_of(4) + VS)
    with pytest.raises(ValueError, match="integer"):
        generate(model, tiny_codec, frames=4, semantic=semantic_of(4).float())
    with pytest.raises(ValueError, match="semantic=none"):
        generate(model_of("none", "coarse"), tiny_codec, frames=4, semantic=semantic_of(4))


@pytest.mark.slow
@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
def test_compiled_static_step_matches_the_default_path(tiny_codec, tmp_path, monkeypatch, semantic):
    """``compile=True`` (the traced static step) over re-prefills: the tokens of the default step."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = model_of(semantic, "delay", "concat", context=12)
    sem = semantic_of(30, seed=5)
    kw = dict(frames=30, num_samples=2, semantic=sem, decode_audio=False)
    ref = generate(model, tiny_codec, generator=torch.Generator().manual_seed(6), **kw)
    got = generate(model, tiny_codec, compile=True, generator=torch.Generator().manual_seed(6), **kw)
    assert got.reprefills == ref.reprefills >= 2 and torch.equal(got.codes, ref.codes)
