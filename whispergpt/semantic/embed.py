"""``whispergpt embed CHECKPOINT AUDIO... --out DIR``: EnCodecMAE embeddings of audio files.

Sources are scanned and loaded exactly as ``whispergpt prepare`` does (files, folders searched
recursively, text lists; ``data.prepare.scan_sources``): a missing SRC is an error before any work,
a file that cannot be decoded (or is shorter than one 320-sample frame) is reported and skipped.

Output, for each embedded file::

    DIR/<stem>.safetensors     "embedding": (D,) float32 with --pool mean (the frames' mean),
                               (T, D) with --pool none (frame t = samples [t*320, (t+1)*320))
    DIR/index.json             checkpoint, layer, pool, input, frame_rate, dim,
                               files: [{path, file, frames, seconds}], skipped: [{path, reason}]

``<stem>`` is the file's name without suffix (``-2``, ``-3``... when two sources share a stem).
Every file is written through a temp name and renamed, so a killed run leaves whole files only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from whispergpt.audio import FRAME_RATE, SAMPLE_RATE, load_audio
from whispergpt.runtime import replacing, resolve_device, write_json_atomic
from whispergpt.semantic.features import MAEInput, check_layer, encode_frames, load_mae

POOLS = ("mean", "none")


class NoAudioEmbeddedError(ValueError):
    """Every candidate file was skipped (``index.json`` with the reasons is still written)."""


def _unique_names(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return names


def embed_files(
    checkpoint: str | Path,
    sources: Sequence[str | Path],
    out: str | Path,
    layer: int | None = None,
    pool: str = "mean",
    device: str | torch.device = "auto",
    chunk_seconds: float | None = None,
    progress: bool = True,
) -> dict:
    """Embed every audio file of ``sources`` into ``out``; returns the index (see module docstring)."""
    from safetensors.torch import save_file

    from whispergpt.data.prepare import audio_batches, scan_sources

    if pool not in POOLS:
        raise ValueError(f"--pool must be one of {POOLS}, got {pool!r}")
    if chunk_seconds is not None and chunk_seconds <= 0:
        raise ValueError(f"--chunk-seconds must be > 0, got {chunk_seconds}")
    dev = resolve_device(device)
    model, directory = load_mae(checkpoint, dev)
    layer = check_layer(model, layer)
    inputs = MAEInput.from_checkpoint(model, directory, dev)
    candidates, unreadable = scan_sources(sources)  # a missing SRC is an error before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name_of = dict(zip(map(str, candidates), _unique_names(candidates)))
    chunk = None if chunk_seconds is None else max(1, int(chunk_seconds * FRAME_RATE))
    skipped = dict(unreadable)
    files, dim = [], None
    t0, audio_s = time.perf_counter(), 0.0

    def skip(path: str, reason: str) -> None:
        skipped[path] = reason
        if progress:
            print(f"skipped {reason}", file=sys.stderr, flush=True)

    # batch_seconds=0: every file alone (the encoder attends over the whole window, so padding
    # a short file to a longer one would change its frames)
    for batch in audio_batches(list(name_of), 0.0, skip, load_audio):
        for path, wave in batch:
            frames = encode_frames(model, inputs.features(wave)[0], layer, chunk)  # (T, D)
            emb = frames.mean(dim=0) if pool == "mean" else frames  # (D,) or (T, D)
            dim = int(frames.shape[-1])
            target = out / f"{name_of[path]}.safetensors"
            meta = dict(source=path, layer=str(layer), pool=pool, frames=str(frames.shape[0]))
            with replacing(target) as tmp:
                save_file({"embedding": emb.contiguous()}, str(tmp), metadata=meta)
            seconds = wave.shape[-1] / SAMPLE_RATE
            files.append(dict(path=path, file=target.name, frames=int(frames.shape[0]), seconds=seconds))
            audio_s += seconds
            if progress:
                print(f"embedded {path} -> {target.name}", file=sys.stderr, flush=True)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    index = dict(
        checkpoint=str(directory),
        layer=layer,
        num_layers=int(model.num_layers),
        pool=pool,
        input=inputs.kind,
        frame_rate=FRAME_RATE,
        dim=dim,
        files=files,
        skipped=[dict(path=p, reason=r) for p, r in sorted(skipped.items())],
    )
    write_json_atomic(out / "index.json", index, indent=1)
    n = len(files) + len(skipped)
    print(
        f"embed: {len(files)} embedded, {len(skipped)} skipped, of {n} candidates; {audio_s:.1f} s of audio "
        f"in {elapsed:.1f} s ({audio_s / elapsed:.1f}x real time) -> {out}",
        flush=True,
    )
    if not files:
        raise NoAudioEmbeddedError(
            f"no usable audio: all {n} candidate files were skipped (reasons in {out / 'index.json'})"
        )
    return index


def load_embedding(path: str | Path) -> torch.Tensor:
    """The ``embedding`` tensor of one output file."""
    from safetensors.torch import load_file

    return load_file(str(path))["embedding"]
