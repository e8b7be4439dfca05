"""Pattern ``depth``: config, causality in time and across the codebooks of a frame, step path ==
full forward, sampling, persistence, and a tiny train -> eval -> sample-to-WAV run."""

from __future__ import annotations

import json

import pytest
import torch

from whispergpt import WhisperGPT, WhisperGPTConfig
from whispergpt.inference.generate import generate, sample_depth_frame
from whispergpt.models import nll_per_codebook
from whispergpt.models import patterns as pt

K, V, M = 3, 16, 8
FUSIONS = ("concat", "sum", "interleave", "none")


def depth_model(fusion: str = "concat", seed: int = 0, **kw) -> WhisperGPT:
    torch.manual_seed(seed)
    base = dict(
        num_codebooks=K, codebook_size=V, n_mels=M, pattern="depth", fusion=fusion, d_model=32,
        n_layers=2, n_heads=2, context=8, mel_dim=8, mel_layers=1, mel_heads=2, depth_dim=16,
        depth_layers=2, depth_heads=2,
    )  # fmt: skip
    base.update(kw)
    model = WhisperGPT(WhisperGPTConfig(**base)).eval()
    with torch.no_grad():  # larger input weights than the init: every real dependency shows
        model.tok_emb.weight.normal_(0.0, 1.0)
        model.depth.emb.weight.normal_(0.0, 1.0)
        if model.mel_branch is not None:
            model.mel_branch.inp.weight.normal_(0.0, 1.0)
    return model


def inputs(B: int = 2, T: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, K, T), generator=g), torch.randn(B, M, T, generator=g)


# -- config -----------------------------------------------------------------------------------------
def test_depth_with_one_codebook_says_use_coarse():
    with pytest.raises(ValueError, match="num_codebooks >= 2, got 1: with one codebook use pattern 'coarse'"):
        WhisperGPTConfig(num_codebooks=1, pattern="depth")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(depth_dim=30, depth_heads=4), "depth_dim must be divisible by depth_heads"),
        (dict(depth_dim=30, depth_heads=6), "RoPE needs an even head width"),
        (dict(depth_layers=0), "depth_layers >= 1"),
        (dict(tie_weights=True, fusion="sum"), "tie_weights"),
    ],
)
def test_depth_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        WhisperGPTConfig(num_codebooks=K, pattern="depth", **kw)


def test_depth_fields_ignored_by_other_patterns():
    WhisperGPTConfig(num_codebooks=1, pattern="coarse", depth_dim=30, depth_heads=4, depth_layers=0)
    model = WhisperGPT(WhisperGPTConfig(num_codebooks=K, codebook_size=V, n_mels=M, pattern="delay"))
    assert model.depth is None and not any(n.startswith("depth") for n, _ in model.named_parameters())


def test_depth_model_has_no_temporal_head_and_a_depth_module():
    model = depth_model()
    assert model.head is None and model.num_scored_codebooks == K == model.num_input_codebooks
    d = model.depth
    assert d.ctx.weight.shape == (K * 16, 32) and d.emb.weight.shape == ((K - 1) * V, 16)
    assert d.head.shape == (K, V, 16) and len(d.stack.blocks) == 2
    # the depth stack is a blocks.Stack: the one transformer implementation
    assert type(d.stack) is type(model.decoder)


