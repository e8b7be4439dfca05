"""WhisperGPT: config validation, causality, KV cache, fusions, loss, persistence, recipes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from whispergpt import WhisperGPT, WhisperGPTConfig
from whispergpt.models import nll_per_codebook
from whispergpt.models import patterns as pt

FUSIONS = ("concat", "sum", "interleave", "none")
CASES = list(itertools.product(pt.PATTERNS, FUSIONS))
K, V, M = 3, 16, 8


def small_config(pattern: str = "delay", fusion: str = "concat", **kw) -> WhisperGPTConfig:
    base = dict(
        num_codebooks=K,
        codebook_size=V,
        n_mels=M,
        pattern=pattern,
        fusion=fusion,
        d_model=32,
        n_layers=2,
        n_heads=2,
        context=8,
        mel_dim=8,
        mel_layers=1,
        mel_heads=2,
    )
    base.update(kw)
    return WhisperGPTConfig(**base)


def small_model(pattern: str = "delay", fusion: str = "concat", seed: int = 0, **kw) -> WhisperGPT:
    torch.manual_seed(seed)
    model = WhisperGPT(small_config(pattern, fusion, **kw)).eval()
    # Larger input weights than the N(0, 0.02) init make every real dependency clearly visible.
    with torch.no_grad():
        model.tok_emb.weight.normal_(0.0, 1.0)
        if model.mel_branch is not None:
            model.mel_branch.inp.weight.normal_(0.0, 1.0)
    return model


def inputs(B: int = 2, T: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, K, T), generator=g), torch.randn(B, M, T, generator=g)


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pattern="stagger"), "pattern must be one of"),
        (dict(fusion="cross"), "fusion must be one of"),
        (dict(pos_emb="alibi"), "pos_emb must be one of"),
        (dict(d_model=30, n_heads=4), "divisible by n_heads"),
        (dict(d_model=30, n_heads=2), "RoPE needs an even head width"),
        (dict(mel_dim=32), "mel_dim < d_model"),
        (dict(mel_dim=8, mel_heads=3), "mel_dim must be divisible by mel_heads"),
        (dict(tie_weights=True), "tie_weights"),
        (dict(dropout=1.0), "dropout"),
        (dict(codebook_size=1), "codebook_size"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        small_config(**kw)


def test_config_none_ignores_mel_fields():
    cfg = small_config(fusion="none", mel_dim=1000, mel_heads=7)  # would be invalid for a hybrid
    model = WhisperGPT(cfg)
    assert model.mel_branch is None and model.mel_proj is None
    assert not any("mel" in name for name, _ in model.named_parameters())


# -- forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, fusion", CASES)
def test_forward_shapes(pattern, fusion):
    model = small_model(pattern, fusion)
    codes, mel = inputs()
    logits = model(codes, mel).logits
    Ks = model.num_scored_codebooks
    assert Ks == (1 if pattern == "coarse" else K)
    assert logits.shape == (2, Ks, 6, V)
    assert torch.isfinite(logits).all()


def test_coarse_reads_only_codebook_zero():
    model = small_model("coarse", "concat")
    codes, mel = inputs()
    a = model(codes, mel).logits
    other = codes.clone()
    other[:, 1:] = (other[:, 1:] + 5) % V
    assert torch.equal(model(other, mel).logits, a)
    assert torch.equal(model(codes[:, :1], mel).logits, a)  # K=1 input is accepted too


def test_forward_rejects_bad_inputs():
    model = small_model("delay", "concat")
    codes, mel = inputs()
    with pytest.raises(ValueError, match="needs mel"):
        model(codes, None)
    with pytest.raises(ValueError, match="mel must be"):
        model(codes, mel[:, :, :-1])
    with pytest.raises(ValueError, match="K=3"):
        model(codes[:, :2], mel)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\]"):
        model.check_codes(codes + V)
    with pytest.raises(ValueError, match=r"got \[-1, "):
        model.check_codes(codes - 1)
    model.check_codes(codes)  # in range: no error


def test_token_only_baseline_ignores_mel_and_hybrid_uses_it():
    codes, mel = inputs()
    base = small_model("coarse", "none")
    assert torch.equal(base(codes, mel).logits, base(codes, None).logits)
    hybrid = small_model("coarse", "concat")
    assert not torch.allclose(hybrid(codes, mel).logits, hybrid(codes, mel + 1.0).logits)


# -- causality ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, fusion", CASES)
def test_causality_exact_dependency_sets(pattern, fusion):
    """Perturb one input at a time: the set of logits that change must equal the allowed set."""
    model = small_model(pattern, fusion)
    T = 6
    codes, mel = inputs(B=1, T=T)
    Ks = model.num_scored_codebooks
    lag = pt.mel_lag(pattern, K)
    # batch row 0: unperturbed; then one row per perturbed token (j, f); then one per mel frame f
    token_edits = list(itertools.product(range(K), range(T)))
    all_codes = codes.repeat(1 + len(token_edits) + T, 1, 1)
    all_mel = mel.repeat(1 + len(token_edits) + T, 1, 1)
    for i, (j, f) in enumerate(token_edits, start=1):
        all_codes[i, j, f] = (all_codes[i, j, f] + 1) % V
    for f in range(T):
        all_mel[1 + len(token_edits) + f, :, f] += 1.0
    logits = model(all_codes, all_mel).logits
    changed = (logits[1:] - logits[:1]).abs().amax(dim=-1) > 1e-6  # (rows, Ks, T)
    for i, (j, f) in enumerate(token_edits):
        allowed = torch.zeros(Ks, T, dtype=torch.bool)
        for k, t in itertools.product(range(Ks), range(T)):
            if pattern == "delay":
                allowed[k, t] = f + j < t + k
            elif pattern == "depth":  # earlier frames, and the codebooks < k of its own frame
                allowed[k, t] = f < t or (f == t and j < k)
            else:
                allowed[k, t] = f < t and (j == 0 or pattern == "parallel")
        assert torch.equal(changed[i], allowed), (j, f)
    for f in range(T):
        got = changed[len(token_edits) + f]
        contract = torch.tensor([[f < t for t in range(T)] for _ in range(Ks)])
        # exactly the frames the pattern feeds before the step of codes[k, t]: f <= step - 1 - lag
        exact = torch.tensor(
            [[f <= pt.step_of(pattern, k, t) - 1 - lag for t in range(T)] for k in range(Ks)]
        )
        if fusion == "none":
            exact[:] = False
        assert not (got & ~contract).any(), f
        assert torch.equal(got, exact), f


@pytest.mark.parametrize("pattern", pt.PATTERNS)
def test_end_to_end_audio_causality(tiny_codec, pattern):
    """Audio perturbed from sample t0*320 on leaves every logit placed at a step <= t0 unchanged."""
    from whispergpt.audio import HOP_LENGTH, log_mel

    T, t0 = 12, 6
    Kc = tiny_codec.num_codebooks
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=Kc,
        codebook_size=tiny_codec.codebook_size,
        n_mels=80,
        pattern=pattern,
        fusion="concat",
        d_model=32,
        n_layers=2,
        n_heads=2,
        context=T,
        mel_dim=8,
        mel_layers=1,
        mel_heads=2,
    )
    model = WhisperGPT(cfg).eval()
    with torch.no_grad():
        model.mel_branch.inp.weight.normal_(0.0, 1.0)
    g = torch.Generator().manual_seed(1)
    wave = 0.1 * torch.randn(1, T * HOP_LENGTH, generator=g)
    wave2 = wave.clone()
    wave2[:, t0 * HOP_LENGTH :] += 0.3 * torch.randn(1, (T - t0) * HOP_LENGTH, generator=g)

    def logits(w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(tiny_codec.encode(w), log_mel(w, n_mels=80)).logits[0]

    a, b = logits(wave), logits(wave2)
    Ks = model.num_scored_codebooks
    early = torch.tensor([[pt.step_of(pattern, k, t) <= t0 for t in range(T)] for k in range(Ks)])
    if pattern == "depth":  # codebooks >= 1 of frame t0 read its codebook 0, which may have changed
        early[1:, t0] = False
    assert torch.equal(a[early], b[early])
    assert not torch.allclose(a[~early], b[~early])  # the perturbation does reach later logits
    if pattern in ("coarse", "parallel"):
        assert torch.equal(a[:, : t0 + 1], b[:, : t0 + 1])  # whole frames <= t0


# -- incremental decoding -------------------------------------------------------------------------
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
@pytest.mark.parametrize("pattern, fusion", CASES)
def test_kv_cache_steps_equal_full_forward(pattern, fusion, pos_emb):
    model = small_model(pattern, fusion, pos_emb=pos_emb, dropout=0.1)  # eval(): dropout is off
    T = 6
    codes, mel = inputs(T=T)
    frame_logits = model(codes, mel).logits
    tokens, step_mel = pt.build_inputs(codes, mel, pattern, model.pad_id)
    full = model.forward_steps(tokens, step_mel)  # depth: codebook 0 only (the rest: test_depth.py)
    torch.testing.assert_close(pt.revert_logits(full, pattern, T), frame_logits[:, : full.shape[1]])
    P = tokens.shape[-1]
    lag = pt.mel_lag(pattern, K)

    # with autograd on, step goes through forward_steps; under inference_mode through the
    # flattened decode plan (the sampler's path): both equal the full forward
    for mode in (torch.enable_grad, torch.inference_mode):
        cache = model.new_cache(2, P)
        stepped = []
        with mode():
            for p in range(P):
                # the sampler passes None while the mel frame index is negative
                m = step_mel[:, :, p] if pt.mel_frame_at_step(pattern, K, p) >= 0 else None
                stepped.append(model.step(tokens[:, :, p], m, cache))
        assert cache.steps == P
        torch.testing.assert_close(torch.stack(stepped, dim=2), full.detach())

    cache = model.new_cache(2, P + 2)
    n = lag + 3  # prefill past the mel pad steps, then one step at a time
    pre = model.forward_steps(tokens[:, :, :n], step_mel[:, :, :n], cache)
    with torch.no_grad():  # prefill by forward_steps, then the decode plan
        rest = [model.step(tokens[:, :, p], step_mel[:, :, p], cache) for p in range(n, P)]
    torch.testing.assert_close(torch.cat([pre, torch.stack(rest, dim=2)], dim=2), full)

    cache = model.new_cache(2, P)  # two chunks: the second needs a causal mask with an offset
    a = model.forward_steps(tokens[:, :, :2], step_mel[:, :, :2], cache)
    b = model.forward_steps(tokens[:, :, 2:], step_mel[:, :, 2:], cache)
    torch.testing.assert_close(torch.cat([a, b], dim=2), full)
    with pytest.raises(ValueError, match="cache holds"):
        model.step(tokens[:, :, 0], step_mel[:, :, 0], cache)


@pytest.mark.parametrize("fusion", ["sum", "none"])
def test_decode_plan_without_biases_and_with_tied_heads(fusion):
    """The inference step path reads tied heads and bias-free linears/norms like the full forward."""
    model = small_model("delay", fusion, bias=False, tie_weights=True)
    codes, mel = inputs(T=5)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", model.pad_id)
    with torch.inference_mode():
        full = model.forward_steps(tokens, step_mel)
        cache = model.new_cache(2, tokens.shape[-1])
        stepped = [
            model.step(tokens[:, :, p], step_mel[:, :, p] if p >= K else None, cache)
            for p in range(tokens.shape[-1])
        ]
    torch.testing.assert_close(torch.stack(stepped, dim=2), full)


def _step_through(model, tokens, step_mel, cache, start: int = 0) -> torch.Tensor:
    """``model.step`` over positions ``start..P-1`` -> ``(B, Ks, P - start, V)``."""
    pattern = model.config.pattern
    out = []
    for p in range(start, tokens.shape[-1]):
        m = step_mel[:, :, p] if pt.mel_frame_at_step(pattern, K, p) >= 0 else None
        out.append(model.step(tokens[:, :, p], m, cache))
    return torch.stack(out, dim=2)


def test_step_and_forward_share_the_block_modules():
    """One transformer: a weight edited in place changes the step path exactly as the training
    path (the memoised inference copies are rebuilt), and step's autograd reaches the blocks."""
    model = small_model("delay", "interleave")
    codes, mel = inputs(T=5)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", model.pad_id)
    P = tokens.shape[-1]
    with torch.inference_mode():
        before = _step_through(model, tokens, step_mel, model.new_cache(2, P))
        memo = model._decode_memo
        _step_through(model, tokens, step_mel, model.new_cache(2, P))
        assert model._decode_memo is memo  # reused across caches, not rebuilt per cache
    for block in (model.decoder.blocks[1], model.mel_branch.stack.blocks[0]):
        with torch.no_grad():
            block.fc.weight.add_(torch.randn_like(block.fc.weight))
            block.ln1.weight.mul_(2.0)
        with torch.inference_mode():
            full = model.forward_steps(tokens, step_mel)
            after = _step_through(model, tokens, step_mel, model.new_cache(2, P))
        assert model._decode_memo is not memo
        memo = model._decode_memo
        torch.testing.assert_close(after, full)
        assert not torch.allclose(after, before, atol=1e-3)
        before = after
    # with autograd the step runs the modules themselves: gradients reach every block (one step:
    # later steps overwrite the KV buffers that earlier steps saved for backward; interleave's
    # step is two positions, so use concat here)
    model = small_model("delay", "concat")
    model.step(tokens[:, :, 0], None, model.new_cache(2, P)).square().sum().backward()
    for block in [*model.decoder.blocks, *model.mel_branch.stack.blocks]:
        assert block.attn.qkv.weight.grad is not None and block.attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["concat", "interleave"])
