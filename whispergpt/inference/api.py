"""The Python API: ``Pipeline``, audio in and audio out, the way people call MusicGen.

::

    from whispergpt import Pipeline

    pipe = Pipeline.from_pretrained("runs/quickstart/train/hybrid/final")   # or a Hub id org/name
    wav = pipe.continue_audio(prompt_wave, prompt_sr, seconds=10, temperature=1.0, top_k=250, seed=0)
    for chunk in pipe.continue_audio(prompt_wave, prompt_sr, seconds=10, stream=True):
        ...  # (num_samples, n) float32 at 24 kHz, as soon as the frames are generated and decoded
    wav = pipe.generate(seconds=10, num_samples=4)

It runs every stage the CLI runs (``whispergpt sample`` is a thin layer over it): the codec, the
hybrid model's mel feedback, the fine stage (``fine=``) and the semantic hierarchy
(``semantic_lm=``). The prompt may have any rate and channel count (averaged, resampled to 24 kHz
with soxr, as ``audio.load_audio`` does). The output is ``(num_samples, S)`` float32 at 24 kHz:
the decoded prompt, then the continuation (the CLI's ``sample_<i>.wav``).

Streaming: the audio is decoded by a ``codec.StreamingDecoder``, the prompt in one push and then
one frame per push, and handed out in chunks of ``chunk_frames`` frames; with ``stream=True`` the
generation runs in a worker thread and each chunk is yielded as soon as its frames are generated
and decoded. The streamed and the whole output come from the same pushes, so their concatenation
is the whole output exactly (and the samples do not depend on ``chunk_frames``). With a fine stage the codes are complete only after it (it reads whole windows): the
stream starts then. Codecs the streaming decoder does not know are decoded whole, then cut.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, log_mel, resample

DEFAULT_CHUNK_FRAMES = 8  # frames per streamed chunk (8 / 75 Hz = 107 ms)


def to_mono_24k(wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
    """``(S,)``, ``(C, S)`` or ``(S, C)`` audio at ``sr`` -> ``(S',)`` float32 mono at 24 kHz (channels
    averaged, then soxr, as ``audio.load_audio``): the longer axis is time."""
    x = (
        wave.detach().cpu().float().numpy()
        if isinstance(wave, torch.Tensor)
        else np.asarray(wave, np.float32)
    )
    if x.ndim == 2:
        x = x if x.shape[0] >= x.shape[1] else x.T  # (S, C)
        x = x.mean(axis=1, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"prompt audio must be (S,), (C, S) or (S, C) with samples, got shape {wave.shape}")
    if not np.isfinite(x).all():
        raise ValueError("prompt audio holds NaN or inf samples")
    if not (isinstance(sr, int | np.integer) and sr > 0):
        raise ValueError(f"sample rate must be a positive integer, got {sr!r}")
    return torch.from_numpy(np.ascontiguousarray(resample(x.astype(np.float32), int(sr), SAMPLE_RATE)))


@dataclass
class Sampled:
    """One ``Pipeline.sample`` call: the codes, the generation result, and the decoder's chunks."""

    codes: torch.Tensor  # (B, K', T) the codes decoded (all K with a fine stage)
    result: Any  # generate.GenerationResult
    prompt_frames: int
    chunks: list[torch.Tensor] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def audio(self) -> torch.Tensor:
        """``(B, T*320)`` float32: the concatenated chunks."""
        return torch.cat(self.chunks, dim=-1)


