"""The sampler's per-frame work after its token draw: the model's one-position step and, for hybrid
models, the incremental codec decode of the frame just completed and its causal log-mel frame.

``generate`` calls a ``FrameStep`` three ways per pattern step ``s`` (frame ``f = s - lag``
completed by it, see ``whispergpt.inference.generate``): ``feed_step(tok, f)`` (the common case: decode
frame ``f``, its mel frame, then the model step that reads it), ``feed(f)`` (no model step: the last
step, or before a re-prefill) and ``step(tok, mel)`` (no frame to decode yet).

``static=True`` (the GPU-ready step): the model runs against a static cache (``WhisperGPTCache``
with ``static``: KV written at a device index, attention over the whole cache, masked), the
streaming decoder keeps its state in fixed buffers updated in place, the mel window is a fixed
``(B, 1024)`` ring buffer, and the inputs are copied into fixed buffers. One ``feed_step`` is then
device work only, with the same shapes and addresses at every frame of a span (attention reads
the first ``span`` cache positions, a power of two >= 64: ``WhisperGPTCache.static_span``):
traced by ``torch.compile`` (``compile=True``) once per span, or capturable as one CUDA graph per
span. The tokens equal those of the default path (``tests/inference/test_framestep.py``).

``compile=True`` compiles the static calls with ``torch.compile`` (on CUDA ``mode="reduce-overhead"``,
which captures them as CUDA graphs). Inductor's compiled code is cached on disk
(``TORCHINDUCTOR_CACHE_DIR``, default ``~/.cache/whispergpt/inductor``), so only a machine's
first run pays the code generation; each new process still traces (a few seconds).

``latent_table`` (models with ``mel_input: codec_latent``): ``feed(f)`` writes the codec's
dequantised latent of frame ``f``'s tokens (``codec.codec_latent``, table lookups) instead of
decoding it; there is no audio buffer.

Overlap (``overlap=True``, models with ``mel_extra_lag >= 1``): ``feed_async(f)`` runs ``feed(f)``
on one worker thread while the caller computes the next model step, which reads an older frame;
``wait()`` returns once every submitted frame is written. The worker runs the same ops in the same
order as ``feed``, so the tokens and audio are the same as without overlap (tests). On CUDA the
worker enqueues them on a side stream, ordered by events after the frame's tokens are written and
before the step that reads its mel: the decode's kernels then run beside the step's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from whispergpt.audio import HOP_LENGTH, WIN_LENGTH, log_mel_frame
from whispergpt.codec.codec import codec_latent
from whispergpt.codec.streaming import StreamingDecoder
from whispergpt.models.decoding import warm_static_tables

COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels across runs (set here unless the user set it)."""
    path = os.environ.get(COMPILE_CACHE_ENV)
    if not path:
        path = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whispergpt" / "inductor")
        os.environ[COMPILE_CACHE_ENV] = path
    return Path(path)


