"""Sampling: prompt continuation and unconditional generation, with the hybrid mel feedback loop.

Python API: ``generate(model, codec, frames=N, ...) -> GenerationResult`` and the token filters
``filter_logits`` / ``sample_tokens``. The ``whispergpt sample`` CLI (``python sample.py``) is
``whispergpt.inference.pipeline``; the exact incremental codec decode is
``whispergpt.codec.streaming.StreamingDecoder``; checkpoint and training-codec lookup is
``whispergpt.training.record``. Those names used to live here and still import from here.

The feedback loop (hybrid models, ``fusion != "none"``)
-------------------------------------------------------
After pattern step ``s`` the frame ``f = s - lag`` becomes complete (all its codebooks are placed,
see ``whispergpt.models.patterns``). It is decoded by the codec and its causal log-mel frame computed,
which the model reads at input position ``s + 1`` (``mel_frame_at_step(s + 1) == f``): exactly
what training fed it. Decoding is incremental, one frame per step for the whole batch at once:

- ``stream`` (default): ``StreamingDecoder`` carries the EnCodec decoder's state across frames
  (each causal conv's left context, each transposed conv's overlap-add tail, the LSTM's
  ``(h, c)``), so only the new frame is decoded and the result equals the full decode up to float
  rounding (measured max abs error ~1e-6 on audio of peak ~1).
- ``window`` (fallback for decoders with unknown layers): the last ``decode_window`` (W) frames
  are re-decoded and the newest frame's 320 samples kept. For ``f < W`` this equals the full
  decode; later, the LSTM state is rebuilt from W frames of history only. Measured with
  ``measure_decode_window_error`` on random tiny and full-size codecs: mel max abs error ~2e-1 at
  W = 4, ~4e-2 at W = 8, ~2e-3 at W = 16, ~1e-5 at W = 32 (the default).

The new frame's samples go into a rolling audio buffer from which its mel frame (a 1024-sample
window ending at ``(f+1)*320``) is computed. ``tests/inference/test_generate.py`` checks that the fed mel
equals ``log_mel(codec.decode(final codes))`` within 1e-3 for both decoders.

``model.mel_input: codec_latent``: the fed frame is the codec's dequantised latent of frame ``f``'s
tokens (``codec.codec_latent``, the sum of its K codebook vectors, what the dataset computes from the
stored codes): table lookups, no decode, no mel, no audio buffer (``stream_audio`` is None).

Overlap (``overlap``, models trained with ``model.mel_extra_lag >= 1``): the mel of frame ``f``,
complete after step ``s``, is read at step ``s + 1 + extra`` rather than ``s + 1``, so the frame is
decoded (and its mel computed) on a worker thread while the decoder computes step ``s + 1``, which
reads frame ``f - 1``: the decode leaves the critical path on a machine with a second core.
The lag is part of the model (trained with it: ``patterns.mel_lag``), the same for every pattern
(delay: ``lag = K``; coarse/parallel/depth: ``lag = 1``); the overlapped and sequential loops of the
same model draw the same tokens and audio for a seed (``tests/inference/test_overlap.py``).
``overlap=None`` (default): on for such models on CPU when the machine has >= 2 cores; never for
``static``/``compile`` or a ``codec_latent`` model (nothing to decode). On CUDA ``overlap=True``
enqueues the decode on a side stream from the worker thread (``FrameStep``); it is not the default
there (not measured yet: ``benchmarks/gpu_check.sh`` has the row).

Coarse models generate codebook 0 only and decode it alone (``Codec.decode`` with K' = 1).
Depth models (``pattern: depth``) run one temporal step per frame (``model.step``: codebook 0),
then K - 1 depth steps (``sample_depth_frame``): frame ``s`` is complete after step ``s`` (lag 0).

Prompt mel: ``decoded`` (default) feeds the log-mel of the *codec-decoded* prompt tokens, the
same source as every generated frame, so the mel stream has no change of source at the prompt
boundary and matches the ``decoded`` evaluation mode. ``truth`` feeds the log-mel of the prompt
audio itself (what training used), which is closer to training for the prompt but switches source
at the boundary. The rolling audio buffer always holds decoded audio.

Long-form generation (``frames`` beyond the model's context)
------------------------------------------------------------
The KV cache holds ``config.max_steps`` positions (``context`` frames, + K - 1 for ``delay``).
When it is full, the cache is rebuilt from the last ``round(context_keep * max_steps)`` positions
(default 3/4): the window is re-fed from position 0 as if it were a training crop starting at
that step (BOS first, delay's head codebooks padded, mel pad vector for the first ``1 + lag``
positions), with one ``forward_steps`` call, and stepping goes on. So every position the model
reads lies in ``[0, max_steps)``, as in training, and the re-prefill costs one batched forward
every ``(1 - context_keep) * max_steps`` steps.

Semantic conditioning (``model.semantic``, ``models/semantic.py``): ``semantic`` gives one token per
codec frame of prompt + continuation. ``prefix``: each (re-)prefill puts the prefix of the window
it starts, frames ``[s0, s0 + context)`` (cut at the end), before its steps, as a training crop
starting at frame ``s0`` has it. ``aligned``: step ``s`` reads the token of frame
``min(s + lookahead * g, T - 1)``, the same in every window.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, log_mel
from whispergpt.codec.codec import codec_latent
from whispergpt.codec.streaming import StreamingDecoder
from whispergpt.inference.framestep import FrameStep
from whispergpt.models import patterns as pt
from whispergpt.models.semantic import check_semantic_range

DEFAULT_DECODE_WINDOW = 32
DEFAULT_CONTEXT_KEEP = 0.75


# ---------------------------------------------------------------------------------------------
# Token filtering and sampling
# ---------------------------------------------------------------------------------------------
def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    """``ValueError`` for out-of-range sampling arguments."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = argmax), got {temperature!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be in [0, 1] (0 = off), got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set removed tokens of ``logits (..., V)`` to ``-inf`` (a new tensor).

    ``top_k > 0`` keeps exactly the ``top_k`` highest logits (ties broken by ``torch.topk``).
    ``top_p > 0`` then keeps the smallest set of most probable tokens whose probability mass
    (after top-k) is ``>= top_p``, never fewer than one token. ``0`` disables either filter.
    """
    V = logits.shape[-1]
    out = logits.float()
    if 0 < top_k < V:
        keep = torch.zeros_like(out, dtype=torch.bool)
        keep.scatter_(-1, out.topk(top_k, dim=-1).indices, True)
        out = out.masked_fill(~keep, float("-inf"))
    if 0.0 < top_p < 1.0:
        probs, order = out.softmax(dim=-1).sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more probable tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False  # the most probable token always stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits (..., V)`` -> ``(...)`` long.

    ``temperature == 0`` is argmax (filters and ``generator`` unused). Otherwise the logits are
    divided by the temperature, filtered (``filter_logits``) and sampled with ``generator``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    lead, V = logits.shape[:-1], logits.shape[-1]
    if 0 < top_k < V and top_p == 0.0:
        # the same distribution, drawn among the top-k only (the sampler's most frequent case:
        # top-k 250 of V=1024): an unsorted top-k (the set is what matters; ~2x cheaper than sorted
        # at batch 8) and an inverse-CDF draw, one uniform per row searched in the cumulative
        # probabilities (~10x cheaper than torch.multinomial at batch 8 on CPU)
        vals, idx = logits.float().topk(top_k, dim=-1, sorted=False)
        cdf = (vals / temperature if temperature != 1 else vals).softmax(dim=-1).cumsum_(dim=-1)
        u = torch.rand((*lead, 1), generator=generator, device=cdf.device).mul_(cdf[..., -1:])
        # first index whose cumulative mass exceeds u: token i with probability p_i (clamped
        # against u rounding up to the total)
        draw = torch.searchsorted(cdf, u, right=True).clamp_max_(top_k - 1)
        return idx.gather(-1, draw).squeeze(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    draw = torch.multinomial(probs.reshape(-1, V), 1, generator=generator)
    return draw.view(lead)


# ---------------------------------------------------------------------------------------------
# Pattern depth: the codebooks of one frame, one depth-transformer step each
# ---------------------------------------------------------------------------------------------
def sample_depth_frame(
    model,
    first: torch.Tensor,
    cache,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``first (B, 1)``: codebook 0 of the frame whose temporal step ``cache`` just ran (``model.step``
    or a prefill) -> the frame's codebooks ``(B, K)``, codebook k sampled from ``model.depth_step``
    given codebook k - 1 (depth KV cache of K positions; filters as ``sample_tokens``)."""
    toks = [first[:, 0]]
    for _ in range(1, model.config.num_codebooks):
        logits = model.depth_step(toks[-1], cache)  # (B, V)
        toks.append(sample_tokens(logits, temperature, top_k, top_p, generator))
    return torch.stack(toks, dim=1)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    """Output of ``generate``. Shapes: B samples, Kin generated codebooks, T = prompt + new frames.

    - ``codes (B, Kin, T)``: prompt + generated codes (coarse: codebook 0 only).
    - ``audio (B, T*320)``: full ``codec.decode(codes)`` (None without a codec / ``decode_audio``).
    - ``fed_mel (B, M, T)``: the mel stream of the feedback loop (hybrid models only): the prompt
      mel, then the mel of each generated frame as computed from the incremental decode. Frame
      ``f`` was fed to the model at position ``f + 1 + lag``; the last ``1 + lag`` frames are
      computed but never read.
    - ``stream_audio (B, T*320)``: the incrementally decoded audio behind ``fed_mel``.
    """

    codes: torch.Tensor
    audio: torch.Tensor | None
    fed_mel: torch.Tensor | None
    stream_audio: torch.Tensor | None
    prompt_frames: int
    frames: int
    reprefills: int = 0
    timings: dict = field(default_factory=dict)