# -- causality --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_frames_from_t0_on_do_not_move_earlier_logits(fusion):
    """Codes and mel of frames >= t0 changed: logits of frames < t0 are bit-identical; frame t0's
    codebook 0 too (it reads frames < t0 only); later logits do move."""
    model = depth_model(fusion)
    codes, mel = inputs(B=1, T=8)
    t0 = 4
    codes2, mel2 = codes.clone(), mel.clone()
    codes2[:, :, t0:] = (codes2[:, :, t0:] + 1 + torch.arange(K)[:, None]) % V
    mel2[:, :, t0:] += torch.randn(1, M, 8 - t0)
    a, b = model(codes, mel).logits, model(codes2, mel2).logits
    assert torch.equal(a[:, :, :t0], b[:, :, :t0])
    assert torch.equal(a[:, 0, t0], b[:, 0, t0])
    assert not torch.allclose(a[:, 1:, t0], b[:, 1:, t0])  # reads the changed codebook 0 of t0
    assert not torch.allclose(a[:, :, t0 + 1 :], b[:, :, t0 + 1 :])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_codebook_k_reads_only_codebooks_below_k_of_its_frame(fusion):
    model = depth_model(fusion)
    codes, mel = inputs(B=1, T=6)
    t0 = 3
    base = model(codes, mel).logits
    for k in range(K):
        other = codes.clone()
        other[:, k:, t0] = (other[:, k:, t0] + 5) % V  # codebooks >= k of frame t0
        got = model(other, mel).logits
        assert torch.equal(got[:, :, :t0], base[:, :, :t0])
        assert torch.equal(got[:, : k + 1, t0], base[:, : k + 1, t0]), k
        if k + 1 < K:  # and codebook k does read codebook k - 1... : the next one moves
            assert not torch.allclose(got[:, k + 1, t0], base[:, k + 1, t0]), k


def test_audio_changed_from_t0_leaves_earlier_frames_alone(tiny_codec):
    """End to end through the codec and the causal mel: audio perturbed from sample t0*320 on."""
    from whispergpt.audio import HOP_LENGTH, log_mel

    T, t0 = 12, 6
    torch.manual_seed(0)
    model = WhisperGPT(
        WhisperGPTConfig(
            num_codebooks=tiny_codec.num_codebooks,
            codebook_size=tiny_codec.codebook_size,
            n_mels=80,
            pattern="depth",
            fusion="concat",
            d_model=32,
            n_layers=2,
            n_heads=2,
            context=T,
            mel_dim=8,
            mel_layers=1,
            mel_heads=2,
            depth_dim=16,
            depth_heads=2,
        )  # fmt: skip
    ).eval()
    with torch.no_grad():
        model.mel_branch.inp.weight.normal_(0.0, 1.0)
    g = torch.Generator().manual_seed(1)
    wave = 0.1 * torch.randn(1, T * HOP_LENGTH, generator=g)
    wave2 = wave.clone()
    wave2[:, t0 * HOP_LENGTH :] += 0.3 * torch.randn(1, (T - t0) * HOP_LENGTH, generator=g)
    with torch.no_grad():
        a = model(tiny_codec.encode(wave), log_mel(wave, n_mels=80)).logits
        b = model(tiny_codec.encode(wave2), log_mel(wave2, n_mels=80)).logits
    assert torch.equal(a[:, :, :t0], b[:, :, :t0])
    assert not torch.allclose(a[:, :, t0 + 1 :], b[:, :, t0 + 1 :])


# -- step path == full forward ----------------------------------------------------------------------
def _step_frames(model, codes, mel, cache, start: int = 0) -> torch.Tensor:
    """``step`` (codebook 0) + ``depth_step`` x (K-1) per frame from ``start``, teacher-forced with
    ``codes`` -> ``(B, K, T - start, V)``."""
    tokens, step_mel = pt.build_inputs(codes, mel, "depth", model.pad_id)
    frames = []
    for t in range(start, codes.shape[-1]):
        m = step_mel[:, :, t] if t >= 1 and mel is not None else None
        logits = [model.step(tokens[:, :, t], m, cache)[:, 0]]
        logits += [model.depth_step(codes[:, k - 1, t], cache) for k in range(1, K)]
        frames.append(torch.stack(logits, dim=1))
    return torch.stack(frames, dim=2)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_step_path_equals_full_forward(fusion, pos_emb):
    model = depth_model(fusion, pos_emb=pos_emb, dropout=0.1)  # eval(): dropout off
    T = 6
    codes, mel = inputs(T=T)
    full = model(codes, mel).logits
    # with autograd: the modules themselves; under inference_mode: the FastLinear copies
    for mode in (torch.enable_grad, torch.inference_mode):
        with mode():
            got = _step_frames(model, codes, mel, model.new_cache(2, T))
        torch.testing.assert_close(got, full.detach())
    # prefill (forward_steps: codebook 0 of each step, depth state of the last) then steps
    n = 3
    tokens, step_mel = pt.build_inputs(codes, mel, "depth", model.pad_id)
    cache = model.new_cache(2, T)
    with torch.inference_mode():
        pre = model.forward_steps(tokens[:, :, :n], step_mel[:, :, :n], cache)  # (B, 1, n, V)
        torch.testing.assert_close(pre[:, 0], full[:, 0, :n])
        rest_of_frame = [model.depth_step(codes[:, k - 1, n - 1], cache) for k in range(1, K)]
        torch.testing.assert_close(torch.stack(rest_of_frame, 1), full[:, 1:, n - 1])
        after = _step_frames(model, codes, mel, cache, start=n)
    torch.testing.assert_close(after, full[:, :, n:])