def test_bf16_step_matches_bf16_forward(fusion):
    """Issue 22: bf16 weights through the inference step path (RoPE tables must not promote q/k
    to fp32 and break attention's dtype check); prefill + 20 steps equal forward_steps."""
    model = small_model("delay", fusion, context=32).to(torch.bfloat16)
    codes, mel = inputs(T=24)
    tokens, step_mel = pt.build_inputs(codes, mel.to(torch.bfloat16), "delay", model.pad_id)
    P, n = tokens.shape[-1], tokens.shape[-1] - 20
    with torch.inference_mode():
        full = model.forward_steps(tokens, step_mel)
        cache = model.new_cache(2, P)
        pre = model.forward_steps(tokens[:, :, :n], step_mel[:, :, :n], cache)
        rest = _step_through(model, tokens, step_mel, cache, start=n)
    assert model._decode_memo is not None  # the inference copies were used
    assert rest.dtype == torch.bfloat16 and rest.shape[2] == 20
    got = torch.cat([pre, rest], dim=2).float()
    torch.testing.assert_close(got, full.float(), atol=0.1, rtol=0.05)


def test_step_requires_mel_once_frames_exist():
    model = small_model("coarse", "concat")
    cache = model.new_cache(1, 4)
    model.step(torch.full((1, 1), V), None, cache)  # step 0: mel frame -1 is the pad vector
    with pytest.raises(ValueError, match="needs step_mel"):
        model.step(torch.zeros(1, 1, dtype=torch.long), None, cache)