def _check_semantic(model, semantic: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """``generate``'s ``semantic``: ``(B, T)`` long on the model's device, or None (``semantic=none``)."""
    c = model.config
    if c.semantic == "none":
        if semantic is not None:
            raise ValueError(
                "semantic tokens were given, but the model has semantic=none (trained without them)"
            )
        return None
    if semantic is None:
        raise ValueError(
            f"the model is conditioned on semantic tokens (semantic={c.semantic!r}): pass semantic "
            f"(1 or {B}, prompt + new frames = {T}), one token per codec frame"
        )
    if not isinstance(semantic, torch.Tensor) or semantic.dim() != 2 or semantic.shape[0] not in (1, B):
        raise ValueError(f"semantic must be (1 or {B}, {T}), got {getattr(semantic, 'shape', semantic)!r}")
    if semantic.shape[1] != T:
        raise ValueError(
            f"semantic must cover the prompt and the continuation, {T} codec frames, got {semantic.shape[1]}"
        )
    if semantic.dtype not in (torch.int64, torch.int32, torch.int16):
        raise ValueError(f"semantic must be integer tokens, got {semantic.dtype}")
    check_semantic_range(semantic, c.semantic_vocab)
    return semantic.to(model.tok_emb.weight.device, torch.long).expand(B, T)


def _device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model,
    codec=None,
    *,
    frames: int,
    prompt_codes: torch.Tensor | None = None,
    prompt_mel: torch.Tensor | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 250,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    decoder: str = "auto",
    decode_window: int = DEFAULT_DECODE_WINDOW,
    context_keep: float = DEFAULT_CONTEXT_KEEP,
    decode_audio: bool = True,
    progress: bool = False,
    decode_dtype: str = "auto",
    static: bool = False,
    compile: bool = False,
    semantic: torch.Tensor | None = None,
    on_frame=None,
    overlap: bool | None = None,
) -> GenerationResult:
    """Generate ``frames`` new frames for ``num_samples`` samples (after an optional prompt).

    ``model``: a ``WhisperGPT`` (eval mode is set here). ``codec``: a ``Codec`` on the model's
    device; required for hybrid models (the feedback loop) and for ``audio``. ``prompt_codes
    (1 or B, K, Tp)`` long, ``K >= Kin``; ``prompt_mel (1 or B, M, Tp)`` replaces the decoded
    prompt mel (the ``truth`` mode). ``decoder``: incremental decode of the feedback loop,
    ``stream`` (exact, ``StreamingDecoder``), ``window`` (``decode_window`` frames re-decoded per
    step) or ``auto`` (stream when the codec's layers support it). ``context_keep``: fraction of the context kept when it is full.
    ``decode_dtype`` (``auto`` | ``fp32`` | ``bf16`` | ``int8``, CPU): the weights of the one-position
    step (``WhisperGPT.new_cache``; ``auto``: int8 when the step's fp32 weights are >= 8 MiB, where
    it measured 2x faster at NLL +0.001, else fp32; ``timings["decode_dtype"]`` says which); the
    prefill runs in the model's dtype. ``static``: the static-shape
    per-frame step (``whispergpt.inference.framestep``, same tokens); ``compile``: that step ``torch.compile``d.
    ``semantic (1 or B, Tp + frames)`` long: one semantic token per codec frame of the prompt and the
    continuation (a semantic LM's continuation repeated ``g`` times per token), required by models
    with ``config.semantic != "none"`` and rejected by others (``models/semantic.py``).
    ``on_frame(codes, f)``: called as soon as frame ``f >= Tp`` has all its codebooks, with the
    frame-space ``codes (B, Kin, T)`` being filled (read ``codes[..., f]`` only: later frames are
    still written); ``inference.api.Pipeline`` streams audio from it. ``overlap``: decode each frame
    on a worker thread during the next step (models with ``mel_extra_lag >= 1``; None: on for them on
    a CPU with >= 2 cores; see the module docstring).
    """
    c = model.config
    check_sampling_args(temperature, top_k, top_p)
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if decode_window < 1:
        raise ValueError(f"decode_window must be >= 1 frame, got {decode_window}")
    if decoder not in ("auto", "stream", "window"):
        raise ValueError(f"decoder must be auto, stream or window, got {decoder!r}")
    if not 0.0 < context_keep < 1.0:
        raise ValueError(f"context_keep must be in (0, 1), got {context_keep}")
    static = static or compile
    hybrid = c.fusion != "none"
    if (hybrid or decode_audio) and codec is None:
        raise ValueError("a codec is needed for hybrid models (mel feedback) and for decode_audio=True")
    model.eval()
    dev = model.tok_emb.weight.device
    K, Kin, V, M, lag = c.num_codebooks, model.num_input_codebooks, c.codebook_size, c.n_mels, c.mel_lag
    base_lag = lag - c.mel_extra_lag  # frame s - base_lag is complete after step s
    latent = hybrid and c.mel_input == "codec_latent"
    if overlap is None:
        overlap = (
            hybrid and not latent and not static and c.mel_extra_lag >= 1
            and dev.type == "cpu" and (os.cpu_count() or 1) >= 2
        )  # fmt: skip
    elif overlap and not (hybrid and c.mel_extra_lag >= 1) or overlap and (static or latent):
        raise ValueError(
            "overlap needs a hybrid log-mel model trained with model.mel_extra_lag >= 1 and the eager "
            f"step (not static/compile); this one has fusion={c.fusion}, mel_input={c.mel_input}, "
            f"mel_extra_lag={c.mel_extra_lag}"
        )
    B = num_samples
    capacity = c.max_steps  # KV positions per pattern step = 1 (interleave handled inside the model)

    # -- prompt ------------------------------------------------------------------------------
    Tp = 0
    if prompt_codes is not None:
        if prompt_codes.dim() != 3 or prompt_codes.shape[1] < Kin or prompt_codes.shape[0] not in (1, B):
            raise ValueError(
                f"prompt_codes must be (1 or {B}, K>={Kin}, Tp), got shape {tuple(prompt_codes.shape)}"
            )
        Tp = prompt_codes.shape[-1]
        if Tp >= c.context:
            raise ValueError(
                f"the prompt is {Tp} frames ({Tp / FRAME_RATE:.2f} s) but the model context is {c.context} "
                f"frames: use a prompt shorter than {c.context / FRAME_RATE:.2f} s"
            )
        if Tp and (int(prompt_codes.min()) < 0 or int(prompt_codes.max()) >= V):
            raise ValueError(f"prompt codes must lie in [0, {V - 1}]")
    if prompt_mel is not None and (prompt_codes is None or tuple(prompt_mel.shape[1:]) != (M, Tp)):
        raise ValueError(
            f"prompt_mel must be (1 or {B}, {M}, Tp={Tp}) with prompt_codes, got {prompt_mel.shape}"
        )
    T = Tp + frames
    P = pt.num_steps(c.pattern, K, T)
    semantic = _check_semantic(model, semantic, B, T)
    delay, depth = c.pattern == "delay", c.pattern == "depth"

    t_start = time.perf_counter()
    codes = torch.full((B, Kin, T), V, dtype=torch.long, device=dev)  # frame space (B, Kin, T)
    if Tp:
        codes[:, :, :Tp] = prompt_codes[:, :Kin].to(dev)
    placed = pt.build_step_tokens(codes, c.pattern, V).contiguous()  # step space (B, Kin, P); V where unknown
    # frame space as a view of step space, so each sampled token is written once: coarse/parallel
    # place frame s at step s; delay places codebook k of frame f at step f + k (a diagonal view)
    codes = (
        placed.as_strided((B, Kin, T), (placed.stride(0), placed.stride(1) + 1, 1))
        if delay
        else placed[:, :, :T]
    )
    # step tokens fixed in advance: prompt tokens and pattern pads (frame < 0 or >= T)
    frame_of = torch.arange(P, device=dev)[None, :] - (torch.arange(Kin, device=dev)[:, None] if delay else 0)
    fixed = (frame_of < Tp) | (frame_of >= T)  # (Kin, P)
    fixed_any = fixed.any(dim=0).tolist()  # steps where some token is fixed (no per-step test on the device)

    fed_mel = stream = streamer = table = None
    W = int(decode_window)
    if latent:
        if Kin != K:
            raise ValueError("mel_input codec_latent needs every codebook generated (not pattern coarse)")
        table = codec.codebook_table(K).to(dev)  # (K, V, C)
        if table.shape[1:] != (V, M):
            raise ValueError(
                f"codec {codec.name} has codebooks (V, C) = {tuple(table.shape[1:])}, the model reads "
                f"codec_latent of width n_mels={M} with V={V}: sample with the codec it was trained on"
            )
        if prompt_mel is not None:
            raise ValueError(
                "prompt_mel (truth) is a log-mel; a codec_latent model reads the prompt's latent"
            )
        fed_mel = torch.zeros(B, T, M, device=dev).transpose(1, 2)  # (B, M, T) view, time-major
        if Tp:
            fed_mel[:, :, :Tp] = codec_latent(table, codes[:, :, :Tp])
        decoder = "none"
    elif hybrid:
        if decoder == "auto":
            decoder = "stream" if StreamingDecoder.supported(codec) else "window"
        elif decoder == "stream" and not StreamingDecoder.supported(codec):
            raise ValueError(
                f"codec {codec.name} has decoder layers StreamingDecoder does not know: use window"
            )
        if static and decoder != "stream":
            raise ValueError("the static step (static/compile) needs the stream decoder")
        # stored time-major (B, T, M): the frame fed at each step is then one contiguous row
        fed_mel = torch.zeros(B, T, M, device=dev).transpose(1, 2)  # (B, M, T) view
        stream = torch.zeros(B, T * HOP_LENGTH, device=dev)
        if decoder == "stream":
            streamer = StreamingDecoder(codec, B, Kin, static=static)
        if Tp:
            head = codes[:, :, :Tp]
            stream[:, : Tp * HOP_LENGTH] = (streamer.push(head) if streamer else codec.decode(head)).to(dev)
            if prompt_mel is not None:
                fed_mel[:, :, :Tp] = prompt_mel.to(dev, torch.float32)
            else:
                fed_mel[:, :, :Tp] = log_mel(stream[:, : Tp * HOP_LENGTH], M)

    def window_decode(f: int) -> torch.Tensor:  # frame f's samples from the last W frames
        lo = max(0, f - W + 1)
        return codec.decode(codes[:, :, lo : f + 1])[:, -HOP_LENGTH:]  # (B, 320)

    def prefill(s0: int, s_last: int):
        """The cache refilled with global steps s0 .. s_last as positions 0 .. n-1; logits of s_last
        (positions from n on keep stale values that no step reads: they are past its end, or masked)."""
        n = s_last - s0 + 1
        cache.reset()
        toks = placed.new_full((B, Kin, n), V)  # position q reads window step q - 1
        if n > 1:
            toks[:, :, 1:] = placed[:, :, s0:s_last]
            if delay:  # window step j < k holds frame < s0 for codebook k: pad, as in a training crop
                for k in range(1, Kin):
                    toks[:, k, 1 : k + 1] = V
        mel = None
        if hybrid:
            mel = fed_mel.new_zeros(B, M, n)
            first = 1 + lag  # positions before this read the learned pad vector
            if n > first:
                mel[:, :, first:] = fed_mel[:, :, s0 : s0 + n - first]
        sem = None  # the prefix of the window's frames [s0, s0 + context), or each position's token
        if sem_steps is not None:
            sem = sem_steps[:, s0 : s0 + n]
        elif semantic is not None:
            sem = model.step_semantic(semantic[:, s0 : min(s0 + c.context, T)], 0, n)
        return model.forward_steps(toks, mel, cache, sem)[:, :, -1]

    # aligned: the semantic token each global step reads (clamped at the last frame, as in training)
    sem_steps = model.step_semantic(semantic, 0, P) if c.semantic == "aligned" else None
    keep = min(capacity - 1, max(1, round(context_keep * capacity)))
    if capacity < 2:
        raise ValueError(f"the model's context holds {capacity} step(s); sampling needs >= 2")
    cache = model.new_cache(B, capacity, decode_dtype=decode_dtype, static=static)
    logits = prefill(0, Tp)
    decode = None if latent or not hybrid else (streamer or window_decode)
    frame_step = FrameStep(
        model, cache, codes, stream, fed_mel, decode, compile, latent_table=table, overlap=overlap
    )
    frame_step.start(Tp * HOP_LENGTH)
    s0 = 0
    reprefills = 0
    _device_sync(dev)
    t_prefill = time.perf_counter()
    zero_mel = torch.zeros(B, M, device=dev) if hybrid else None
    steps = range(Tp, P)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", unit="step")
    try:
        with parametrize.cached():  # the codec's weight-norm weights, computed once
            for s in steps:
                tok = sample_tokens(logits, temperature, top_k, top_p, generator)  # (B, Kin)
                if depth:  # codebook 0 so far: the depth transformer samples codebooks 1..K-1
                    tok = sample_depth_frame(model, tok, cache, temperature, top_k, top_p, generator)
                if fixed_any[s]:
                    tok = torch.where(fixed[:, s], placed[:, :, s], tok)
                placed[:, :, s] = tok  # also fills frame space (``codes`` is a view of ``placed``)
                fc = s - base_lag  # the frame completed by this step: decoded now
                f = s - lag  # the frame whose mel step s + 1 reads (fc unless mel_extra_lag)
                if on_frame is not None and fc >= Tp:
                    on_frame(codes, fc)
                feed = hybrid and fc >= Tp
                full = s + 1 - s0 >= capacity  # cache full: rebuild it from the last `keep` positions
                sem_next = None if sem_steps is None or s == P - 1 else sem_steps[:, s + 1]
                if feed and f == fc and not full and s < P - 1:
                    logits = frame_step.feed_step(tok, f, sem_next)  # decode + mel + model step, one call
                    continue
                if feed and overlap:
                    frame_step.feed_async(fc)  # waits for frame fc - 1 (>= f), then decodes fc meanwhile
                elif feed:
                    frame_step.feed(fc)
                if s == P - 1:
                    break
                if full:
                    frame_step.wait()
                    s0 = s + 2 - keep
                    logits = prefill(s0, s + 1)
                    reprefills += 1
                    continue
                step_mel = None
                if hybrid:
                    step_mel = fed_mel[:, :, f] if f >= 0 else zero_mel
                logits = frame_step.step(tok, step_mel, sem_next)
    finally:
        frame_step.close()
    _device_sync(dev)
    t_loop = time.perf_counter()
    codes = codes.contiguous()
    if fed_mel is not None:
        fed_mel = fed_mel.contiguous()
    audio = codec.decode(codes) if decode_audio else None
    _device_sync(dev)
    t_end = time.perf_counter()
    timings = dict(
        prefill_s=t_prefill - t_start,
        loop_s=t_loop - t_prefill,
        final_decode_s=t_end - t_loop,
        generate_s=t_loop - t_start,
    )
    timings["decoder"] = decoder if hybrid else None
    timings["decode_dtype"] = cache.decode_dtype
    return GenerationResult(
        codes=codes,
        audio=audio,
        fed_mel=fed_mel,
        stream_audio=stream,
        prompt_frames=Tp,
        frames=frames,
        reprefills=reprefills,
        timings=timings,
    )


@torch.inference_mode()
def measure_decode_window_error(
    codec, codes: torch.Tensor, decode_window: int, n_mels: int = 80
) -> dict[str, float]:
    """Max abs error of the sliding-window decode (audio and mel) vs the full decode of ``codes (B, K, T)``."""
    B, _, T = codes.shape
    full = codec.decode(codes)
    stream = torch.zeros_like(full)
    for f in range(T):
        lo = max(0, f - decode_window + 1)
        stream[:, f * HOP_LENGTH : (f + 1) * HOP_LENGTH] = codec.decode(codes[:, :, lo : f + 1])[
            :, -HOP_LENGTH:
        ]
    # each mel frame from the streamed samples, as the sampler computes it
    mel_full, mel_stream = log_mel(full, n_mels), log_mel(stream, n_mels)
    return dict(
        audio_max_abs=float((full - stream).abs().max()),
        audio_rms=float(full.pow(2).mean().sqrt()),
        mel_max_abs=float((mel_full - mel_stream).abs().max()),
    )
