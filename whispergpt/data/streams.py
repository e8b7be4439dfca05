"""Named streams of a prepared dataset: the per-frame arrays a shard stores, and how each is computed.

Dataset layout (``format_version`` 2, written by ``whispergpt prepare``)
----------------------------------------------------------------------
::

    DIR/manifest.json            format_version 2, streams [names stored], mel_dtype, latent_dim (with
                                 the latent), + the keys of whispergpt.data.prepare's docstring
    DIR/shards/<split>-<NNNNN>/  one completed shard; files concatenated along time (N_total frames)
        codes.npy                (N_total, K) int16          codec tokens
        mel.npy                  (N_total, M) mel_dtype      causal log-mel of the audio (audio.log_mel)
        mel_decoded.npy          (N_total, M) mel_dtype      log-mel of codec.decode(codes), all K codebooks
        mel_decoded_coarse.npy   (N_total, M) mel_dtype      log-mel of codec.decode(codes[:1]), codebook 0 alone
        latent.npy               (N_total, C) float32        Codec.latent: the encoder output before quantization
        index.json               [{path (the id), frames, offset, seconds, split[, augment][, meta]}], offset into N_total

Time-major: row ``t`` of every array is frame ``t`` of the 75 Hz grid, so a training crop is one
contiguous byte range per array. Format 1 (before this module) stored the same arrays
channel-major, ``(K, N_total)`` / ``(M, N_total)``, mel always float32, and only ``codes``,
``mel`` and ``mel_decoded``; its manifest has no ``streams`` (``stored_streams`` derives them).
The reader reads both; ``prepare`` writes format 2 only.

``mel_dtype`` (``prepare --mel-dtype``, default float16): the normalised log-mel lies in about
[-1.5, 2], where float16's rounding error is at most 2^-11 * 2 ~ 4.9e-4 (measured on the demo
corpus: docs/DATA.md), below the sampler's own feedback tolerance (1e-3, tests/inference/test_generate.py)
and 16x below the bf16 rounding a GPU step applies to the mel anyway; it halves the mel bytes.

Adding a stream
---------------
``register_stream(Stream(...))`` here, with:

- ``name`` (what ``PreparedDataset(streams=...)`` asks for and the manifest's ``streams`` lists),
  ``file``, ``kind`` (``"int"``: items int64; ``"float"``: items float32), ``frame_shape``
  (per-frame shape from the manifest: ``()`` for one value per frame, e.g. semantic tokens);
  ``storage`` (the on-disk dtype from the manifest);
- ``enabled(settings)``: whether ``prepare`` stores it, from its settings (the keys it records in
  the manifest; a new flag adds its key there, e.g. ``semantic``: the tokenizer dir);
- ``flag``: the prepare flag that stores it, named in the reader's error when it is missing;
- ``writer(work)``: one file's ``(T, *frame_shape)`` array from a ``FileWork`` (the wave, its
  codes, the latent when ``needs_latent``, the codec, the settings, and ``state``: a dict kept
  for the whole run, where a writer may keep a model it loaded once).

``prepare`` writes, checks and resumes every enabled stream, ``check_shard`` / ``inspect
--verify`` check it, and the reader serves it; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# The mel a crop's "mel" stream comes from (data.mel_source); values are the stored stream names.
MEL_STREAMS = {"truth": "mel", "decoded": "mel_decoded", "decoded_coarse": "mel_decoded_coarse"}
MEL_DTYPES = ("float16", "float32")


@dataclass
class FileWork:
    """What a stream writer gets for one file (shapes: S samples, T = S // 320 frames)."""

    path: str
    wave: torch.Tensor  # (S,) float32 on the prepare device
    codes: torch.Tensor  # (K, T) int64
    latent: torch.Tensor | None  # (C, T) float32, when an enabled stream needs_latent
    codec: Any  # whispergpt.codec.Codec
    settings: dict  # prepare's settings (n_mels, flags), as recorded in the manifest
    chunk_frames: int  # long files are decoded in chunks of this many frames ...
    context_frames: int  # ... with this much left context (whispergpt.data.encode)
    state: dict = field(default_factory=dict)  # one per prepare run, shared by the writers


@dataclass(frozen=True)
class Stream:
    name: str
    file: str
    kind: str  # "int" | "float"
    frame_shape: Callable[[dict], tuple[int, ...]]
    storage: Callable[[dict], np.dtype]
    enabled: Callable[[dict], bool]
    flag: str
    writer: Callable[[FileWork], np.ndarray]
    needs_latent: bool = False

    @property
    def item_dtype(self) -> torch.dtype:
        return torch.int64 if self.kind == "int" else torch.float32


STREAMS: dict[str, Stream] = {}


@dataclass(frozen=True)
class SemanticSource:
    """What ``prepare --semantic`` needs from a semantic tokenizer, built by
    ``semantic.tokenizer.semantic_source`` (the data layer does not import the tokenizer)."""

    directory: str  # the tokenizer folder, resolved: recorded in the dataset's settings
    info: dict  # the manifest's ``semantic_tokenizer`` record
    writer: Callable  # the ``semantic`` stream's writer (one file's ``(T,)`` tokens)


def register_stream(stream: Stream) -> Stream:
    if stream.kind not in ("int", "float"):
        raise ValueError(f"stream {stream.name}: kind must be int or float, got {stream.kind!r}")
    STREAMS[stream.name] = stream
    return stream


def stored_streams(manifest: dict) -> list[str]:
    """The streams a dataset stores (format 1 manifests have no ``streams`` key)."""
    if "streams" in manifest:
        return list(manifest["streams"])
    return ["codes", "mel"] + (["mel_decoded"] if manifest.get("decoded_mel") else [])


def time_major(manifest: dict) -> bool:
    return int(manifest.get("format_version", 1)) >= 2


def expected_shape(stream: Stream, manifest: dict, frames: int) -> tuple[int, ...]:
    """The on-disk shape of ``stream`` in a shard of ``frames`` frames."""
    fs = tuple(stream.frame_shape(manifest))
    if not time_major(manifest):
        assert len(fs) == 1, (stream.name, fs)  # format 1 held (rows, N) arrays only
        return (fs[0], frames)
    return (frames, *fs)


# -- the built-in streams ---------------------------------------------------------------------
def _mel_dtype(m: dict) -> np.dtype:
    return np.dtype(m.get("mel_dtype", "float32"))


def _codes(w: FileWork) -> np.ndarray:
    return w.codes.T.numpy()  # (T, K)


def _mel_of(wave: torch.Tensor, w: FileWork) -> np.ndarray:
    from whispergpt.audio import log_mel

    return log_mel(wave, n_mels=int(w.settings["n_mels"])).cpu().T.numpy()  # (T, M)


def _decoded_mel(w: FileWork, codebooks: int | None) -> np.ndarray:
    from whispergpt.data.encode import decode_long

    codes = w.codes if codebooks is None else w.codes[:codebooks]  # (K', T)
    audio = decode_long(w.codec, codes.to(w.codec.device), w.chunk_frames, w.context_frames)  # (T*320,)
    return _mel_of(audio, w)


def _frame_mel(m: dict) -> tuple[int, ...]:
    return (int(m["n_mels"]),)


register_stream(Stream(
    "codes", "codes.npy", "int", lambda m: (int(m["num_codebooks"]),), lambda m: np.dtype(np.int16),
    lambda s: True, "(always stored)", _codes,
))  # fmt: skip
register_stream(Stream(
    "mel", "mel.npy", "float", _frame_mel, _mel_dtype, lambda s: True, "(always stored)",
    lambda w: _mel_of(w.wave, w),
))  # fmt: skip
register_stream(Stream(
    "mel_decoded", "mel_decoded.npy", "float", _frame_mel, _mel_dtype, lambda s: bool(s.get("decoded_mel")),
    "`whispergpt prepare` without --no-decoded-mel", lambda w: _decoded_mel(w, None),
))  # fmt: skip
register_stream(Stream(
    "mel_decoded_coarse", "mel_decoded_coarse.npy", "float", _frame_mel, _mel_dtype,
    lambda s: bool(s.get("decoded_coarse_mel")),
    "`whispergpt prepare` (this version) without --no-decoded-mel or --no-coarse-mel", lambda w: _decoded_mel(w, 1),
))  # fmt: skip
register_stream(Stream(
    "latent", "latent.npy", "float", lambda m: (int(m["latent_dim"]),), lambda m: np.dtype(np.float32),
    lambda s: bool(s.get("latent")), "`whispergpt prepare --latent`", lambda w: w.latent.T.numpy(),
    needs_latent=True,
))  # fmt: skip


def _semantic_writer(w: FileWork) -> np.ndarray:
    raise NotImplementedError(
        "the semantic stream's writer is registered by the semantic tokenizer "
        "(register_stream(dataclasses.replace(STREAMS['semantic'], writer=...)))"
    )


# Semantic tokens, one per codec frame (prepare --semantic DIR records the tokenizer dir under
# settings["semantic"]); the shape and dtype are fixed here so the reader serves the stream already.
register_stream(Stream(
    "semantic", "semantic.npy", "int", lambda m: (), lambda m: np.dtype(np.int16),
    lambda s: bool(s.get("semantic")), "`whispergpt prepare --semantic TOKENIZER_DIR`", _semantic_writer,
))  # fmt: skip