def test_learned_positions_capacity():
    model = small_model("delay", "interleave", pos_emb="learned", context=4)
    codes, mel = inputs(T=4)
    model(codes, mel)  # context frames fit, delay steps and interleave doubling included
    codes, mel = inputs(T=5)
    with pytest.raises(ValueError, match="learned positions cover"):
        model(codes, mel)


# -- training behaviour ---------------------------------------------------------------------------
def test_dropout_only_in_training():
    model = small_model("parallel", "sum", dropout=0.5)
    codes, mel = inputs()
    assert torch.equal(model(codes, mel).logits, model(codes, mel).logits)
    model.train()
    assert not torch.equal(model(codes, mel).logits, model(codes, mel).logits)


def test_tied_weights_share_the_embedding():
    model = small_model("parallel", "sum", tie_weights=True)
    assert model.head is None
    table = model.tok_emb.weight.view(K, V + 1, -1)
    assert torch.equal(model._head_weight().view(K, V, -1), table[:, :V])  # BOS/pad row is input-only
    codes, mel = inputs()
    before = model(codes, mel).logits
    with torch.no_grad():  # a change of the shared table moves the head too
        model.tok_emb.weight[V - 1] += torch.randn(32)  # codebook 0, token V-1
    after = model(codes, mel).logits
    assert not torch.allclose(before[:, 0, :, V - 1], after[:, 0, :, V - 1])
    untied = small_model("parallel", "sum")
    assert untied.num_parameters() - model.num_parameters() == K * V * 32


