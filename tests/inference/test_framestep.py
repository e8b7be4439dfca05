"""The sampler's static, graph-ready per-frame step (whispergpt/inference/framestep.py) and the decode
weight dtypes (``decode_dtype``): the static path gives the tokens of the default path, does its
per-frame work without reading a value back to the host and without moving its buffers; int8 and
bf16 decode weights agree with fp32 on most tokens."""

import pytest
import torch

from whispergpt.codec.streaming import StreamingDecoder
from whispergpt.inference.framestep import FrameStep
from whispergpt.inference.generate import generate
from whispergpt.models import WhisperGPT, WhisperGPTConfig
from whispergpt.models import patterns as pt


def tiny_model(pattern="delay", fusion="concat", context=24, K=2, V=1024, seed=0, **kw) -> WhisperGPT:
    torch.manual_seed(seed)
    cfg = WhisperGPTConfig(
        num_codebooks=K, codebook_size=V, n_mels=80, pattern=pattern, fusion=fusion, d_model=32,
        n_layers=2, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2, **kw,
    )  # fmt: skip
    model = WhisperGPT(cfg).eval()
    with torch.no_grad():  # clearly peaked logits: greedy ties would make token equality fragile
        model.tok_emb.weight.normal_(0.0, 1.0)
        head = model.head.weight if model.head is not None else model.depth.head  # depth: per-codebook heads
        head.normal_(0.0, 0.3)
        if model.mel_branch is not None:
            model.mel_branch.inp.weight.normal_(0.0, 1.0)
    return model


CASES = [
    ("delay", "concat"),
    ("coarse", "sum"),
    ("parallel", "interleave"),
    ("delay", "none"),
    ("delay", "concat", "concat"),
]  # fmt: skip  (the last: token_input concat)


@pytest.mark.parametrize("pattern,fusion,token_input", [c if len(c) == 3 else (*c, "sum") for c in CASES])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_step_gives_the_tokens_of_the_default_path(
    tiny_codec, pattern, fusion, token_input, temperature
):
    """Prompt + long-form (two re-prefills at context 24), batch 2: same codes, same fed mel."""
    model = tiny_model(pattern, fusion, token_input=token_input)
    prompt = torch.randint(0, 1024, (1, 2, 5), generator=torch.Generator().manual_seed(1))
    out = {}
    for static in (False, True):
        out[static] = generate(
            model, tiny_codec, frames=40, prompt_codes=prompt, num_samples=2, temperature=temperature,
            generator=torch.Generator().manual_seed(3), decode_audio=False, static=static,
        )  # fmt: skip
    assert out[True].reprefills == out[False].reprefills >= 2
    assert torch.equal(out[True].codes, out[False].codes)
    if fusion != "none":
        torch.testing.assert_close(out[True].fed_mel, out[False].fed_mel, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[True].stream_audio, out[False].stream_audio, atol=1e-6, rtol=0)


def test_static_span_grows_in_powers_of_two(tiny_codec):
    """Spans 64, 128, then max_steps: the static path's tokens over all three equal the default's."""
    model = tiny_model("delay", "concat", context=150)
    cache = model.new_cache(1, 151, static=True)
    spans = []
    for steps in (0, 63, 64, 127, 128, 150):
        cache.steps = steps
        spans.append(cache.static_span())
    assert spans == [64, 64, 128, 128, 151, 151]
    out = [
        generate(model, tiny_codec, frames=140, generator=torch.Generator().manual_seed(2), decode_audio=False,
                 static=static).codes
        for static in (False, True)
    ]  # fmt: skip
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("pattern,fusion", [("delay", "concat"), ("parallel", "interleave")])
def test_static_cache_steps_equal_dynamic_steps(pattern, fusion):
    """``model.step`` with a static cache (after a prefill) gives the logits of a dynamic one."""
    model = tiny_model(pattern, fusion, pos_emb="learned")
    g = torch.Generator().manual_seed(0)
    codes, mel = torch.randint(0, 1024, (2, 2, 12), generator=g), torch.randn(2, 80, 12, generator=g)
    tokens, step_mel = pt.build_inputs(codes, mel, pattern, model.pad_id)
    P, n = tokens.shape[-1], 4
    logits = {}
    with torch.inference_mode():
        for static in (False, True):
            cache = model.new_cache(2, P, static=static)
            model.forward_steps(tokens[:, :, :n], step_mel[:, :, :n], cache)
            logits[static] = torch.stack(
                [model.step(tokens[:, :, p], step_mel[:, :, p], cache) for p in range(n, P)]
            )
            assert cache.steps == P and (not static or int(cache.pos) == P)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5, rtol=1e-5)