def test_depth_step_errors():
    model = depth_model()
    codes, mel = inputs(T=2)
    cache = model.new_cache(2, 4)
    with pytest.raises(ValueError, match="start each frame with WhisperGPT.step"):
        model.depth_step(codes[:, 0, 0], cache)
    model.step(torch.full((2, K), V), None, cache)
    with pytest.raises(ValueError, match=r"tokens must be \(B,\)"):
        model.depth_step(codes[:1, 0, 0], cache)
    for k in range(1, K):
        model.depth_step(codes[:, k - 1, 0], cache)
    with pytest.raises(ValueError, match=f"depth step {K} of {K}"):
        model.depth_step(codes[:, 0, 0], cache)
    delay = WhisperGPT(WhisperGPTConfig(num_codebooks=K, codebook_size=V, n_mels=M, pattern="delay"))
    with pytest.raises(ValueError, match="depth_step needs pattern 'depth'"):
        delay.depth_step(codes[:, 0, 0], delay.new_cache(2, 4))


def test_training_losses_agree_and_gradients_reach_the_depth_stack():
    model = depth_model("sum")
    codes, mel = inputs()
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    ref_sum, ref_count = nll_per_codebook(model(codes, mel).logits, codes, mask)
    nll_sum, count = model.nll(codes, mel, mask, chunk_rows=3)
    torch.testing.assert_close(nll_sum, ref_sum)
    assert count.tolist() == ref_count.tolist() == [10, 10, 10]
    nll_sum.sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("depth.") or name.startswith("decoder."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- sampling ---------------------------------------------------------------------------------------
def tiny_depth(tiny_codec, fusion="concat", context=32) -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=tiny_codec.num_codebooks, codebook_size=tiny_codec.codebook_size, n_mels=80,
        pattern="depth", fusion=fusion, d_model=32, n_layers=1, n_heads=2, context=context, mel_dim=8,
        mel_layers=1, mel_heads=2, depth_dim=16, depth_layers=1, depth_heads=2,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def _prompt(codec, frames: int) -> torch.Tensor:
    from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE

    t = torch.arange(frames * HOP_LENGTH) / SAMPLE_RATE
    return codec.encode((0.3 * torch.sin(2 * torch.pi * 220 * t))[None])


@pytest.mark.parametrize("fusion", ["concat", "none"])
def test_greedy_sampling_equals_full_forward_argmax_and_fed_mel_is_the_decoded_mel(tiny_codec, fusion):
    """Temperature 0: every codebook of every generated frame is the argmax of a training-style
    forward over the final codes and the fed mel (lag 0), also across a context slide."""
    from whispergpt.audio import log_mel

    model = tiny_depth(tiny_codec, fusion, context=12)
    Tp = 4
    r = generate(model, tiny_codec, frames=14, prompt_codes=_prompt(tiny_codec, Tp), temperature=0.0)
    assert r.codes.shape == (1, 2, 18) and r.reprefills > 0
    if fusion == "none":
        assert r.fed_mel is None
    else:
        torch.testing.assert_close(r.fed_mel, log_mel(tiny_codec.decode(r.codes)), atol=1e-3, rtol=0)
    # before the first slide every frame sees the whole prefix
    first = model.config.context - 1
    pred = model(r.codes[:, :, :first], None if r.fed_mel is None else r.fed_mel[:, :, :first]).logits
    assert torch.equal(pred.argmax(-1)[:, :, Tp:], r.codes[:, :, Tp:first])


def test_bf16_model_samples_through_the_fast_path(tiny_codec):
    model = tiny_depth(tiny_codec, "interleave").to(torch.bfloat16)
    r = generate(model, tiny_codec, frames=12, temperature=0.0, decode_audio=False)
    assert model._decode_memo is not None and model._decode_memo.depth is not None
    assert r.codes.shape == (1, 2, 12) and model.depth.head.dtype == torch.bfloat16
    logits = model(r.codes, r.fed_mel.to(torch.bfloat16)).logits
    # bf16 rounding differs between the step path and the full forward: near-ties may flip
    assert (logits.argmax(-1) == r.codes).float().mean() >= 0.9


def test_sample_depth_frame_draws_each_codebook_with_the_filters(tiny_codec):
    model = tiny_depth(tiny_codec)
    cache = model.new_cache(3, 4)
    first = model.step(torch.full((3, 2), model.pad_id), None, cache)  # (B, 1, V)
    tok0 = first.argmax(-1)  # (B, 1)
    g = torch.Generator().manual_seed(0)
    frame = sample_depth_frame(model, tok0, cache, temperature=1.0, top_k=1, generator=g)
    assert frame.shape == (3, 2) and torch.equal(frame[:, 0], tok0[:, 0])
    # top-k 1 is greedy: codebook 1 is the argmax of the depth step given codebook 0
    cache2 = model.new_cache(3, 4)
    model.step(torch.full((3, 2), model.pad_id), None, cache2)
    assert torch.equal(frame[:, 1], model.depth_step(tok0[:, 0], cache2).argmax(-1))


# -- persistence ------------------------------------------------------------------------------------
def test_save_and_load_roundtrip(tmp_path):
    model = depth_model("interleave", pos_emb="learned", depth_layers=1)
    model.save_pretrained(tmp_path / "m")
    loaded = WhisperGPT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and loaded.config.depth_layers == 1
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pattern"] == "depth"
    codes, mel = inputs()
    assert torch.equal(loaded.eval()(codes, mel).logits, model(codes, mel).logits)


# -- end to end -------------------------------------------------------------------------------------
def test_tiny_recipe_trains_evaluates_and_samples_to_wav(tiny_dataset, tmp_path):
    """`train` the tiny recipe with model.pattern=depth, `eval` it, `sample` a WAV from it (the
    codec found through the training data's manifest)."""
    import soundfile as sf

    from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
    from whispergpt.cli.sample import main as sample_main
    from whispergpt.cli.train import main as train_main
    from whispergpt.evaluation import teacher_forced as ev

    run = tmp_path / "run"
    rc = train_main([
        "tiny", f"data.dir={tiny_dataset}", f"out_dir={run}", "model.pattern=depth", "model.depth_dim=32",
        "model.depth_heads=2", "train.max_steps=2", "train.save_every=2", "train.eval_every=2",
        "train.eval_batches=1", "logging.wandb=false", "logging.progress=false",
    ])  # fmt: skip
    assert rc == 0
    assert json.loads((run / "final" / "config.json").read_text())["pattern"] == "depth"
    assert json.loads((run / "final" / "training_data.json").read_text())["mel_source"] == "decoded"

    class OneProcess:
        device = torch.device("cpu")
        process_index, num_processes, is_main_process = 0, 1, True

    report = ev.evaluate([str(run / "final")], str(tiny_dataset), split="val", accelerator=OneProcess())
    (entry,) = report["checkpoints"]
    assert entry["config"]["pattern"] == "depth" and entry["config"]["scored_codebooks"] == 2
    for e in entry["evaluations"]:
        nll = e["metrics"]["nll"]
        assert 0 < nll < 2 * torch.log(torch.tensor(1024.0)).item()

    out = tmp_path / "samples"
    rc = sample_main(["--checkpoint", str(run), "--seconds", "0.2", "--out", str(out), "--no-progress"])
    assert rc == 0
    wav, sr = sf.read(out / "sample_0.wav")
    assert sr == SAMPLE_RATE and len(wav) == 15 * HOP_LENGTH and abs(wav).max() > 0
    assert json.loads((out / "generation.json").read_text())["codec"]["num_codebooks"] == 2