def test_tiny_recipe_learns_a_batch():
    """Init + optimisation sanity: the tiny recipe memorises one batch in a few steps."""
    cfg = recipe_model("tiny", num_codebooks=2, codebook_size=1024, n_mels=80)
    torch.manual_seed(0)
    model = WhisperGPT(cfg).train()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.codebook_size, (2, cfg.num_codebooks, 16), generator=g)
    mel = torch.randn(2, cfg.n_mels, 16, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        nll, count = nll_per_codebook(model(codes, mel).logits, codes)
        loss = nll.sum() / count.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - torch.log(torch.tensor(float(cfg.codebook_size))).item()) < 0.1  # ~uniform at init
    assert losses[-1] < 0.5 * losses[0]


# -- loss -----------------------------------------------------------------------------------------
def test_nll_per_codebook_sums_and_counts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, V, generator=g)
    codes = torch.randint(0, V, (2, 4, 5), generator=g)  # K=4 > Ks=3: extra codebook unused
    nll, count = nll_per_codebook(logits, codes)
    assert nll.dtype == torch.float64 and count.dtype == torch.int64
    logp = logits.log_softmax(-1)
    manual = -logp.gather(-1, codes[:, :3, :, None])[..., 0]  # (B, Ks, T)
    torch.testing.assert_close(nll, manual.sum(dim=(0, 2)).double())
    assert count.tolist() == [10, 10, 10]
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    nll_m, count_m = nll_per_codebook(logits, codes, mask)
    torch.testing.assert_close(nll_m, (manual * mask[:, None]).sum(dim=(0, 2)).double())
    assert count_m.tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="codes must be"):
        nll_per_codebook(logits, codes[:, :2])