class Pipeline:
    """A trained model with its codec and optional stages, ready to sample (module docstring)."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self, model, codec, checkpoint: Path, config, device: torch.device, dtype: torch.dtype, *,
        fine=None, semantic=None, codec_source: str = "", codec_note: str | None = None,
    ) -> None:  # fmt: skip
        self.model, self.codec, self.checkpoint, self.config = model, codec, checkpoint, config
        self.device, self.dtype = device, dtype
        self.fine, self.semantic = fine, semantic
        self.codec_source, self.codec_note = codec_source, codec_note
        self.notes: list[str] = [*([codec_note] if codec_note else []), *(fine.notes if fine else []),
                                 *(semantic.notes if semantic else [])]  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        fine: str | os.PathLike | None = None,
        semantic_lm: str | os.PathLike | None = None,
        device: str = "auto",
        *,
        codec: str | None = None,
        precision: str = "auto",
        fine_temperature: float = 0.0,
        semantic_tokenizer: str | os.PathLike | None = None,
        semantic_temperature: float = 1.0,
        semantic_top_k: int = 0,
        semantic_top_p: float = 0.0,
        decode_dtype: str = "auto",
        context_keep: float | None = None,
        progress: bool = False,
    ) -> Pipeline:
        """Open a WhisperGPT (a model folder, a run out_dir or a Hub id ``org/name[@rev]``), its
        codec (``codec``, else the one its training data was prepared with, else ``"default"``),
        and the optional fine stage and semantic LM (folders, runs or Hub ids too)."""
        import json

        from whispergpt.codec import open_codec
        from whispergpt.config_io import from_dict
        from whispergpt.inference.generate import DEFAULT_CONTEXT_KEEP
        from whispergpt.inference.hierarchy import check_acoustic_pairing, load_semantic_stage
        from whispergpt.models import WhisperGPT, WhisperGPTConfig
        from whispergpt.models.registry import check_model_type
        from whispergpt.runtime import choose_precision, resolve_device
        from whispergpt.training.record import resolve_checkpoint, training_codec

        dev = resolve_device(device)
        if decode_dtype not in ("auto", "fp32") and dev.type != "cpu":
            raise ValueError(
                f"--decode-dtype {decode_dtype} is for CPU sampling; on {dev} use --precision bf16"
            )
        dtype = torch.bfloat16 if choose_precision(precision, dev) == "bf16" else torch.float32
        ckpt = resolve_checkpoint(path_or_id)
        try:
            raw = json.loads((ckpt / "config.json").read_text())
            check_model_type(ckpt, raw, WhisperGPT.model_type)  # pops config.json's "model_type"
            config = from_dict(WhisperGPTConfig, raw, "model")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{ckpt / 'config.json'}: not a valid WhisperGPT config ({e})") from e
        stage = None  # the semantic stage, checked against the acoustic model
        if semantic_lm is None:
            check_acoustic_pairing(config, ckpt, None)
        else:
            stage = load_semantic_stage(
                semantic_lm, config, ckpt, dev, dtype, tokenizer=semantic_tokenizer,
                temperature=semantic_temperature, top_k=semantic_top_k, top_p=semantic_top_p,
                context_keep=DEFAULT_CONTEXT_KEEP if context_keep is None else context_keep,
                decode_dtype=decode_dtype, progress=progress,
            )  # fmt: skip
        name, bandwidth, source = codec, None, "--codec"
        if name is None:
            recorded = training_codec(ckpt)
            if recorded is not None:
                (name, bandwidth), source = recorded, "training data manifest"
            else:
                name, source = "default", "default (no training manifest found)"
        cdc, note = open_codec(
            name, num_codebooks=config.num_codebooks, codebook_size=config.codebook_size, bandwidth=bandwidth
        )
        cdc.to(dev)
        # Only the model is cast: the codec's decoder and log-mel feed the model back, and in bf16 they
        # would drift from the training features (the fed mel is cast to the weights' dtype per step).
        model = WhisperGPT.from_pretrained(ckpt, device=dev).to(dtype).eval()
        fine_stage = None
        if fine is not None:
            from whispergpt.inference.fine_stage import load_fine_stage

            fine_stage = load_fine_stage(fine, config, ckpt, dev, dtype, fine_temperature)
        return cls(model, cdc, ckpt, config, dev, dtype, fine=fine_stage, semantic=stage,
                   codec_source=source, codec_note=note)  # fmt: skip

    # -- the public calls ----------------------------------------------------------------------
    def continue_audio(
        self,
        wave: np.ndarray | torch.Tensor,
        sr: int,
        seconds: float,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        seed: int = 0,
        num_samples: int = 1,
        stream: bool = False,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        **options: Any,
    ) -> torch.Tensor | Iterator[torch.Tensor]:
        """``(num_samples, S)`` float32 at 24 kHz: the prompt ``wave`` (any rate, channels) decoded,
        then ``seconds`` of continuation; with ``stream=True``, an iterator of its chunks."""
        prompt = self.prepare_prompt(to_mono_24k(wave, sr))
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, **options)
        return self._audio(prompt, seconds, num_samples, seed, stream, chunk_frames, sampling)

    def generate(
        self,
        seconds: float,
        num_samples: int = 1,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        seed: int = 0,
        stream: bool = False,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        **options: Any,
    ) -> torch.Tensor | Iterator[torch.Tensor]:
        """Unconditional audio: ``(num_samples, S)`` float32 at 24 kHz (or its chunks, ``stream``)."""
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, **options)
        return self._audio(None, seconds, num_samples, seed, stream, chunk_frames, sampling)

    def _audio(self, prompt, seconds, num_samples, seed, stream, chunk_frames, sampling):
        if stream:
            return self.iter_chunks(prompt, seconds, num_samples, seed, chunk_frames, **sampling)
        return self.sample(prompt, seconds, num_samples, seed, chunk_frames, **sampling).audio.cpu()

    # -- the work (also the CLI's) -------------------------------------------------------------
    def prepare_prompt(self, wave: torch.Tensor) -> torch.Tensor:
        """A 24 kHz mono prompt cut to whole frames (whole semantic tokens with a semantic stage)
        that fit the context; ``ValueError`` otherwise."""
        c = self.config
        if self.semantic is not None:
            wave = self.semantic.trim_prompt(wave)
        tp = wave.shape[-1] // HOP_LENGTH
        if tp < 1:
            raise ValueError(f"the prompt is shorter than one frame ({HOP_LENGTH} samples)")
        if tp >= c.context:
            raise ValueError(
                f"the prompt's {tp} frames ({tp / FRAME_RATE:.2f} s) do not fit the model context of "
                f"{c.context} frames: use a prompt shorter than {c.context / FRAME_RATE:.2f} s"
            )
        return wave[: tp * HOP_LENGTH]

    def sample(
        self,
        prompt: torch.Tensor | None,
        seconds: float,
        num_samples: int = 1,
        seed: int = 0,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        prompt_mel: str = "decoded",
        on_chunk=None,
        **options: Any,
    ) -> Sampled:
        """Generate and decode; ``prompt``: a ``prepare_prompt`` wave or None. ``options``: the
        ``generate`` keywords (temperature, top_k, top_p, decoder, decode_dtype, ...). ``on_chunk``
        receives each decoded chunk as soon as it exists (``stream=True`` uses it)."""
        from whispergpt.inference.generate import generate

        if not (isinstance(seconds, int | float) and np.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be > 0, got {seconds}")
        frames = int(round(seconds * FRAME_RATE))
        if frames < 1:
            raise ValueError(f"seconds={seconds} is less than one frame (1/{FRAME_RATE} s)")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if prompt_mel not in ("decoded", "truth") or (prompt_mel == "truth" and prompt is None):
            raise ValueError(f"prompt_mel must be decoded, or truth with a prompt; got {prompt_mel!r}")
        t0 = time.perf_counter()
        dev, c = self.device, self.config
        codes_p = mel_p = None
        if prompt is not None:
            codes_p = self.codec.encode(prompt[None].to(dev))
            if prompt_mel == "truth":
                mel_p = log_mel(prompt[None].to(dev), c.n_mels)
        conditioning = {}
        if self.semantic is not None:  # stages 1-2: (B, Tp + frames) semantic tokens on the codec grid
            self.semantic.seed = seed
            conditioning["semantic"] = self.semantic.frame_tokens(prompt, frames, num_samples, dev, seed)
        Tp = 0 if codes_p is None else codes_p.shape[-1]
        out = Sampled(codes=torch.empty(0), result=None, prompt_frames=Tp)
        emit = out.chunks.append if on_chunk is None else (lambda x: (out.chunks.append(x), on_chunk(x)))
        decoder = ChunkDecoder(self.codec, num_samples, chunk_frames, Tp, emit)
        live = self.fine is None  # without a fine stage the generated codes are final: decode them live
        t_prompt = time.perf_counter()
        result = generate(
            self.model, self.codec, frames=frames, prompt_codes=codes_p, prompt_mel=mel_p,
            num_samples=num_samples, generator=torch.Generator(device=dev).manual_seed(seed),
            decode_audio=False, on_frame=decoder.on_frame if live else None, **options, **conditioning,
        )  # fmt: skip
        codes = result.codes
        if self.fine is not None:
            self.fine.seed = seed
            codes = self.fine(result.codes, codes_p)
        decoder.finish(codes)
        out.codes, out.result = codes, result
        out.timings = dict(prompt_s=t_prompt - t0, total_s=time.perf_counter() - t0)
        return out

    def iter_chunks(
        self, prompt: torch.Tensor | None, seconds: float, num_samples: int = 1, seed: int = 0,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES, **options: Any,
    ) -> Iterator[torch.Tensor]:  # fmt: skip
        """``sample`` in a worker thread; its chunks (on the CPU) yielded as they are decoded."""
        q: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                self.sample(prompt, seconds, num_samples, seed, chunk_frames,
                            on_chunk=lambda x: q.put(x.cpu()), **options)  # fmt: skip
                q.put(done)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        threading.Thread(target=work, name="whispergpt-pipeline", daemon=True).start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item


class ChunkDecoder:
    """Codes -> audio chunks: the prompt's ``Tp`` frames, then ``chunk`` frames at a time, through one
    ``StreamingDecoder`` pushed the prompt, then one frame at a time (the same pushes live or after
    the fact, and for every chunk size, so the same samples)."""

    def __init__(self, codec, batch: int, chunk: int, prompt_frames: int, emit) -> None:
        self.codec, self.batch, self.chunk, self.emit = codec, batch, chunk, emit
        self.next = 0  # first frame not pushed yet
        self.bounds_from = prompt_frames
        self.streamer = None

    def _push(self, codes: torch.Tensor, hi: int) -> None:
        from whispergpt.codec.streaming import StreamingDecoder

        if self.streamer is None:
            if not StreamingDecoder.supported(self.codec):
                return  # decoded whole in finish()
            self.streamer = StreamingDecoder(self.codec, self.batch, codes.shape[1])
        # the prompt in one push, then one frame per push whatever the chunk size, so the samples
        # do not depend on chunk_frames (a push of n frames rounds differently from n pushes)
        lo = self.next
        spans = [(lo, hi)] if lo < self.bounds_from else [(f, f + 1) for f in range(lo, hi)]
        with torch.no_grad():
            parts = [self.streamer.push(codes[:, :, a:b].clone()).float() for a, b in spans]
        self.emit(torch.cat(parts, dim=-1))
        self.next = hi

    def _due(self, complete: int) -> list[int]:
        """Push ends (exclusive) that ``complete`` finished frames allow, after ``self.next``."""
        ends = []
        nxt = self.next
        while True:
            hi = self.bounds_from if nxt < self.bounds_from else nxt + self.chunk
            if hi > complete or nxt >= complete:
                return ends
            ends.append(hi)
            nxt = hi

    def on_frame(self, codes: torch.Tensor, f: int) -> None:
        """``generate``'s hook: frame ``f`` is complete (frames complete in order)."""
        for hi in self._due(f + 1):
            self._push(codes, hi)
            if self.streamer is None:
                return

    def finish(self, codes: torch.Tensor) -> None:
        """Push what is left of the final ``codes (B, K', T)``, the last push possibly short."""
        from whispergpt.codec.streaming import StreamingDecoder

        T = codes.shape[-1]
        if not StreamingDecoder.supported(self.codec):
            audio = self.codec.decode(codes).float()  # whole, then cut at the same bounds
            bounds = [0, *self._all_bounds(T)]
            for lo, hi in zip(bounds, bounds[1:]):
                self.emit(audio[:, lo * HOP_LENGTH : hi * HOP_LENGTH])
            return
        for hi in self._due(T):
            self._push(codes, hi)
        if self.next < T:
            self._push(codes, T)

    def _all_bounds(self, T: int) -> list[int]:
        first = [self.bounds_from] if self.bounds_from else []
        return [*first, *range(self.bounds_from + self.chunk, T, self.chunk), T]