class FrameStep:
    """Per-frame decode + mel + model step of ``generate`` (see the module docstring).

    ``model``/``cache``: the ``WhisperGPT`` and its cache (``cache.static`` selects the static
    path). ``codes (B, Kin, T)``: the sampler's frame-space codes (a view it writes into), read
    here for frame ``f``. ``stream (B, T*320)`` / ``fed_mel (B, M, T)``: the sampler's buffers, each
    decoded frame's samples and mel frame written there. ``decode``: ``StreamingDecoder`` (needed
    with ``static``) or a callable ``f -> (B, 320)`` (the window decoder). Token-only models pass
    None for everything but ``model``, ``cache`` and ``codes``. ``latent_table (K, V, C)``: feed the
    codec latent (``decode`` and ``stream`` None). ``overlap``: ``feed_async`` on a worker thread
    (call ``close`` when done).
    """

    def __init__(
        self,
        model,
        cache,
        codes: torch.Tensor,
        stream: torch.Tensor | None = None,
        fed_mel: torch.Tensor | None = None,
        decode: StreamingDecoder | Callable[[int], torch.Tensor] | None = None,
        compile: bool = False,
        latent_table: torch.Tensor | None = None,
        overlap: bool = False,
    ) -> None:
        self.model, self.cache, self.codes = model, cache, codes
        self.stream, self.fed_mel, self.decode = stream, fed_mel, decode
        self.latent_table = latent_table
        self.static = cache.static
        if overlap and self.static:
            raise ValueError("overlap runs the eager step (not static/compile)")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="whispergpt-feed") if overlap else None
        self._pending: Future | None = None
        # on CUDA the worker enqueues the decode on a side stream (a thread alone would launch onto
        # the default stream, behind the step): events order it after the frame's tokens are
        # written and before the step that reads its mel
        cuda = overlap and codes.device.type == "cuda"
        self._side = torch.cuda.Stream(codes.device) if cuda else None
        if compile and not self.static:
            raise ValueError("compile needs the static step (a static cache)")
        if (
            self.static
            and stream is not None
            and not (isinstance(decode, StreamingDecoder) and decode.static)
        ):
            raise ValueError("the static step needs a static StreamingDecoder (decoder='stream')")
        B, Kin, _ = codes.shape
        dev = codes.device
        self.n_mels = fed_mel.shape[1] if fed_mel is not None else 0
        # fixed inputs of the static calls (a CUDA graph reads its inputs from fixed addresses)
        self.tok = torch.zeros(B, Kin, dtype=torch.long, device=dev)
        self.frame = torch.zeros(B, Kin, 1, dtype=torch.long, device=dev)
        self.mel_in = torch.zeros(B, max(1, self.n_mels), device=dev)
        aligned = getattr(model.config, "semantic", "none") == "aligned"
        self.sem = torch.zeros(B, dtype=torch.long, device=dev) if aligned else None  # the step's token
        self.win = torch.zeros(B, WIN_LENGTH, device=dev)  # the last 1024 decoded samples
        self._feed, self._step, self._feed_step = self._run_feed, self._run_step, self._run_feed_step
        if compile:
            compile_cache_dir()
            # tables memoised outside the trace, so that the graph reads them instead of rebuilding them
            warm_static_tables(model, cache)
            if self.n_mels:
                log_mel_frame(self.win, self.n_mels)
            mode = "reduce-overhead" if dev.type == "cuda" else None
            self._feed, self._step, self._feed_step = (
                torch.compile(fn, mode=mode, dynamic=False)
                for fn in (self._feed, self._step, self._feed_step)
            )

    def start(self, end: int) -> None:
        """Load the mel window with the decoded samples before sample ``end`` (zeros before 0)."""
        if self.stream is not None and end > 0:
            n = min(end, WIN_LENGTH)
            self.win[:, WIN_LENGTH - n :] = self.stream[:, end - n : end]

    # -- the device work (static: fixed shapes, in-place state; traced by torch.compile) --------
    def _decode_frame(self, f: int) -> torch.Tensor:
        if isinstance(self.decode, StreamingDecoder):
            return self.decode.push(self.codes[:, :, f : f + 1])  # (B, 320)
        return self.decode(f)

    def _run_feed(self) -> tuple[torch.Tensor, torch.Tensor]:
        new = self.decode.push_kbt(self.frame.transpose(0, 1))  # (K, B, 1) -> (B, 320)
        self.win.copy_(torch.cat([self.win[:, HOP_LENGTH:], new], dim=1))
        return new, log_mel_frame(self.win, self.n_mels)

    def _run_step(self, span: int) -> torch.Tensor:
        mel = self.mel_in if self.n_mels else None
        return self.model.step_static(self.tok, mel, self.cache, span, self.sem)

    def _run_feed_step(self, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new, mel = self._run_feed()
        return self.model.step_static(self.tok, mel, self.cache, span, self.sem), new, mel

    # -- what generate calls ------------------------------------------------------------------
    def _store(self, f: int, new: torch.Tensor, mel: torch.Tensor) -> None:
        end = (f + 1) * HOP_LENGTH
        self.stream[:, end - HOP_LENGTH : end] = new
        self.fed_mel[:, :, f] = mel

    def feed(self, f: int) -> None:
        """Decode frame ``f`` (all samples at once) and compute its causal mel frame (or its latent)."""
        if self.latent_table is not None:
            self.fed_mel[:, :, f] = codec_latent(self.latent_table, self.codes[:, :, f : f + 1])[..., 0]
            return
        if self.static:
            self.frame.copy_(self.codes[:, :, f : f + 1])
            new, mel = self._feed()
        else:
            new = self._decode_frame(f).to(self.win.device)
            self.win = torch.cat([self.win[:, HOP_LENGTH:], new], dim=1)
            mel = log_mel_frame(self.win, self.n_mels)
        self._store(f, new, mel)

    def _feed_worker(self, f: int, ready: torch.cuda.Event | None) -> torch.cuda.Event | None:
        with torch.inference_mode():  # grad mode (and the current CUDA stream) are per thread
            if self._side is None:
                self.feed(f)
                return None
            with torch.cuda.stream(self._side):
                self._side.wait_event(ready)
                self.feed(f)
                done = torch.cuda.Event()
                done.record(self._side)
                return done

    def feed_async(self, f: int) -> None:
        """``feed(f)`` on the worker thread (after the frames submitted before it): read
        ``fed_mel[:, :, f]`` only after ``wait()``."""
        self.wait()
        ready = None
        if self._side is not None:  # frame f's tokens, written on the caller's stream
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.codes.device))
        self._pending = self._pool.submit(self._feed_worker, f, ready)

    def wait(self) -> None:
        """Until every ``feed_async`` frame is written (re-raises the worker's exception); on CUDA,
        until the caller's stream is ordered after it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            done = pending.result()
            if done is not None:
                torch.cuda.current_stream(self.codes.device).wait_event(done)

    def close(self) -> None:
        """Wait for the worker and stop it."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def step(
        self, tok: torch.Tensor, mel: torch.Tensor | None, semantic: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The model's step on ``tok (B, Kin)`` and ``mel (B, M)`` (None for a pad position);
        ``semantic (B,)``: the token the step reads (``semantic="aligned"``, else None)."""
        if not self.static:
            return self.model.step_unchecked(tok, mel, self.cache, semantic)
        self.tok.copy_(tok)
        if semantic is not None:
            self.sem.copy_(semantic)
        if mel is not None:
            self.mel_in.copy_(mel)
        logits = self._step(self.cache.static_span())
        self.cache.steps += 1
        return logits

    def feed_step(self, tok: torch.Tensor, f: int, semantic: torch.Tensor | None = None) -> torch.Tensor:
        """``feed(f)`` then ``step(tok, mel of f, semantic)``: one call (one graph) in the static path."""
        if self.latent_table is not None:
            self.feed(f)
            return self.step(tok, self.fed_mel[:, :, f], semantic)
        if not self.static:
            self.feed(f)
            return self.model.step_unchecked(tok, self.fed_mel[:, :, f], self.cache, semantic)
        self.tok.copy_(tok)
        if semantic is not None:
            self.sem.copy_(semantic)
        self.frame.copy_(self.codes[:, :, f : f + 1])
        logits, new, mel = self._feed_step(self.cache.static_span())
        self.cache.steps += 1
        self._store(f, new, mel)
        return logits
