"""Reader for datasets written by ``whispergpt prepare`` (layout: ``whispergpt.data.streams``).

``PreparedDataset(dir, split="train", frames=N, mel_source="truth", streams=("codes", "mel"))``
memory-maps the completed shards of one split and returns, per item, a tuple of time-aligned torch
tensors in the order of ``streams``: column ``t`` of each is frame ``t`` of the 75 Hz grid.
Nothing is loaded into RAM beyond the requested crop. Streams:

- ``codes`` ``(K, N)`` int64; ``latent`` ``(C, N)`` float32 (``Codec.latent``, with ``prepare
  --latent``); ``semantic`` ``(N,)`` int64 (``prepare --semantic``); any other registered stream
  (``whispergpt.data.streams.STREAMS``) by its name;
- ``mel`` ``(M, N)`` float32, from the array ``mel_source`` names: ``truth`` (the original audio's
  log-mel), ``decoded`` (of the codec-decoded tokens, all K codebooks: what a delay/parallel
  sampler feeds back) or ``decoded_coarse`` (of codebook 0 alone: what a coarse sampler feeds back);
  or ``codec_latent``: ``(C, N)``, not stored but computed from the crop's codes as the codec's
  dequantised latent (``codec.codec_latent``: table lookups in the codebooks of the codec the
  manifest names, loaded once by the reader; any dataset has it, no re-encode).

A stream the dataset lacks is an ``InputError`` naming the stream and the prepare flag that stores
it. Both layouts are read: format 2 (time-major, a crop is one contiguous read per array; mel
float16 or float32) and format 1 (channel-major, older datasets).

- ``crop(i, start, frames)``: an explicit window of file ``i``;
- ``file_arrays(i)``: a whole file (evaluation tiles these itself);
- ``random_crop(generator)``: a ``frames``-long window drawn uniformly over every valid
  ``(file, start)`` pair, i.e. a file is picked with probability proportional to its number of
  valid starts (``file_frames - frames + 1``) and the start is uniform; files shorter than
  ``frames`` are never picked;
- ``len(ds)`` / ``ds[j]``: deterministic tiling at stride ``frames`` (windows that would run past
  the end of a file are dropped); with ``frames=None`` an item is a whole file.

Verification: ``check_shard`` tests one shard directory against what its ``index.json`` and the
manifest say (each ``.npy`` header's dtype and shape, and the file size the header implies, so a
truncated or padded file is caught without reading it); ``full=True`` also reads the data (codes
in ``[0, V)``, other integer streams >= 0, float streams finite). The reader runs the cheap check
(and reads the codes once, for their range) on every shard it uses. ``check="auto"``: on a
dataset of up to ``CHECK_EAGER_SHARDS`` shards when it is built, so ``train`` names a broken shard
in one line before it starts; on a larger one (a merged corpus of thousands of shards) when a
process first opens the shard, so that start-up reads ``manifest.json`` alone (its shards list
each file's frames; a file's ``path`` is read from the shard's ``index.json`` when first asked
for). ``check="eager"`` / ``"lazy"`` force either;
``verify_dataset`` (``whispergpt inspect --verify``) runs the full one on every shard of the
manifest; ``prepare`` runs the cheap one on resume and re-encodes the files of a broken shard.

Only shards listed in ``manifest.json`` are read: a shard directory renamed into place by a run
that died before rewriting the manifest, or a ``.tmp-*`` directory, is invisible here (``prepare``
picks it up on resume). The dataset is cheap to construct and to pickle (memmaps are opened lazily
per process), so it can go straight into ``DataLoader`` workers.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whispergpt.codec.codec import codec_latent
from whispergpt.data.streams import MEL_STREAMS, STREAMS, stored_streams, time_major
from whispergpt.data.verify import check_shard, check_values, npy_header
from whispergpt.errors import InputError

FORMAT_VERSION = 2  # what prepare writes: time-major shards (whispergpt.data.streams)
READABLE_FORMATS = (1, 2)  # 1: channel-major shards, before named streams
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
# which array a crop's mel comes from (data.mel_source): the original audio's, or the codec-decoded
# tokens' audio's (all codebooks, or codebook 0 alone)
MEL_SOURCES = {source: STREAMS[name].file for source, name in MEL_STREAMS.items()}
# data.mel_source computed from the codes rather than read (codec.codec_latent)
CODEC_LATENT = "codec_latent"
DEFAULT_STREAMS = ("codes", "mel")
_NP_ITEM = {"int": np.int64, "float": np.float32}
# manifest keys that must agree for several prepared folders to be read as one dataset
_UNION_KEYS = ("num_codebooks", "codebook_size", "n_mels", "frame_rate", "sample_rate", "codec", "bandwidth")
# check="auto": up to this many shards are checked when the reader is built (a broken one is named
# before training starts); beyond, each shard is checked when a process first opens it, so that
# start-up reads the manifest alone (no per-shard I/O for a corpus of thousands of shards)
CHECK_EAGER_SHARDS = 64
CHECKS = ("auto", "eager", "lazy")


def read_manifest(directory: str | os.PathLike) -> dict:
    """Load and sanity-check ``DIR/manifest.json``; ``ValueError`` with the reason otherwise."""
    path = Path(directory) / MANIFEST
    if not path.is_file() and (Path(directory) / "parts").is_dir():  # data.merge.PARTS_DIR
        raise ValueError(
            f"{directory}: holds the parts of a sharded prepare, not yet merged; run "
            f"`whispergpt prepare --merge {directory}` once every rank has finished"
        )
    if not path.is_file():
        raise ValueError(
            f"{directory}: not a prepared dataset (expected {path}; run `whispergpt prepare` first)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: manifest is not valid JSON ({e})") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_FORMATS:
        raise ValueError(
            f"{path}: unsupported format_version {version!r}, expected one of {list(READABLE_FORMATS)} "
            "(a newer whispergpt wrote it? upgrade, or prepare the data again)"
        )
    required = ["num_codebooks", "codebook_size", "n_mels", "frame_rate", "sample_rate", "splits", "shards"]
    missing = [k for k in required + (["streams"] if version >= 2 else []) if k not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks keys {missing}")
    unknown = [s for s in stored_streams(manifest) if s not in STREAMS]
    if unknown:
        raise ValueError(f"{path}: unknown streams {unknown} (known: {sorted(STREAMS)}); upgrade whispergpt")
    return manifest


def codec_latent_table(manifest: dict) -> torch.Tensor:
    """``(K, V, C)``: the codebooks of the dataset's codec (``manifest["codec"]``, opened at its
    recorded bandwidth) that ``mel_source: codec_latent`` looks the codes up in."""
    from whispergpt.codec import open_codec

    name, K = manifest.get("codec"), int(manifest["num_codebooks"])
    if not name:
        raise ValueError("mel_source codec_latent needs the dataset's codec, and its manifest names none")
    try:
        codec, _ = open_codec(
            name,
            num_codebooks=K,
            codebook_size=int(manifest["codebook_size"]),
            bandwidth=manifest.get("bandwidth"),
        )
    except OSError as e:
        raise ValueError(
            f"mel_source codec_latent needs the dataset's codec {name!r}, which cannot be opened: {e}"
        ) from e
    return codec.codebook_table(K)


def verify_dataset(directory: str | os.PathLike, full: bool = True) -> tuple[list[tuple[str, str]], int]:
    """Check every shard of ``DIR/manifest.json`` (``check_shard``); ``([(shard, problem)], n_shards)``."""
    directory = Path(directory)
    m = read_manifest(directory)
    broken = []
    for shard in m["shards"]:
        problem = check_shard(
            directory / SHARDS_DIR / shard["name"],
            m,
            frames=int(shard["frames"]) if "frames" in shard else None,
            full=full,
        )
        if problem is not None:
            broken.append((shard["name"], problem))
    return broken, len(m["shards"])


def broken_shard_error(root: str | os.PathLike, shard: str, problem: str) -> InputError:
    """The one-line error for a broken shard, with what to do about it."""
    return InputError(
        f"broken shard {shard}: {problem}",
        Path(root) / SHARDS_DIR / shard,
        f"rerun `whispergpt prepare` with the same sources and --out {root} to re-encode it "
        f"(`whispergpt inspect --verify {root}` checks every shard)",
    )


def missing_stream_error(root: str | os.PathLike, name: str, asked: str) -> InputError:
    """A dataset lacks stored stream ``name`` (asked for as ``asked``): say which flag stores it."""
    what = f"the dataset has no {name!r} stream" + (f" (mel_source {asked})" if asked != name else "")
    hint = f"prepare it again into a new --out with {STREAMS[name].flag}"
    if name == "mel_decoded_coarse":
        hint += "; or train with data.mel_source=truth"
    elif name == "mel_decoded":
        hint += " (it was prepared with --no-decoded-mel or by an older version); or use mel_source truth"
    return InputError(what, root, hint)


class _Rows:
    """Frames ``[a, b)`` of a time-major ``.npy`` with one ``pread`` and no readahead.

    A memmap crop faults pages in and the kernel's readahead (8 MiB on some VMs) reads far past
    the crop: bench_loader measured ~12x the crop's bytes read from disk. Here the file is opened
    per read (no descriptor is held, so any number of shards can be open) with
    ``POSIX_FADV_RANDOM``, and exactly the crop's bytes are read into a fresh array.
    """

    def __init__(self, path: Path):
        shape, self.dtype, self.offset = npy_header(path)
        self.path, self.frame_shape = path, shape[1:]
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize

    def read(self, a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, *self.frame_shape), self.dtype)
        view = memoryview(out).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            f.seek(self.offset + a * self.frame_bytes)
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{self.path}: ends before frame {b} (truncated?)")
                got += n
        return out


class _IndexPaths:
    """Each shard's ``index.json``, read when first needed (a file's path, a shard's check)."""

    def __init__(self, directories: list[Path]):
        self.directories, self.cache = directories, {}

    def index(self, key: tuple[int, str]) -> list[dict]:
        if key not in self.cache:
            path = self.directories[key[0]] / SHARDS_DIR / key[1] / "index.json"
            self.cache[key] = json.loads(path.read_text())
        return self.cache[key]

    def __getstate__(self) -> dict:
        return dict(directories=self.directories, cache={})


