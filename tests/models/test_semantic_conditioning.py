"""Semantic conditioning of the acoustic decoder (``model.semantic``, models/semantic.py).

The causality rule, both halves: semantic tokens are generated before the acoustic stage and MAY
carry the future (the aligned lookahead and the prefix reach frames past the predicted one), while
codec tokens and mel still MAY NOT (perturbing them from a frame on leaves every earlier logit
unchanged). Plus: the cached step equals the full forward, save/load keeps the keys, bad input.
"""

from __future__ import annotations

import pytest
import torch

from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models import patterns as pt
from whispergpt.models.semantic import aligned_tokens, group_size, prefix_tokens

K, V, M, VS = 3, 16, 8, 7  # codebooks, codebook size, mels, semantic vocab
ATOL = 1e-5


def make(semantic="prefix", pattern="delay", fusion="concat", lookahead=1, context=16, **kw) -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=K, codebook_size=V, n_mels=M, pattern=pattern, fusion=fusion, d_model=32, n_layers=2,
        n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=1, depth_dim=16, depth_heads=2,
        depth_layers=1, semantic=semantic, semantic_vocab=None if semantic == "none" else VS,
        semantic_lookahead=lookahead, **kw,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def inputs(B=2, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, V, (B, K, T), generator=g)
    mel = torch.randn(B, M, T, generator=g)
    sem = torch.randint(0, VS, (B, (T + 2) // 3), generator=g).repeat_interleave(3, dim=1)[:, :T]  # 25 Hz
    return codes, mel, sem


def logits(model, codes, mel, sem):
    with torch.no_grad():
        return model(codes, mel, sem).logits  # (B, Ks, T, V)


# -- config ---------------------------------------------------------------------------------------
def test_config_keys_are_checked():
    with pytest.raises(ValueError, match="semantic must be one of"):
        WhisperGPTConfig(semantic="suffix")
    with pytest.raises(ValueError, match="semantic_vocab >= 1"):
        WhisperGPTConfig(semantic="prefix")  # 0/None is only for a run (the dataset's manifest fills it)
    with pytest.raises(ValueError, match="semantic_rate must divide 75"):
        WhisperGPTConfig(semantic="aligned", semantic_vocab=4, semantic_rate=7)
    with pytest.raises(ValueError, match="semantic_lookahead"):
        WhisperGPTConfig(semantic="aligned", semantic_vocab=4, semantic_lookahead=-1)
    WhisperGPTConfig(semantic="none", semantic_rate=7)  # ignored without semantic conditioning
    c = WhisperGPTConfig(semantic="prefix", semantic_vocab=4, semantic_rate=15, context=100)
    assert c.semantic_group == 5 == group_size(15) and c.max_prefix == 20
    assert WhisperGPTConfig(semantic="aligned", semantic_vocab=4).max_prefix == 0
    none = WhisperGPT(WhisperGPTConfig(d_model=32, n_layers=1, n_heads=2, mel_dim=8, mel_heads=1))
    assert none.semantic is None  # no parameters without conditioning


def test_step_space_helpers():
    sem = torch.arange(10)[None]  # one token per frame (distinct, to see which one is read)
    assert prefix_tokens(sem, 3).tolist() == [[0, 3, 6, 9]]
    # position p reads frame min(p + lookahead * g, T - 1)
    assert aligned_tokens(sem, 3, 1, 0, 12).tolist() == [[3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9]]
    assert aligned_tokens(sem, 3, 0, 4, 3).tolist() == [[4, 5, 6]]


# -- causality -------------------------------------------------------------------------------------
@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
@pytest.mark.parametrize("pattern", ["delay", "depth", "parallel"])
@pytest.mark.parametrize("fusion", ["concat", "interleave"])
def test_future_codes_and_mel_do_not_leak(semantic, pattern, fusion):
    model = make(semantic, pattern, fusion)
    codes, mel, sem = inputs()
    t0 = 6
    ref = logits(model, codes, mel, sem)
    codes2, mel2 = codes.clone(), mel.clone()
    codes2[:, :, t0:] = (codes2[:, :, t0:] + 5) % V
    mel2[:, :, t0:] += 3.0
    out = logits(model, codes2, mel2, sem)
    Ks = ref.shape[1]
    # logits[:, k, t] comes from step t + k (delay) / t: it reads codes placed before that step only,
    # and the mel frames before it minus the lag; depth also reads codebooks < k of frame t itself
    for k in range(Ks):
        last = {"delay": t0 - k, "parallel": t0, "depth": t0 if k == 0 else t0 - 1}[pattern]
        assert torch.allclose(out[:, k, : last + 1], ref[:, k, : last + 1], atol=ATOL), (k, last)
    assert not torch.allclose(out[:, 0, t0 + 1 :], ref[:, 0, t0 + 1 :], atol=1e-3)  # the perturbation is seen


@pytest.mark.parametrize("pattern", ["delay", "depth"])
@pytest.mark.parametrize("fusion", ["sum", "none"])
def test_aligned_lookahead_reads_the_future_semantic_frame(pattern, fusion):
    """Semantic frame j (codec frames 3j..3j+2) changed: the step predicting frame 3(j - 1) reads it
    through the lookahead of 1 (its own semantic frame is j - 1), every earlier step does not."""
    codes, mel, sem = inputs(T=15)
    j = 3
    sem2 = sem.clone()
    sem2[:, 3 * j : 3 * j + 3] = (sem2[:, 3 * j : 3 * j + 3] + 1) % VS
    model = make("aligned", pattern, fusion, lookahead=1)
    ref, out = logits(model, codes, mel, sem), logits(model, codes, mel, sem2)
    f = 3 * (j - 1)  # the first frame that reads semantic frame j
    assert torch.allclose(out[:, 0, :f], ref[:, 0, :f], atol=ATOL)
    assert (out[:, 0, f] - ref[:, 0, f]).abs().max() > 1e-3  # the lookahead is real
    # without lookahead the same step reads its own semantic frame: it does not see frame j
    model0 = make("aligned", pattern, fusion, lookahead=0)
    ref0, out0 = logits(model0, codes, mel, sem), logits(model0, codes, mel, sem2)
    assert torch.allclose(out0[:, 0, : 3 * j], ref0[:, 0, : 3 * j], atol=ATOL)
    assert (out0[:, 0, 3 * j] - ref0[:, 0, 3 * j]).abs().max() > 1e-3


def test_prefix_sees_the_whole_window_of_semantic_tokens():
    codes, mel, sem = inputs()
    model = make("prefix", "delay", "concat")
    sem2 = sem.clone()
    sem2[:, 9:] = (sem2[:, 9:] + 1) % VS  # the window's last semantic frame (the prefix's last token)
    ref, out = logits(model, codes, mel, sem), logits(model, codes, mel, sem2)
    assert (out[:, 0, 0] - ref[:, 0, 0]).abs().max() > 1e-3  # the first frame already reads it
    sem3 = sem.clone()
    sem3[:, 1:3] = (sem3[:, 1:3] + 1) % VS  # not on the 25 Hz grid's first frame: not in the prefix
    assert torch.allclose(logits(model, codes, mel, sem3), ref, atol=ATOL)


# -- the cached step equals the full forward -------------------------------------------------------
@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
@pytest.mark.parametrize("pattern", ["coarse", "parallel", "delay", "depth"])
@pytest.mark.parametrize("fusion", ["concat", "sum", "interleave", "none"])
def test_prefill_then_steps_equal_forward(semantic, pattern, fusion):
    model = make(semantic, pattern, fusion)
    codes, mel, sem = inputs(T=11)
    T = codes.shape[-1]
    full = logits(model, codes, mel, sem)
    tokens, step_mel = pt.build_inputs(codes, mel if fusion != "none" else None, pattern, V)
    P = tokens.shape[-1]
    with torch.no_grad():
        cache = model.new_cache(2, P)
        n0 = 4
        parts = [
            model.forward_steps(tokens[..., :n0], None if step_mel is None else step_mel[..., :n0], cache,
                                model.step_semantic(sem, 0, n0))
        ]  # fmt: skip
        for p in range(n0, P):
            s = model.step_semantic(sem, p, 1)
            mel_p = None if step_mel is None else step_mel[..., p]
            parts.append(model.step(tokens[..., p], mel_p, cache, None if s is None else s[:, 0])[:, :, None])
    steps = torch.cat(parts, dim=2)  # (B, Ks, P, V); depth: codebook 0 only
    if semantic == "prefix":
        assert cache.prefix == 4 and cache.main_positions >= 4 + P * model.config.positions_per_step
    got = pt.revert_logits(steps, pattern, T)
    assert torch.allclose(got, full[:, : got.shape[1]], atol=ATOL)


@pytest.mark.parametrize("fusion", ["concat", "interleave"])
def test_learned_positions_cover_the_prefix(fusion):
    """Learned positions: the decoder's table has room for the prefix of a full context window."""
    model = make("prefix", "delay", fusion, context=12, pos_emb="learned")
    c = model.config
    assert model.decoder.max_positions == c.max_steps * c.positions_per_step + 4  # ceil(12 / 3) = 4
    codes, mel, sem = inputs(T=12)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", V)
    P = tokens.shape[-1]
    with torch.no_grad():
        cache = model.new_cache(2, P)
        first = model.forward_steps(tokens[..., :5], step_mel[..., :5], cache, model.step_semantic(sem, 0, 5))
        rest = [model.step(tokens[..., p], step_mel[..., p], cache)[:, :, None] for p in range(5, P)]
    got = pt.revert_logits(torch.cat([first, *rest], dim=2), "delay", 12)
    assert torch.allclose(got, logits(model, codes, mel, sem), atol=ATOL)


@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
@pytest.mark.parametrize("fusion", ["sum", "interleave"])
def test_static_cache_steps_equal_dynamic_steps(semantic, fusion):
    """The static step (fixed shapes: sample --compile) reads the prefix and the aligned token too."""
    model = make(semantic, "delay", fusion)
    codes, mel, sem = inputs(T=11)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", V)
    P = tokens.shape[-1]
    out = {}
    with torch.no_grad():
        for static in (False, True):
            cache = model.new_cache(2, 16, static=static)
            first = model.forward_steps(
                tokens[..., :3], step_mel[..., :3], cache, model.step_semantic(sem, 0, 3)
            )
            rest = []
            for p in range(3, P):
                s = model.step_semantic(sem, p, 1)
                rest.append(
                    model.step(tokens[..., p], step_mel[..., p], cache, None if s is None else s[:, 0])
                )
            out[static] = torch.cat([first, torch.stack(rest, dim=2)], dim=2)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)


def test_a_reprefill_restarts_the_prefix_with_the_new_window():
    model = make("prefix", "coarse", "concat")
    codes, mel, sem = inputs(T=12)
    s0 = 3
    with torch.no_grad():
        cache = model.new_cache(2, 12)
        tokens, step_mel = pt.build_inputs(codes, mel, "coarse", V)
        model.forward_steps(tokens, step_mel, cache, model.step_semantic(sem, 0, 12))
        cache.reset()
        w_codes, w_mel, w_sem = codes[..., s0:], mel[..., s0:], sem[:, s0:]
        tokens, step_mel = pt.build_inputs(w_codes, w_mel, "coarse", V)
        got = model.forward_steps(tokens, step_mel, cache, model.step_semantic(w_sem, 0, 9))
    assert cache.prefix == 3
    assert torch.allclose(got, logits(model, w_codes, w_mel, w_sem), atol=ATOL)


def test_flops_count_the_prefix_positions():
    from whispergpt.models.flops import whispergpt_flops_per_frame

    f = {mode: whispergpt_flops_per_frame(make(mode, context=30))["flops_per_frame"] for mode in
         ("none", "prefix", "aligned")}  # fmt: skip
    assert f["aligned"] == f["none"]  # an embedding lookup added: no matmul
    assert 1.2 * f["none"] < f["prefix"] < 1.6 * f["none"]  # 10 prefix positions per 30 frames


# -- persistence and bad input ---------------------------------------------------------------------
@pytest.mark.parametrize("semantic", ["prefix", "aligned"])
def test_save_load_round_trip(semantic, tmp_path):
    model = make(semantic, "delay", "sum", lookahead=2, semantic_rate=15)
    model.save_pretrained(tmp_path)
    again = WhisperGPT.from_pretrained(tmp_path)
    assert again.config == model.config and again.config.semantic == semantic
    assert (again.config.semantic_vocab, again.config.semantic_rate, again.config.semantic_lookahead) == (
        VS,
        15,
        2,
    )
    codes, mel, sem = inputs()
    assert torch.equal(logits(again.eval(), codes, mel, sem), logits(model, codes, mel, sem))


def test_bad_input_is_a_value_error():
    codes, mel, sem = inputs()
    model = make("prefix")
    with pytest.raises(ValueError, match="pass semantic"):
        model(codes, mel)
    with pytest.raises(ValueError, match=r"semantic must be \(B, T\)"):
        model(codes, mel, sem[:, :-1])
    with pytest.raises(ValueError, match="integer"):
        model(codes, mel, sem.float())
    with pytest.raises(ValueError, match="semantic=none"):
        make("none")(codes, mel, sem)
    cache = model.new_cache(2, 16)
    with pytest.raises(ValueError, match="start the cache with forward_steps"):
        model.step(codes[:, :, 0], None, cache)
    with pytest.raises(ValueError, match="prefix"):
        model.forward_steps(codes[:, :, :2], mel[..., :2], cache)  # the prefill needs the prefix
    aligned = make("aligned", "parallel")
    cache = aligned.new_cache(2, 16)
    aligned.forward_steps(codes[:, :, :2], mel[..., :2], cache, sem[:, :2])
    with pytest.raises(ValueError, match=r"\(B,\)"):
        aligned.step(codes[:, :, 2], mel[..., 1], cache)