def test_nll_is_fp32_under_autocast():
    model = small_model("parallel", "concat")
    codes, mel = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(codes, mel).logits
        nll, _ = nll_per_codebook(logits, codes)
    ref = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, V), codes.reshape(-1), reduction="none"
    ).view(2, K, -1)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(nll, ref.sum(dim=(0, 2)).double())


# -- persistence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_roundtrip(tmp_path, tie):
    model = small_model("delay", "sum", tie_weights=tie, pos_emb="learned")
    model.save_pretrained(tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]  # + the Hub model card
    loaded = WhisperGPT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    codes, mel = inputs()
    assert torch.equal(loaded.eval()(codes, mel).logits, model(codes, mel).logits)
    with pytest.raises(OSError, match="model.safetensors is missing"):
        (tmp_path / "m" / "model.safetensors").unlink()
        WhisperGPT.from_pretrained(tmp_path / "m")


# -- recipes --------------------------------------------------------------------------------------
def recipe_model(name: str, **shape: int) -> WhisperGPTConfig:
    """A shipped recipe's ``model:`` section (extends merged); K/V/M (null there) given here."""
    from whispergpt.config import from_dict, load_recipe

    return from_dict(WhisperGPTConfig, {**load_recipe(name)["model"], **shape}, "model")


@pytest.mark.parametrize(
    "name, target",
    [("paper_gpt_s", 3.7e6), ("paper_gpt_l", 40e6), ("paper_hybrid", 4e6), ("gpt_100m", 110e6)],
)
def test_recipe_parameter_counts(name, target):
    """All parameters count (embeddings, heads, mel branch); only the `model:` mapping is read."""
    cfg = recipe_model(name, num_codebooks=8, codebook_size=1024, n_mels=80)  # EnCodec 6 kbps
    with torch.device("meta"):  # no memory, no init cost
        n = WhisperGPT(cfg).num_parameters()
    assert abs(n - target) <= 0.1 * target, f"{name}: {n / 1e6:.2f}M params, target {target / 1e6:.1f}M"
    if name == "gpt_100m":
        assert n >= 100e6 and cfg.pattern == "delay" and cfg.fusion != "none" and cfg.context == 1500
    if name.startswith("paper_gpt"):
        assert cfg.fusion == "none" and cfg.pattern == "coarse"
    if name == "paper_hybrid":
        assert (cfg.fusion, cfg.pattern, cfg.mel_dim) == ("concat", "coarse", 32)


def test_tiny_recipe_matches_tiny_codec(tiny_codec):
    shape = dict(num_codebooks=tiny_codec.num_codebooks, codebook_size=tiny_codec.codebook_size)
    cfg = recipe_model("tiny", n_mels=80, **shape)
    assert (cfg.num_codebooks, cfg.codebook_size) == (tiny_codec.num_codebooks, tiny_codec.codebook_size)
    assert WhisperGPT(cfg).num_parameters() < 1e6


def test_public_exports():
    import whispergpt

    assert whispergpt.WhisperGPT is WhisperGPT and whispergpt.WhisperGPTConfig is WhisperGPTConfig
    assert isinstance(WhisperGPT(small_config()).decoder.blocks[0].ln1, nn.LayerNorm)


@pytest.mark.parametrize("pattern", pt.PATTERNS)
@pytest.mark.parametrize("fusion", ["concat", "interleave", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_nll_equals_nll_of_the_full_logits(pattern, fusion, masked):
    from whispergpt.models import nll_per_codebook

    torch.manual_seed(0)
    model = small_model(pattern, fusion)
    codes, mel = inputs()
    mask = torch.rand(codes.shape[0], codes.shape[-1]) > 0.3 if masked else None
    ref_sum, ref_count = nll_per_codebook(model(codes, mel).logits, codes, mask)
    ref_sum.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nll_sum, count = model.nll(codes, mel, mask, chunk_rows=5)  # several chunks, one ragged
    assert nll_sum.dtype == torch.float64 and count.dtype == torch.int64
    torch.testing.assert_close(nll_sum, ref_sum)
    torch.testing.assert_close(count, ref_count)
    nll_sum.sum().backward()  # recomputed chunk by chunk: same gradients
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