def test_static_streaming_decoder_keeps_its_buffers(tiny_codec):
    codes = torch.randint(0, 1024, (2, 2, 6), generator=torch.Generator().manual_seed(0))
    plain, static = StreamingDecoder(tiny_codec, 2, 2), StreamingDecoder(tiny_codec, 2, 2, static=True)

    def addresses(dec):
        return [t.data_ptr() for t in dec.state if isinstance(t, torch.Tensor)] + [
            t.data_ptr() for s in dec.state if isinstance(s, tuple) for part in s for t in part
        ]

    before = addresses(static)
    outs = [(plain.push(codes[:, :, f : f + 1]), static.push(codes[:, :, f : f + 1])) for f in range(6)]
    assert addresses(static) == before and len(before) > 4
    for a, b in outs:
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_static_feed_step_is_device_work_only(tiny_codec, monkeypatch):
    """A CUDA graph replays device work only: one static feed_step reads nothing back to the host
    (no .item / .tolist / bool / int / float of a tensor) and keeps every buffer where it was."""
    model = tiny_model("delay", "concat")
    B, T = 2, 8
    codes = torch.randint(0, 1024, (B, 2, T), generator=torch.Generator().manual_seed(0))
    stream, fed_mel = torch.zeros(B, T * 320), torch.zeros(B, 80, T)
    with torch.inference_mode():
        cache = model.new_cache(B, 16, static=True)
        fs = FrameStep(model, cache, codes, stream, fed_mel, StreamingDecoder(tiny_codec, B, 2, static=True))
        fs.feed_step(codes[:, :, 0], 0)  # warm: the decode weights are built on the first step
        kept = [t.data_ptr() for t in (fs.win, fs.tok, fs.frame, cache.pos, cache.main[0].k, cache.mel[0].v)]

        def host_read(*a, **k):
            raise AssertionError("host read inside the static step")

        for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
            monkeypatch.setattr(torch.Tensor, name, host_read)
        for f in range(1, 4):
            fs.feed_step(codes[:, :, f], f)
        monkeypatch.undo()
    assert [
        t.data_ptr() for t in (fs.win, fs.tok, fs.frame, cache.pos, cache.main[0].k, cache.mel[0].v)
    ] == kept
    assert cache.steps == 4 and int(cache.pos) == 4


def test_static_and_compile_reject_the_window_decoder(tiny_codec):
    model = tiny_model("delay", "concat")
    with pytest.raises(ValueError, match="stream decoder"):
        generate(model, tiny_codec, frames=4, decoder="window", static=True, decode_audio=False)


# --- decode weight dtypes ----------------------------------------------------------------------
def teacher_forced_top1(model, tokens, step_mel, decode_dtype) -> torch.Tensor:
    """Step logits' argmax over every position of ``tokens``, stepped with ``decode_dtype`` weights."""
    P = tokens.shape[-1]
    with torch.inference_mode():
        cache = model.new_cache(tokens.shape[0], P, decode_dtype=decode_dtype)
        return torch.stack(
            [model.step(tokens[:, :, p], step_mel[:, :, p], cache).argmax(-1) for p in range(P)], dim=-1
        )


@pytest.mark.parametrize("decode_dtype", ["int8", "bf16"])
def test_reduced_decode_weights_agree_with_fp32(decode_dtype):
    model = tiny_model("delay", "concat", context=64)
    g = torch.Generator().manual_seed(0)
    codes, mel = torch.randint(0, 1024, (2, 2, 60), generator=g), torch.randn(2, 80, 60, generator=g)
    tokens, step_mel = pt.build_inputs(codes, mel, "delay", model.pad_id)
    ref = teacher_forced_top1(model, tokens, step_mel, "fp32")
    got = teacher_forced_top1(model, tokens, step_mel, decode_dtype)
    agree = (got == ref).float().mean().item()
    assert agree >= 0.9, agree  # measured on a trained checkpoint: benchmarks/bench_decode_dtype.py
    assert model._decode_memo.key[0] == decode_dtype  # the reduced copies were the ones used
    kind = "Int8Linear" if decode_dtype == "int8" else "FastLinear"
    assert type(model._decode_memo.head).__name__ == kind


def test_static_steps_reject_pattern_depth(tiny_codec):
    model = tiny_model("depth", "concat", depth_dim=16)
    with pytest.raises(ValueError, match="pattern 'depth'"):
        model.new_cache(1, 8, static=True)
    with pytest.raises(ValueError, match="pattern 'depth'"):
        generate(model, tiny_codec, frames=4, static=True, decode_audio=False)


