"""Sampling: prompt continuation and unconditional generation, with the hybrid mel feedback loop.

``whispergpt sample`` / ``python sample.py``::

    python sample.py --checkpoint DIR [--codec NAME_OR_PATH] [--prompt WAV] [--prompt-seconds S]
        --seconds S --out DIR [--num-samples N] [--temperature 1.0] [--top-k 250] [--top-p 0.0]
        [--seed 0] [--device auto] [--prompt-mel decoded|truth] [--decoder auto|stream|window]
        [--decode-window 32]
        [--context-keep 0.75]

Python API: ``generate(model, codec, frames=N, ...) -> GenerationResult`` and the token filters
``filter_logits`` / ``sample_tokens``.

The feedback loop (hybrid models, ``fusion != "none"``)
-------------------------------------------------------
After pattern step ``s`` the frame ``f = s - lag`` becomes complete (all its codebooks are placed,
see ``whispergpt.patterns``). It is decoded by the codec and its causal log-mel frame computed,
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
window ending at ``(f+1)*320``) is computed. ``tests/test_sampling.py`` checks that the fed mel
equals ``log_mel(codec.decode(final codes))`` within 1e-3 for both decoders.

Coarse models generate codebook 0 only and decode it alone (``Codec.decode`` with K' = 1).

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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .audio import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH, log_mel, log_mel_frame
from .models import patterns as pt

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
) -> GenerationResult:
    """Generate ``frames`` new frames for ``num_samples`` samples (after an optional prompt).

    ``model``: a ``WhisperGPT`` (eval mode is set here). ``codec``: a ``Codec`` on the model's
    device; required for hybrid models (the feedback loop) and for ``audio``. ``prompt_codes
    (1 or B, K, Tp)`` long, ``K >= Kin``; ``prompt_mel (1 or B, M, Tp)`` replaces the decoded
    prompt mel (the ``truth`` mode). ``decoder``: incremental decode of the feedback loop,
    ``stream`` (exact, ``StreamingDecoder``), ``window`` (``decode_window`` frames re-decoded per
    step) or ``auto`` (stream when the codec's layers support it). ``context_keep``: fraction of the context kept when it is full.
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
    hybrid = c.fusion != "none"
    if (hybrid or decode_audio) and codec is None:
        raise ValueError("a codec is needed for hybrid models (mel feedback) and for decode_audio=True")
    model.eval()
    dev = model.tok_emb.weight.device
    K, Kin, V, M, lag = c.num_codebooks, model.num_input_codebooks, c.codebook_size, c.n_mels, c.mel_lag
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
    delay = c.pattern == "delay"

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

    fed_mel = stream = streamer = None
    W = int(decode_window)
    if hybrid:
        if decoder == "auto":
            decoder = "stream" if StreamingDecoder.supported(codec) else "window"
        elif decoder == "stream" and not StreamingDecoder.supported(codec):
            raise ValueError(
                f"codec {codec.name} has decoder layers StreamingDecoder does not know: use window"
            )
        # stored time-major (B, T, M): the frame fed at each step is then one contiguous row
        fed_mel = torch.zeros(B, T, M, device=dev).transpose(1, 2)  # (B, M, T) view
        stream = torch.zeros(B, T * HOP_LENGTH, device=dev)
        if decoder == "stream":
            streamer = StreamingDecoder(codec, B, Kin)
        if Tp:
            head = codes[:, :, :Tp]
            stream[:, : Tp * HOP_LENGTH] = (streamer.push(head) if streamer else codec.decode(head)).to(dev)
            if prompt_mel is not None:
                fed_mel[:, :, :Tp] = prompt_mel.to(dev, torch.float32)
            else:
                fed_mel[:, :, :Tp] = log_mel(stream[:, : Tp * HOP_LENGTH], M)

    def feed_frame(f: int) -> None:
        # incremental decode of frame f (all samples at once) and its causal mel frame
        if streamer is not None:
            new = streamer.push(codes[:, :, f : f + 1])  # (B, 320)
        else:
            lo = max(0, f - W + 1)
            new = codec.decode(codes[:, :, lo : f + 1])[:, -HOP_LENGTH:]  # (B, 320)
        end = (f + 1) * HOP_LENGTH
        stream[:, end - HOP_LENGTH : end] = new.to(dev)
        fed_mel[:, :, f] = log_mel_frame(stream[:, max(0, end - WIN_LENGTH) : end], M)

    def prefill(s0: int, s_last: int):
        """A new cache holding global steps s0 .. s_last as positions 0 .. n-1; logits of s_last."""
        n = s_last - s0 + 1
        cache = model.new_cache(B, capacity)
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
        return cache, model.forward_steps(toks, mel, cache)[:, :, -1]

    keep = min(capacity - 1, max(1, round(context_keep * capacity)))
    if capacity < 2:
        raise ValueError(f"the model's context holds {capacity} step(s); sampling needs >= 2")
    cache, logits = prefill(0, Tp)
    s0 = 0
    reprefills = 0
    _device_sync(dev)
    t_prefill = time.perf_counter()
    zero_mel = torch.zeros(B, M, device=dev) if hybrid else None
    steps = range(Tp, P)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", unit="step")
    with parametrize.cached():  # the codec's weight-norm weights, computed once
        for s in steps:
            tok = sample_tokens(logits, temperature, top_k, top_p, generator)  # (B, Kin)
            if fixed_any[s]:
                tok = torch.where(fixed[:, s], placed[:, :, s], tok)
            placed[:, :, s] = tok  # also fills frame space (``codes`` is a view of ``placed``)
            f = s - lag  # the frame completed by this step
            if f >= Tp and hybrid:
                feed_frame(f)
            if s == P - 1:
                break
            if s + 1 - s0 >= capacity:  # cache full: rebuild it from the last `keep` positions
                s0 = s + 2 - keep
                plan = cache.plan
                cache, logits = prefill(s0, s + 1)
                cache.plan = plan  # same model, same capacity: the decode plan is reused, not rebuilt
                reprefills += 1
                continue
            step_mel = None
            if hybrid:
                step_mel = fed_mel[:, :, f] if f >= 0 else zero_mel
            logits = model._step(tok, step_mel, cache)  # arguments are right by construction
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


# ---------------------------------------------------------------------------------------------
# Streaming codec decoder (exact incremental decode)
# ---------------------------------------------------------------------------------------------
class StreamingDecoder:
    """Decode codes frame by frame with the EnCodec decoder's conv / LSTM state carried over.

    Each causal conv keeps its last ``kernel - 1`` (dilated) input samples, each transposed conv
    the overlap-add tail it trimmed, each LSTM its ``(h, c)``; the first call primes with the codes
    of silence (``PRIME_FRAMES``), as ``Codec.decode`` does, so reflect padding only ever sees
    that prefix. Output equals ``codec.decode`` of all codes pushed so far up to float rounding.
    ``StreamingDecoder.supported(codec)`` says whether the codec's layers are known here.

    Speed (one push per generated frame is the hybrid sampler's feedback-loop cost): the decoder is
    flattened once into a list of ops with the weight-norm weights materialised (no
    parametrization per call), codebooks are looked up in one stacked table, and a one-frame
    push runs the LSTM one ``lstm_cell`` per layer (the fused LSTM kernel costs ~0.7 ms per call on
    CPU whatever the length). Activations are time-major ``(B, n, C)`` and every conv is one
    ``addmm`` over ``(k, Cin)`` columns with the weight stored as the right operand (for a one-frame
    push the carried window is its own column matrix, no unfold). The codec must not be trained
    while a decoder built on it is used.
    """

    def __init__(self, codec, batch: int, num_codebooks: int) -> None:
        from .codec import PRIME_FRAMES

        self.codec = codec
        with torch.no_grad(), parametrize.cached():
            self._build(codec, num_codebooks)
        prime = codec.silence_codes()[:num_codebooks].expand(num_codebooks, batch, PRIME_FRAMES)
        self._run(prime.to(codec.device))  # fills the state; audio of the prefix is dropped

    @staticmethod
    def supported(codec) -> bool:
        from transformers.models.encodec import modeling_encodec as me

        known = (
            me.EncodecConv1d,
            me.EncodecConvTranspose1d,
            me.EncodecLSTM,
            me.EncodecResnetBlock,
            torch.nn.ELU,
        )
        cfg = codec.model.config
        return (
            cfg.use_causal_conv
            and cfg.norm_type == "weight_norm"
            and float(cfg.trim_right_ratio) == 1.0
            and all(isinstance(m, known) for m in codec.model.decoder.layers)
        )

    # -- build: modules -> flat op list -------------------------------------------------------
    def _build(self, codec, num_codebooks: int) -> None:
        layers = codec.model.quantizer.layers[:num_codebooks]
        table = torch.stack([q.codebook.embed for q in layers])  # (K, V, D)
        self.V = table.shape[1]
        self.table = table.reshape(-1, table.shape[-1]).detach().clone()  # (K*V, D)
        self.offsets = (torch.arange(num_codebooks, device=table.device) * self.V)[:, None, None]
        self.state: list = []
        self.ops = [self._op(m) for m in codec.model.decoder.layers]

    def _slot(self) -> int:
        self.state.append(None)
        return len(self.state) - 1

    def _op(self, m) -> tuple:
        from transformers.models.encodec import modeling_encodec as me

        # Activations run time-major, (B, n, C), so that every conv is one F.linear (addmm): on
        # CPU a conv1d call on a handful of samples costs ~3x the matmul it performs.
        if isinstance(m, me.EncodecConv1d):
            conv = m.conv
            assert conv.stride[0] == 1 and conv.padding[0] == 0, "decoder convs are stride 1, unpadded"
            w = conv.weight.detach()  # (Cout, Cin, k) weight-norm weight, computed once (cached)
            b = None if conv.bias is None else conv.bias.detach().clone()
            # columns of a window laid out (k, Cin): a one-frame push's window (B, k, Cin) is then
            # its own column matrix; stored (k*Cin, Cout), the right-operand layout of addmm
            wt = w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()
            return ("conv", wt, b, w.shape[-1], conv.dilation[0], int(m.padding_total), self._slot(), m)
        if isinstance(m, me.EncodecConvTranspose1d):
            conv = m.conv
            w = conv.weight.detach()  # (Cin, Cout, k)
            r, k = conv.stride[0], w.shape[-1]
            b = conv.bias.detach().clone()
            if k != 2 * r:  # EnCodec uses k = 2r; anything else takes the generic path
                return ("convT", w.clone(), b, r, self._slot())
            # out[i*r + j] = x[i] @ w[:, :, j]: one matmul gives both halves of each input's span;
            # columns (half, j, o), so that for one input frame each half is a (r, Cout) view
            w2 = w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()  # (Cin, k*Cout)
            return ("convT2", w2, b, r, w.shape[1], self._slot())
        if isinstance(m, me.EncodecLSTM):
            lstm = m.lstm
            cells = [
                tuple(
                    getattr(lstm, f"{name}_l{i}").detach()
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                for i in range(lstm.num_layers)
            ]
            return ("lstm", lstm, cells, self._slot())
        if isinstance(m, me.EncodecResnetBlock):
            block = [self._op(sub) for sub in m.block]
            short = None if isinstance(m.shortcut, torch.nn.Identity) else self._op(m.shortcut)
            return ("res", block, short)
        if isinstance(m, torch.nn.ELU):
            return ("elu", float(m.alpha))
        raise AssertionError(f"unsupported decoder layer {type(m).__name__} (check supported() first)")

    # -- run ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes (B, K, n)`` of the next n frames -> their audio ``(B, n * 320)``."""
        return self._run(codes.to(self.table.device).transpose(0, 1))  # (K, B, n)

    def _run(self, codes_kbt: torch.Tensor) -> torch.Tensor:
        # one lookup in the stacked codebooks, summed over K: (K, B, n, D) -> (B, n, D)
        x = torch.embedding(self.table, codes_kbt + self.offsets).sum(0)
        for op in self.ops:
            x = self._apply(op, x)
        return x[..., 0].float()  # (B, n*320, 1) -> (B, n*320)

    def _apply(self, op: tuple, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, C), time-major
        st = self.state
        kind = op[0]
        if kind == "elu":
            return F.elu(x, op[1])
        if kind == "conv":
            _, wt, b, k, dil, pad, i, m = op
            B, n = x.shape[:2]
            if pad:
                prev = st[i]
                if prev is None:  # first chunk: the module's own (reflect) padding, as Codec.decode pads
                    xx = m._pad1d(x.transpose(1, 2), (pad, 0), mode=m.pad_mode).transpose(1, 2)
                else:
                    xx = torch.cat([prev, x], 1)
                st[i] = xx[:, -pad:]
                x = xx
            if k > 1:
                if n == 1 and pad == dil * (k - 1):  # the window (B, span, Cin) is the only one
                    x = x[:, ::dil] if dil > 1 else x  # (B, k, Cin)
                else:  # (B, n, Cin, span) windows -> (B, n, k, Cin) columns
                    cols = x.unfold(1, dil * (k - 1) + 1, 1)
                    x = (cols[..., ::dil] if dil > 1 else cols).transpose(2, 3)
            x = x.reshape(B * n, -1)
            return (torch.mm(x, wt) if b is None else torch.addmm(b, x, wt)).view(B, n, -1)
        if kind == "convT2":
            _, w2, b, r, c_out, i = op
            B, n, _ = x.shape
            z = torch.mm(x.reshape(B * n, -1), w2).view(B, n, 2, r, c_out)  # (B, n, half, j, Cout)
            head = z[:, :, 0].reshape(B, n * r, c_out)  # out[i*r + j] (a view when n == 1)
            spill = z[:, :, 1].reshape(B, n * r, c_out)  # out[(i+1)*r + j]
            tail = st[i]
            st[i] = spill[:, -r:]
            if tail is None:
                tail = spill.new_zeros(B, r, c_out)
            if n == 1:
                return head + b + tail
            return head + b + torch.cat([tail, spill[:, :-r]], 1)
        if kind == "convT":
            _, w, b, r, i = op
            y = F.conv_transpose1d(x.transpose(1, 2), w, b, r).transpose(1, 2)  # (B, n*r + k - r, C)
            n = x.shape[1] * r
            tail = st[i]
            if tail is not None:  # overlap-add the previous chunk's trimmed tail (bias counted once)
                y = y.clone()
                y[:, : tail.shape[1]] += tail
            st[i] = y[:, n:] - b
            return y[:, :n]
        if kind == "res":
            _, block, short = op
            h = x
            for sub in block:
                h = self._apply(sub, h)
            return (x if short is None else self._apply(short, x)) + h
        _, lstm, cells, i = op  # lstm
        if x.shape[1] == 1 and st[i] is not None:
            # one step: one lstm_cell per layer (the fused sequence kernel costs ~0.7 ms per call
            # on CPU whatever the length; lstm_cell ~30 us less than the cell written out in Python)
            hs, cs = st[i]
            inp = x[:, 0]  # (B, C)
            new_h, new_c = [], []
            for (w_ih, w_hh, b_ih, b_hh), h, c in zip(cells, hs, cs):
                inp, c = torch.lstm_cell(inp, (h, c), w_ih, w_hh, b_ih, b_hh)
                new_h.append(inp)
                new_c.append(c)
            st[i] = (new_h, new_c)
            return (inp + x[:, 0]).unsqueeze(1)
        seq = x.transpose(0, 1)  # (n, B, C)
        hc = None if st[i] is None else (torch.stack(st[i][0]), torch.stack(st[i][1]))
        out, (h, c) = lstm(seq, hc)
        st[i] = (list(h.unbind(0)), list(c.unbind(0)))
        return (out + seq).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# Checkpoint / codec resolution
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``save_pretrained`` dir, or a training ``out_dir`` (-> its ``final``, else newest checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--checkpoint {p}: no such directory")
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    if (p / "final" / "config.json").is_file():
        return p / "final"
    from .training.checkpoint import list_checkpoints

    found = list_checkpoints(p)
    if found:
        return found[-1][1]
    raise ValueError(
        f"--checkpoint {p}: expected a model directory (config.json + model.safetensors) or a training "
        "out_dir with final/ or checkpoints/step-*"
    )


def training_codec(checkpoint: Path) -> tuple[str, float] | None:
    """``(codec, bandwidth)`` recorded in the manifest of the data the checkpoint was trained on.

    First ``training_data.json`` in the model folder (written by training next to ``final/``'s
    weights); else ``config.yaml`` of the run (next to ``final/`` or two levels above a ``step-*``
    checkpoint) -> ``data.dir`` (one directory or a list; all must agree) -> ``manifest.json``;
    None when any link is missing.
    """
    import yaml

    from .training import TRAINING_DATA_FILE

    record = checkpoint / TRAINING_DATA_FILE
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
            return str(rec["codec"]), float(rec["bandwidth"])
        except (ValueError, KeyError, TypeError):
            pass
    for run in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        cfg_path = run / "config.yaml"
        if not cfg_path.is_file():
            continue
        try:
            dirs = (yaml.safe_load(cfg_path.read_text()) or {})["data"]["dir"]
        except (yaml.YAMLError, KeyError, TypeError):
            return None
        found = set()
        for data_dir in dirs if isinstance(dirs, list) else [dirs]:
            data_dir = Path(str(data_dir))
            manifests = [d / "manifest.json" for d in (data_dir, run / data_dir, run.parent / data_dir)]
            m = next((m for m in manifests if m.is_file()), None)
            if m is None:
                return None
            try:
                manifest = json.loads(m.read_text())
                found.add((str(manifest["codec"]), float(manifest["bandwidth"])))
            except (ValueError, KeyError, TypeError):
                return None
        return found.pop() if len(found) == 1 else None
    return None


def match_codec(codec, model_config):
    """Check ``codec`` against the model (K, V); pick the bandwidth giving the model's K if needed.

    Returns the codec to use (possibly re-wrapped at another bandwidth) and a note (or None).
    """
    from .codec import Codec

    c = model_config
    note = None
    if codec.sample_rate != SAMPLE_RATE:
        raise ValueError(f"codec sample rate must be {SAMPLE_RATE} Hz, got {codec.sample_rate}")
    if codec.codebook_size != c.codebook_size:
        raise ValueError(
            f"codec/checkpoint mismatch: the model has codebook_size V={c.codebook_size}, the codec "
            f"{codec.name} has {codec.codebook_size}"
        )
    if codec.num_codebooks != c.num_codebooks:
        quantizer = codec.model.quantizer
        options = [float(b) for b in codec.model.config.target_bandwidths]
        fits = [b for b in options if quantizer.get_num_quantizers_for_bandwidth(b) == c.num_codebooks]
        if not fits:
            ks = {b: int(quantizer.get_num_quantizers_for_bandwidth(b)) for b in options}
            raise ValueError(
                f"codec/checkpoint mismatch: the model reads K={c.num_codebooks} codebooks, the codec "
                f"{codec.name} offers K per bandwidth {ks}"
            )
        note = (
            f"codec bandwidth {codec.bandwidth} kbps gives K={codec.num_codebooks}; using {fits[0]} kbps "
            f"(K={c.num_codebooks}) to match the model"
        )
        codec = Codec(codec.model, bandwidth=fits[0], name=codec.name)
    return codec, note


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def save_spectrogram(
    path: str | os.PathLike, wave: torch.Tensor, boundary_s: float | None, title: str
) -> None:
    """Log-mel PNG of ``wave (S,)`` with a vertical line at the prompt boundary (seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = log_mel(wave.float().cpu()).numpy()  # (M, T)
    seconds = mel.shape[-1] / FRAME_RATE
    fig, ax = plt.subplots(figsize=(max(4.0, min(16.0, 2.0 + seconds)), 3.2), dpi=100)
    im = ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    if boundary_s:
        ax.axvline(boundary_s, color="cyan", linewidth=1.5, linestyle="--", label="prompt | continuation")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, pad=0.01)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: not a device: {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="whispergpt sample",
        description="Generate continuations of a prompt (or unconditional audio) into WAV + PNG files.",
    )
    ap.add_argument(
        "--checkpoint", required=True, help="model dir (config.json + model.safetensors) or a run out_dir"
    )
    ap.add_argument(
        "--codec",
        default=None,
        help="codec name or path; default: the codec the training data was prepared with, else 'default'",
    )
    ap.add_argument("--prompt", default=None, help="audio file to continue (any soundfile format, resampled)")
    ap.add_argument(
        "--prompt-seconds", type=float, default=None, help="use the first S seconds of the prompt"
    )
    ap.add_argument(
        "--prompt-mel",
        choices=("decoded", "truth"),
        default="decoded",
        help="mel fed for the prompt: of the codec-decoded prompt (default) or of the prompt audio",
    )
    ap.add_argument("--seconds", type=float, required=True, help="seconds to generate (after the prompt)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = argmax")
    ap.add_argument("--top-k", type=int, default=250, help="0 = off")
    ap.add_argument("--top-p", type=float, default=0.0, help="0 = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--decode-window",
        type=int,
        default=DEFAULT_DECODE_WINDOW,
        help="frames re-decoded per step with --decoder window",
    )
    ap.add_argument(
        "--decoder",
        choices=("auto", "stream", "window"),
        default="auto",
        help="incremental decode of the mel feedback loop (auto: stream when the codec supports it)",
    )
    ap.add_argument(
        "--context-keep",
        type=float,
        default=DEFAULT_CONTEXT_KEEP,
        help="fraction of the context kept when long-form sampling slides the window",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _check_args(args: argparse.Namespace) -> None:
    check_sampling_args(args.temperature, args.top_k, args.top_p)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if round(args.seconds * FRAME_RATE) < 1:
        raise ValueError(f"--seconds {args.seconds} is less than one frame (1/{FRAME_RATE} s)")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prompt_seconds is not None:
        if args.prompt is None:
            raise ValueError("--prompt-seconds needs --prompt")
        if not args.prompt_seconds > 0:
            raise ValueError(f"--prompt-seconds must be > 0, got {args.prompt_seconds}")
    if args.prompt_mel == "truth" and args.prompt is None:
        raise ValueError("--prompt-mel truth needs --prompt")
    if args.decode_window < 1:
        raise ValueError(f"--decode-window must be >= 1, got {args.decode_window}")
    if not 0.0 < args.context_keep < 1.0:
        raise ValueError(f"--context-keep must be in (0, 1), got {args.context_keep}")


def run(args: argparse.Namespace) -> dict:
    """Everything after parsing: checks (before any work), generation, outputs. Returns the JSON record."""
    from .audio import load_audio, save_audio
    from .codec import Codec
    from .config import from_dict
    from .models import WhisperGPT, WhisperGPTConfig

    t0 = time.perf_counter()
    _check_args(args)
    device = _resolve_device(args.device)
    ckpt = resolve_checkpoint(args.checkpoint)
    try:
        config = from_dict(WhisperGPTConfig, json.loads((ckpt / "config.json").read_text()), "model")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ckpt / 'config.json'}: not a valid WhisperGPT config ({e})") from e

    wave = None
    if args.prompt is not None:
        wave = load_audio(args.prompt)  # AudioLoadError (a ValueError) names the file
        if args.prompt_seconds is not None:
            wave = wave[: int(round(args.prompt_seconds * SAMPLE_RATE))]
        tp = wave.shape[-1] // HOP_LENGTH
        if tp < 1:
            raise ValueError(f"--prompt {args.prompt}: shorter than one frame ({HOP_LENGTH} samples)")
        if tp >= config.context:
            raise ValueError(
                f"--prompt {args.prompt}: {tp} frames ({tp / FRAME_RATE:.2f} s) do not fit the model context "
                f"of {config.context} frames; pass --prompt-seconds < {config.context / FRAME_RATE:.2f}"
            )
        wave = wave[: tp * HOP_LENGTH]

    codec_name, bandwidth, codec_source = args.codec, None, "--codec"
    if codec_name is None:
        recorded = training_codec(ckpt)
        if recorded is not None:
            (codec_name, bandwidth), codec_source = recorded, "training data manifest"
        else:
            codec_name, codec_source = "default", "default (no training manifest found)"
    codec = _load_codec(Codec, codec_name, bandwidth)
    codec, note = match_codec(codec, config)
    if note:
        print(f"note: {note}", file=sys.stderr)
    codec.to(device)
    model = WhisperGPT.from_pretrained(ckpt, device=device).eval()
    t_load = time.perf_counter()

    frames = int(round(args.seconds * FRAME_RATE))
    prompt_codes = prompt_mel = None
    if wave is not None:
        prompt_codes = codec.encode(wave[None].to(device))
        if args.prompt_mel == "truth":
            prompt_mel = log_mel(wave[None].to(device), config.n_mels)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t_prompt = time.perf_counter()
    result = generate(
        model,
        codec,
        frames=frames,
        prompt_codes=prompt_codes,
        prompt_mel=prompt_mel,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=gen,
        decoder=args.decoder,
        decode_window=args.decode_window,
        context_keep=args.context_keep,
        progress=not args.no_progress,
    )
    t_gen = time.perf_counter()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Tp = result.prompt_frames
    boundary = Tp * HOP_LENGTH
    audio = result.audio.cpu()
    files = []
    for i in range(args.num_samples):
        save_audio(out / f"sample_{i}.wav", audio[i])
        save_audio(out / f"sample_{i}_continuation.wav", audio[i, boundary:])
        save_spectrogram(
            out / f"sample_{i}.png",
            audio[i],
            Tp / FRAME_RATE if Tp else None,
            f"sample {i}: {Tp / FRAME_RATE:.2f} s prompt + {frames / FRAME_RATE:.2f} s generated "
            f"(T={args.temperature}, top-k {args.top_k}, top-p {args.top_p}, seed {args.seed})",
        )
        files += [f"sample_{i}.wav", f"sample_{i}_continuation.wav", f"sample_{i}.png"]
    t_write = time.perf_counter()

    loop_s = result.timings["generate_s"]
    record = dict(
        args={k: v for k, v in vars(args).items()},
        seed=args.seed,
        device=str(device),
        checkpoint=str(ckpt),
        model=dict(
            pattern=config.pattern,
            fusion=config.fusion,
            num_codebooks=config.num_codebooks,
            context=config.context,
            parameters=model.num_parameters(),
        ),
        codec=dict(
            name=codec.name,
            bandwidth=codec.bandwidth,
            num_codebooks=codec.num_codebooks,
            source=codec_source,
            note=note,
        ),
        mel_source=(
            None
            if config.fusion == "none"
            else dict(
                prompt=args.prompt_mel if Tp else None,
                continuation="decoded (incremental)",
                decoder=result.timings["decoder"],
                decode_window=args.decode_window if result.timings["decoder"] == "window" else None,
            )
        ),
        prompt_frames=Tp,
        generated_frames=frames,
        num_samples=args.num_samples,
        reprefills=result.reprefills,
        timing=dict(
            load_s=t_load - t0,
            prompt_s=t_prompt - t_load,
            generate_s=loop_s,
            final_decode_s=result.timings["final_decode_s"],
            write_s=t_write - t_gen,
            frames_per_s=frames / loop_s,
            frames_per_s_batch=frames * args.num_samples / loop_s,
            real_time_factor=frames * args.num_samples / FRAME_RATE / loop_s,
        ),
        files=files,
    )
    (out / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _load_codec(Codec, name: str, bandwidth: float | None):
    """Load at the recorded bandwidth, else at any bandwidth the codec offers (``match_codec`` picks K)."""
    tried = [bandwidth] if bandwidth is not None else []
    tried += [b for b in (6.0, 1.5, 3.0, 12.0, 24.0) if b not in tried]
    for i, b in enumerate(tried):
        try:
            return Codec.from_pretrained(name, bandwidth=b)
        except ValueError:  # bandwidth not offered by this codec
            if i == len(tried) - 1:
                raise
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record = run(args)
    except (ValueError, OSError) as e:
        print(f"whispergpt sample: error: {e}", file=sys.stderr)
        return 2
    t = record["timing"]
    print(
        f"wrote {record['num_samples']} sample(s) to {args.out}: {record['generated_frames']} frames each, "
        f"{t['frames_per_s']:.1f} frames/s per sample, real-time factor {t['real_time_factor']:.2f}"
    )
    return 0
