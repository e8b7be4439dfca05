"""``model.mel_extra_lag`` and the overlapped feedback decode (``generate(overlap=True)``): the frame
decoded on a worker thread while the next step runs gives the same tokens, mel and WAV as the
sequential loop of the same model, and the lag it needs is the one the model trains with."""

import pytest
import torch
from test_generate import MEL_ATOL, prompt_codes

from whispergpt.audio import log_mel
from whispergpt.inference.generate import generate
from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models import patterns as pt


def lagged_model(pattern="delay", extra=1, context=16, seed=0) -> WhisperGPT:
    torch.manual_seed(seed)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=80, pattern=pattern, fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2, mel_extra_lag=extra,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


@pytest.mark.parametrize("pattern", ["delay", "coarse", "parallel", "depth"])
def test_overlap_gives_the_same_tokens_mel_and_wav(tiny_codec, pattern):
    """Sampled (temperature 1, top-k), past the context (re-prefills included): bit-identical."""
    model = lagged_model(pattern)
    pc = prompt_codes(tiny_codec, frames=4)
    runs = [
        generate(
            model,
            tiny_codec,
            frames=24,
            prompt_codes=pc,
            num_samples=2,
            overlap=overlap,
            generator=torch.Generator().manual_seed(7),
        )  # fmt: skip
        for overlap in (False, True)
    ]
    seq, ovl = runs
    assert seq.reprefills > 0
    assert torch.equal(seq.codes, ovl.codes)
    assert torch.equal(seq.audio, ovl.audio)
    assert torch.equal(seq.stream_audio, ovl.stream_audio)
    assert torch.equal(seq.fed_mel, ovl.fed_mel)
    ref = log_mel(tiny_codec.decode(ovl.codes))
    torch.testing.assert_close(ovl.fed_mel, ref, atol=MEL_ATOL, rtol=0)
    # the seed matters (the comparison is not vacuous)
    other = generate(model, tiny_codec, frames=24, prompt_codes=pc, num_samples=2, overlap=True,
                     generator=torch.Generator().manual_seed(8))  # fmt: skip
    assert not torch.equal(other.codes, ovl.codes)


@pytest.mark.parametrize("pattern", ["delay", "coarse", "parallel"])
def test_lagged_sampling_reads_what_training_reads(tiny_codec, pattern):
    """Greedy overlapped tokens == argmax of the training forward over the final codes and fed mel:
    the step inputs (tokens, mel lagged by K - 1 + 1 or 0 + 1) are training's."""
    model = lagged_model(pattern, context=32)
    pc = prompt_codes(tiny_codec, frames=4)
    r = generate(model, tiny_codec, frames=12, prompt_codes=pc, temperature=0.0, overlap=True)
    pred = model(r.codes, r.fed_mel).logits.argmax(-1)
    assert torch.equal(pred[:, :, 4:], r.codes[:, :, 4:])


@pytest.mark.parametrize("extra", [0, 1])
def test_extra_lag_moves_the_first_frame_a_mel_frame_reaches(extra):
    """Causality: mel frame t reaches the predictions of frames >= t + 1 + extra (delay: the last
    codebook; earlier codebooks later still), never an earlier one."""
    model = lagged_model("delay", extra=extra, context=16)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (1, 2, 12), generator=g)
    mel = torch.randn(1, 80, 12, generator=g)
    t = 5
    bumped = mel.clone()
    bumped[:, :, t] += 3.0
    a, b = model(codes, mel).logits, model(codes, bumped).logits  # (1, K, T, V)
    changed = (a - b).abs().amax(dim=-1)[0] > 1e-6  # (K, T)
    first = t + 1 + extra
    assert not changed[:, :first].any()
    assert changed[1, first]  # the last codebook of frame first: the earliest prediction it reaches
    assert pt.mel_frame_at_step("delay", 2, first + 1, extra) == t  # step f + 1 predicts frame f's codebook 1


def test_overlap_needs_a_lagged_eager_model(tiny_codec):
    with pytest.raises(ValueError, match="mel_extra_lag"):
        generate(lagged_model(extra=0), tiny_codec, frames=2, overlap=True)
    with pytest.raises(ValueError, match="static"):
        generate(lagged_model(), tiny_codec, frames=2, overlap=True, static=True)
    with pytest.raises(ValueError, match="mel_extra_lag must be"):
        lagged_model(extra=-1)


def test_overlap_default_follows_the_cores(tiny_codec, monkeypatch):
    """``overlap=None``: on for a lagged model when the CPU has a second core, else off (same tokens)."""
    import sys

    from whispergpt.inference import framestep

    gen = sys.modules["whispergpt.inference.generate"]  # the module (its os.cpu_count)

    made = []
    real = framestep.ThreadPoolExecutor
    monkeypatch.setattr(framestep, "ThreadPoolExecutor", lambda *a, **k: made.append(1) or real(*a, **k))
    model = lagged_model()
    runs = {}
    for cores in (1, 2):
        monkeypatch.setattr(gen.os, "cpu_count", lambda cores=cores: cores)
        runs[cores] = generate(model, tiny_codec, frames=6, generator=torch.Generator().manual_seed(1))
        assert len(made) == cores - 1
    assert torch.equal(runs[1].codes, runs[2].codes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh runs it)")
def test_overlap_on_a_cuda_side_stream_gives_the_sequential_tokens_and_wav_cuda(tiny_codec):
    """On CUDA the worker enqueues the decode on a side stream: events must order it after the
    frame's tokens and before the step that reads its mel, or the tokens drift from sequential."""
    from whispergpt.codec import Codec

    model, codec = lagged_model("delay").cuda(), Codec.random(bandwidth=1.5, seed=0).to("cuda")
    pc = prompt_codes(tiny_codec, frames=4).cuda()
    seq, ovl = (
        generate(
            model,
            codec,
            frames=24,
            prompt_codes=pc,
            num_samples=2,
            overlap=overlap,
            generator=torch.Generator("cuda").manual_seed(7),
        )  # fmt: skip
        for overlap in (False, True)
    )
    assert torch.equal(seq.codes, ovl.codes)
    assert torch.equal(seq.fed_mel, ovl.fed_mel) and torch.equal(seq.audio, ovl.audio)
