"""Checks of a prepared shard: the cheap one every reader runs (structure, sizes, sampled values)
and the full one (``inspect --verify``: every value)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from whispergpt.data.streams import STREAMS, Stream, expected_shape, stored_streams, time_major


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from a ``.npy`` header; reads a few hundred bytes."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise ValueError("Fortran order (prepare writes C order)")
        return tuple(shape), np.dtype(dtype), f.tell()


def _dtype_ok(stream: Stream, dtype: np.dtype, manifest: dict) -> str | None:
    """None if ``dtype`` is what ``stream`` may hold on disk, else what was expected."""
    if stream.kind == "int":  # any integer type reads the same; prepare writes the registered one
        return None if np.issubdtype(dtype, np.integer) else "integer"
    want = stream.storage(manifest)
    return None if dtype == want else str(want)


def check_shard(
    sdir: str | os.PathLike,
    manifest: dict,
    streams: Sequence[str] | None = None,
    frames: int | None = None,
    full: bool = False,
) -> str | None:
    """None if the shard ``sdir`` is sound, else one phrase saying what is wrong.

    ``streams``: the stored streams to check (default: all the manifest lists). Cheap (default):
    ``index.json`` parses and its offsets tile the frames; each stream's ``.npy`` has the dtype
    and the shape (``streams.expected_shape``: time-major in format 2) the manifest implies, ``N``
    the index's total (and ``frames``, the manifest's count, when given); every file's size is
    what its header implies; ``SAMPLED_FRAMES`` evenly spaced frames of each stream hold sound
    values (``bad_values``). ``full`` reads every value instead (``inspect --verify``).
    """
    sdir = Path(sdir)
    names = stored_streams(manifest) if streams is None else list(streams)
    try:
        index = json.loads((sdir / "index.json").read_text())
        offset = 0
        for f in index:
            if int(f["offset"]) != offset:
                return f"index.json: offset of {f['path']} is {f['offset']}, expected {offset}"
            offset += int(f["frames"])
        n_total = offset
    except FileNotFoundError:
        return "index.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"index.json is unreadable ({e})"
    if frames is not None and frames != n_total:
        return f"index.json holds {n_total} frames, the manifest says {frames}"
    for name in names:
        stream = STREAMS[name]
        path = sdir / stream.file
        try:
            shape, dtype, data_offset = npy_header(path)
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{stream.file} is missing"
        except (OSError, ValueError, SyntaxError) as e:
            return f"{stream.file} has no valid .npy header ({e})"
        want_dtype = _dtype_ok(stream, dtype, manifest)
        if want_dtype is not None:
            return f"{stream.file} has dtype {dtype}, expected {want_dtype}"
        want = expected_shape(stream, manifest, n_total)
        if shape != want:
            return f"{stream.file} has shape {shape}, expected {want}"
        need = data_offset + int(np.prod(shape)) * dtype.itemsize
        if size != need:
            state = "truncated" if size < need else "too long"
            return f"{stream.file} is {state}: {size} bytes, its header implies {need}"
    return check_values(sdir, manifest, names, sampled=not full)


def bad_values(
    name: str, block: np.ndarray, codebook_size: int, first_frame: int = 0, time_major: bool = True
) -> str | None:
    """What is wrong with the values of a block of stream ``name`` (codes in ``[0, V)``, other
    integer streams >= 0, float streams finite), or None. ``first_frame``: the block's first frame,
    for the message."""
    file = STREAMS[name].file
    if STREAMS[name].kind == "int":
        lo, hi = int(block.min(initial=0)), int(block.max(initial=0))
        if name == "codes" and (lo < 0 or hi >= codebook_size):
            return f"{file} holds codes outside [0, {codebook_size}) (min {lo}, max {hi})"
        if lo < 0:
            return f"{file} holds negative values (min {lo})"
    elif not np.isfinite(block).all():
        bad = np.argwhere(~np.isfinite(block))[0]
        return f"{file} holds non-finite values (first at frame {first_frame + int(bad[0] if time_major else bad[-1])})"
    return None


SAMPLED_FRAMES = 16  # frames per stream the cheap check reads: a few KiB per shard


def check_values(sdir: Path, manifest: dict, streams: Sequence[str], sampled: bool = False) -> str | None:
    """Every value in frame blocks (bounded memory), or with ``sampled`` only ``SAMPLED_FRAMES``
    evenly spaced frames per stream: that catches a shard bad throughout (garbage bytes, a wrong
    dtype, a writer's NaNs), not one corrupt value, which needs the full read."""
    tm = time_major(manifest)
    V = int(manifest["codebook_size"])
    for name in streams:
        stream = STREAMS[name]
        try:
            arr = np.load(sdir / stream.file, mmap_mode="r")
        except (OSError, ValueError) as e:
            return f"{stream.file} cannot be read ({e})"
        n = arr.shape[0] if tm else arr.shape[-1]
        if sampled:
            at = np.unique(np.linspace(0, max(0, n - 1), min(n, SAMPLED_FRAMES)).astype(np.int64))
            for a in at.tolist():
                problem = bad_values(name, np.asarray(arr[a : a + 1] if tm else arr[:, a : a + 1]), V, a, tm)
                if problem:
                    return problem
            continue
        per_frame = max(1, arr.size // max(1, n))
        step = max(1, (1 << 24) // per_frame)
        for a in range(0, n, step):
            block = np.asarray(arr[a : a + step] if tm else arr[:, a : a + step])
            problem = bad_values(name, block, V, a, tm)
            if problem:
                return problem
    return None