class _Entry(dict):
    """A file of ``PreparedDataset.files``: its ``path`` is read from the shard's index on first access."""

    def __init__(self, paths: _IndexPaths, key: tuple[int, str], pos: int):
        super().__init__()
        self.paths, self.key, self.pos = paths, key, pos

    def __missing__(self, name: str):
        if name != "path":
            raise KeyError(name)
        self["path"] = self.paths.index(self.key)[self.pos]["path"]
        return self["path"]

    def get(self, name: str, default=None):
        return self[name] if name == "path" or name in self else default


class PreparedDataset(torch.utils.data.Dataset):
    """Aligned crops of one split of a prepared dataset: a tuple of tensors in the order of ``streams``."""

    def __init__(
        self,
        directory: str | os.PathLike | list[str | os.PathLike],
        split: str = "train",
        frames: int | None = None,
        mel_source: str = "truth",
        streams: Sequence[str] = DEFAULT_STREAMS,
        check: str = "auto",
    ):
        # Several prepared folders (e.g. speech and music prepared apart) read as one dataset when
        # they agree on the codec and the grid; files keep their order, folder by folder.
        dirs = [directory] if isinstance(directory, (str, os.PathLike)) else list(directory)
        if not dirs:
            raise ValueError("PreparedDataset needs at least one dataset directory, got an empty list")
        self.directories = [Path(d) for d in dirs]
        self.directory = self.directories[0]
        self.manifest = read_manifest(self.directory)
        self.manifests = [self.manifest] + [read_manifest(d) for d in self.directories[1:]]
        for d, m in zip(self.directories[1:], self.manifests[1:]):
            for key in _UNION_KEYS:
                if m.get(key) != self.manifest.get(key):
                    raise ValueError(
                        f"{d}: {key}={m.get(key)!r} differs from {self.directory} ({key}="
                        f"{self.manifest.get(key)!r}); datasets read together must share codec and grid"
                    )
        for d, m in zip(self.directories, self.manifests):
            if split not in m["splits"]:
                raise ValueError(f"{d}: unknown split {split!r}, expected one of {sorted(m['splits'])}")
        if frames is not None and (not isinstance(frames, int) or frames < 1):
            raise ValueError(f"frames must be a positive int or None, got {frames!r}")
        if mel_source not in MEL_SOURCES and mel_source != CODEC_LATENT:
            raise ValueError(f"mel_source must be one of {[*MEL_SOURCES, CODEC_LATENT]}, got {mel_source!r}")
        streams = (streams,) if isinstance(streams, str) else tuple(streams)
        if not streams:
            raise ValueError("streams must name at least one stream, got ()")
        known = ["mel"] + sorted(STREAMS)
        unknown = [s for s in streams if s not in known]
        if unknown:
            raise ValueError(f"unknown streams {unknown}; expected some of {known}")
        self.mel_source = mel_source
        self.streams = streams
        # the stored stream each requested name reads ("mel" through mel_source; codec_latent: the codes)
        latent = mel_source == CODEC_LATENT
        self._stored = tuple(
            ("codes" if latent else MEL_STREAMS[mel_source]) if s == "mel" else s for s in streams
        )
        self._latent_at = streams.index("mel") if latent and "mel" in streams else None
        self.latent_table = codec_latent_table(self.manifest) if latent else None  # (K, V, C)
        for d, m in zip(self.directories, self.manifests):
            have = stored_streams(m)
            for asked, name in zip(streams, self._stored):
                if name not in have:
                    raise missing_stream_error(d, name, mel_source if asked == "mel" else name)
        if "latent" in self._stored:
            for d, m in zip(self.directories[1:], self.manifests[1:]):
                if m.get("latent_dim") != self.manifest.get("latent_dim"):
                    raise ValueError(f"{d}: latent_dim differs from {self.directory}'s")
        if "semantic" in self._stored:  # tokens of two tokenizers mean different things
            for d, m in zip(self.directories[1:], self.manifests[1:]):
                a, b = m.get("semantic_tokenizer"), self.manifest.get("semantic_tokenizer")
                if (m.get("semantic"), a) != (self.manifest.get("semantic"), b):
                    raise ValueError(
                        f"{d}: semantic tokenizer {m.get('semantic')} differs from {self.directory}'s "
                        f"({self.manifest.get('semantic')}); prepare both with the same --semantic DIR"
                    )
        self.split = split
        self.frames = frames
        self._time_major = [time_major(m) for m in self.manifests]
        self._arrays: dict[tuple[int, str], tuple[np.ndarray, ...]] = {}  # (dir, shard) -> memmaps
        if check not in CHECKS:
            raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
        n_shards = sum(sh["split"] == split for m in self.manifests for sh in m["shards"])
        eager = check == "eager" or (check == "auto" and n_shards <= CHECK_EAGER_SHARDS)
        self._checked: set[tuple[int, str]] = set()  # shards this process has checked
        self._shard_frames: dict[tuple[int, str], dict] = {}
        self._paths = _IndexPaths(self.directories)

        self.files: list[dict] = []
        for root_index, (root, manifest) in enumerate(zip(self.directories, self.manifests)):
            self._read_shards(root_index, root, manifest, split, eager)
        self.total_frames = sum(f["frames"] for f in self.files)
        self._build_tiling()

    def _read_shards(self, root_index: int, root: Path, manifest: dict, split: str, eager: bool) -> None:
        for shard in manifest["shards"]:
            if shard["split"] != split:
                continue
            key = (root_index, shard["name"])
            self._shard_frames[key] = shard
            if eager:
                self._check(key)
            if eager or "file_frames" not in shard:  # datasets prepared before file_frames: the index
                index = json.loads((root / SHARDS_DIR / shard["name"] / "index.json").read_text())
            else:  # the manifest's counts alone; paths come from index.json when asked for
                index = [dict(frames=n) for n in shard["file_frames"]]
            offset = 0
            for pos, f in enumerate(index):
                n = int(f["frames"])
                entry = _Entry(self._paths, key, pos)
                entry.update(frames=n, shard=shard["name"], offset=int(f.get("offset", offset)),
                             seconds=float(f.get("seconds", n / self.frame_rate)), root=root_index)  # fmt: skip
                if "path" in f:
                    entry["path"] = f["path"]
                self.files.append(entry)
                offset += n

    def _check(self, key: tuple[int, str]) -> None:
        """The cheap check of one shard, once per process, and its codes read once: an id >= V
        would silently read the next codebook's embedding rows, and the training step does no
        range check (no host-device sync)."""
        if key in self._checked:
            return
        root_index, name = key
        root, manifest, shard = (
            self.directories[root_index],
            self.manifests[root_index],
            self._shard_frames[key],
        )
        sdir = root / SHARDS_DIR / name
        problem = check_shard(
            sdir, manifest, sorted(set(self._stored) | {"codes"}), frames=shard.get("frames")
        )
        if problem is None and "file_frames" in shard:
            index = self._paths.index(key)
            if [int(e["frames"]) for e in index] != [int(n) for n in shard["file_frames"]]:
                problem = "index.json disagrees with the manifest's file_frames"
        if problem is not None:  # header + size only: names a truncated file in one line
            err = broken_shard_error(root, name, problem)
            if torch.utils.data.get_worker_info() is not None:
                # a DataLoader worker re-raises an exception class with a `message` attribute as
                # cls(message=...), which InputError's signature refuses (a TypeError): plain ValueError
                raise ValueError(str(err))
            raise err
        bad_codes = check_values(sdir, manifest, ["codes"])
        if bad_codes is not None:
            raise ValueError(f"{sdir}: {bad_codes}; prepare the data again with this dataset's codec")
        self._checked.add(key)

    # -- manifest properties ------------------------------------------------------------------
    @property
    def num_codebooks(self) -> int:
        return int(self.manifest["num_codebooks"])

    @property
    def codebook_size(self) -> int:
        return int(self.manifest["codebook_size"])

    @property
    def n_mels(self) -> int:
        """Rows of the ``mel`` stream: the manifest's n_mels, or C with ``codec_latent``."""
        if self.mel_source == CODEC_LATENT:
            return int(self.latent_table.shape[-1])
        return int(self.manifest["n_mels"])

    @property
    def frame_rate(self) -> int:
        return int(self.manifest["frame_rate"])

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    # -- pickling: readers and memmaps are per process ----------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _open(self, root_index: int, shard: str) -> tuple:
        """Per process, per shard: a ``_Rows`` reader per stream (format 2) or memmaps (format 1)."""
        arrays = self._arrays.get((root_index, shard))
        if arrays is None:
            self._check((root_index, shard))
            sdir = self.directories[root_index] / SHARDS_DIR / shard
            paths = [sdir / STREAMS[n].file for n in self._stored]
            try:
                if self._time_major[root_index]:
                    arrays = tuple(_Rows(p) for p in paths)
                else:
                    arrays = tuple(np.load(p, mmap_mode="r") for p in paths)
            except (OSError, ValueError) as e:
                raise ValueError(f"{sdir}: cannot open shard arrays ({e})") from e
            self._arrays[(root_index, shard)] = arrays
        return arrays

    # -- access -------------------------------------------------------------------------------
    def _check_file(self, file_index: int) -> dict:
        if not 0 <= file_index < len(self.files):
            raise IndexError(
                f"file index {file_index} out of range for {len(self.files)} files ({self.split})"
            )
        return self.files[file_index]

    def crop(self, file_index: int, start: int, frames: int) -> tuple[torch.Tensor, ...]:
        """Frames ``[start, start + frames)`` of file ``file_index``: one tensor per stream,
        ``(rows, N)`` (``(N,)`` for one value per frame), private copies in the item dtype. From a
        format-2 dataset they are transposed views of time-major ``(N, rows)`` memory (not
        contiguous: ``.contiguous()`` where a layout matters)."""
        f = self._check_file(file_index)
        if frames < 1 or start < 0 or start + frames > f["frames"]:
            raise ValueError(
                f"crop [{start}, {start + frames}) is outside file {file_index} ({f['path']}) of {f['frames']} frames"
            )
        arrays = self._open(f["root"], f["shard"])
        a, b = f["offset"] + start, f["offset"] + start + frames
        out = []
        if self._time_major[f["root"]]:
            for name, rows in zip(self._stored, arrays):
                block = torch.from_numpy(rows.read(a, b))  # (N, rows): one contiguous read
                # (rows, N) view of time-major memory: no transposition here (it costs ~15x the
                # read); torch.stack in collate makes it contiguous, the model reads mel time-major
                out.append(block.to(STREAMS[name].item_dtype).movedim(0, -1))
        else:  # format 1: (rows, N_total), one strided read per row
            for name, arr in zip(self._stored, arrays):
                out.append(torch.from_numpy(np.array(arr[:, a:b], dtype=_NP_ITEM[STREAMS[name].kind])))
        if self._latent_at is not None:  # codes (K, N) -> the codec's latent (C, N)
            out[self._latent_at] = codec_latent(self.latent_table, out[self._latent_at])
        return tuple(out)

    def file_arrays(self, file_index: int) -> tuple[torch.Tensor, ...]:
        """The whole of file ``file_index``: one ``(rows, T)`` tensor per stream."""
        return self.crop(file_index, 0, self._check_file(file_index)["frames"])

    def random_crop(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """A uniform draw over all valid ``(file, start)`` windows of ``frames`` frames."""
        if self.frames is None:
            raise ValueError("random_crop needs PreparedDataset(..., frames=N)")
        if not self._starts_cum or self._starts_cum[-1] == 0:
            longest = max((f["frames"] for f in self.files), default=0)
            raise ValueError(
                f"no file in split {self.split!r} has >= {self.frames} frames (longest has {longest}); "
                "use a shorter context or longer audio"
            )
        r = int(torch.randint(self._starts_cum[-1], (1,), generator=generator))
        j = bisect.bisect_right(self._starts_cum, r)
        start = r - (self._starts_cum[j - 1] if j else 0)
        return self.crop(self._starts_file[j], start, self.frames)

    def _build_tiling(self) -> None:
        # cumulative counts over eligible files: valid random starts and stride-`frames` tiles
        self._starts_file: list[int] = []
        self._starts_cum: list[int] = []
        self._tiles_cum: list[int] = []
        total_starts = total_tiles = 0
        for i, f in enumerate(self.files):
            if self.frames is None or f["frames"] < self.frames:
                continue
            total_starts += f["frames"] - self.frames + 1
            total_tiles += f["frames"] // self.frames
            self._starts_file.append(i)
            self._starts_cum.append(total_starts)
            self._tiles_cum.append(total_tiles)

    def __len__(self) -> int:
        if self.frames is None:
            return len(self.files)
        return self._tiles_cum[-1] if self._tiles_cum else 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        if self.frames is None:
            return self.file_arrays(index)
        j = bisect.bisect_right(self._tiles_cum, index)
        tile = index - (self._tiles_cum[j - 1] if j else 0)
        return self.crop(self._starts_file[j], tile * self.frames, self.frames)

    def __repr__(self) -> str:
        where = str(self.directory) if len(self.directories) == 1 else [str(d) for d in self.directories]
        return (
            f"PreparedDataset({where!r}, split={self.split!r}, frames={self.frames}, "
            f"files={len(self.files)}, total_frames={self.total_frames}, K={self.num_codebooks}, M={self.n_mels}, "
            f"streams={self.streams})"
        )