@pytest.mark.parametrize("decode_dtype", ["int8", "bf16"])
def test_depth_pattern_decode_weights_agree_with_fp32(decode_dtype):
    """The depth transformer's decode copies follow ``decode_dtype`` too: teacher-forced top-1 of
    every codebook (codebook 0 from ``step``, the others from ``depth_step``) mostly agrees with fp32."""
    model = tiny_model("depth", "concat", context=64, depth_dim=16)
    g = torch.Generator().manual_seed(0)
    codes, mel = torch.randint(0, 1024, (2, 2, 40), generator=g), torch.randn(2, 80, 40, generator=g)
    tokens, step_mel = pt.build_inputs(codes, mel, "depth", model.pad_id)
    top1 = {}
    with torch.inference_mode():
        for dt in ("fp32", decode_dtype):
            cache, out = model.new_cache(2, tokens.shape[-1], decode_dtype=dt), []
            for p in range(tokens.shape[-1]):  # step p predicts frame p (parallel step space)
                out.append(model.step(tokens[:, :, p], step_mel[:, :, p], cache)[:, 0].argmax(-1))
                out += [
                    model.depth_step(codes[:, k - 1, p], cache).argmax(-1) for k in range(1, codes.shape[1])
                ]
            top1[dt] = torch.stack(out)
    agree = (top1["fp32"] == top1[decode_dtype]).float().mean().item()
    assert agree >= 0.9, agree
    kind = "Int8Linear" if decode_dtype == "int8" else "FastLinear"
    memo = model._decode_memo
    assert memo.key[0] == decode_dtype and memo.head is None
    assert type(memo.depth.ctx).__name__ == kind and type(memo.depth.heads[1]).__name__ == kind


def test_decode_dtype_is_checked_and_reaches_the_cache(tiny_codec, monkeypatch):
    model = tiny_model("delay", "concat")
    with pytest.raises(ValueError, match="decode_dtype"):
        model.new_cache(1, 4, decode_dtype="int4")
    seen = []
    real = WhisperGPT.new_cache
    monkeypatch.setattr(WhisperGPT, "new_cache", lambda self, *a, **k: seen.append(k) or real(self, *a, **k))
    generate(model, tiny_codec, frames=3, decode_dtype="int8", decode_audio=False)
    assert seen and seen[0]["decode_dtype"] == "int8"


def test_stream_decoder_tokens_equal_the_full_redecode(tiny_codec):
    """The streaming decoder's fused ops (bias and shortcut inside the matmuls, the LSTM cell as one
    matmul) leave the sampled tokens those of re-decoding every frame from the start (window >= T)."""
    model = tiny_model("delay", "concat", context=40)
    out = {}
    for decoder, window in (("stream", 32), ("window", 64)):
        out[decoder] = generate(
            model, tiny_codec, frames=30, num_samples=2, generator=torch.Generator().manual_seed(5),
            decoder=decoder, decode_window=window, decode_audio=False,
        )  # fmt: skip
    assert torch.equal(out["stream"].codes, out["window"].codes)
    torch.testing.assert_close(out["stream"].fed_mel, out["window"].fed_mel, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_compiled_static_step_matches_and_traces_once(tiny_codec, tmp_path, monkeypatch):
    """``compile=True``: greedy tokens of the eager path, and a second generate call (new cache,
    new decoder, new frame step) reuses the traced graphs instead of tracing again."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = tiny_model("delay", "concat", context=24)
    kw = dict(frames=30, num_samples=2, temperature=0.0, decode_audio=False)
    ref = generate(model, tiny_codec, **kw)
    got = generate(model, tiny_codec, compile=True, **kw)
    traced = counters["stats"]["unique_graphs"]
    again = generate(model, tiny_codec, compile=True, **kw)
    assert counters["stats"]["unique_graphs"] == traced > 0
    assert torch.equal(got.codes, ref.codes) and torch.equal(again.codes, ref.codes)
    torch.testing.assert_close(got.fed_mel, ref.fed_mel, atol=1e-4, rtol=0)


def test_auto_decode_dtype_is_int8_only_for_large_steps_on_cpu():
    """``decode_dtype="auto"`` (the sampler's default): int8 where it measured faster (step
    weights >= 8 MiB on CPU), fp32 for small, cache-resident models and off CPU."""
    from whispergpt.models.decoding import AUTO_INT8_MIN_BYTES, resolve_decode_dtype, step_weight_bytes

    small = tiny_model("delay", "none")
    big = WhisperGPT(WhisperGPTConfig(num_codebooks=2, codebook_size=1024, n_mels=80, pattern="delay",
                                      fusion="none", d_model=256, n_layers=4, n_heads=4, context=32)).eval()  # fmt: skip
    assert step_weight_bytes(small) < AUTO_INT8_MIN_BYTES <= step_weight_bytes(big)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode_dtype(small, "auto", cpu) == "fp32"
    assert resolve_decode_dtype(big, "auto", cpu) == "int8"
    assert resolve_decode_dtype(big, "auto", cuda) == "fp32"
    assert resolve_decode_dtype(big, "bf16", cpu) == "bf16"  # an explicit choice is kept
    assert big.new_cache(1, 8, decode_dtype="auto").decode_dtype == "int8"
    r = generate(big, None, frames=2, decode_audio=False)  # the default
    assert r.timings["decode_dtype"] == "int8"
    assert generate(small, None, frames=2, decode_audio=False).timings["decode_dtype"] == "fp32"
