"""Where ``prepare``'s candidates come from: files, folders, text lists, manifests, Hugging Face datasets.

A SRC is, in this order of checks:

- a folder holding a ``datasets`` ``save_to_disk`` (``state.json``, or ``dataset_dict.json``
  whose ``--hf-split`` is taken, default ``train``);
- a folder: searched recursively for ``audio.AUDIO_EXTENSIONS`` (any case);
- a JSON-lines (``.jsonl``, ``.ndjson``) or CSV/TSV (``.csv``, ``.tsv``) manifest: one row per
  file, its path in the ``--audio-column`` column if there is one, else the first of
  ``PATH_COLUMNS`` (relative paths resolve against the manifest's folder); every other column goes
  into the file's index entry as ``meta``;
- a text list (``.txt``, ``.lst``, ``.list``, ``.scp``): one path per line, ``#`` comments;
- any other file: audio (the decoder judges);
- a missing path shaped ``owner/name``: a hub dataset, loaded with ``datasets.load_dataset``
  (``--hf-split``, ``--hf-streaming``; offline from the local hub cache under ``HF_HUB_OFFLINE=1``).

Every candidate has a stable id, its key in the split, the resume and ``skipped``: a file's
resolved path; a manifest row's ``--id-column`` value, else its resolved path; a dataset row's
``--id-column`` value, else ``<dataset fingerprint>:<row index>``. A dataset's audio column is
read with ``Audio(decode=False)`` (its path or its bytes; a plain ``{array, sampling_rate}`` column
is taken as samples) and decoded by ``audio.decode_audio``
(soundfile + soxr): recent ``datasets`` decode audio through torchcodec and FFmpeg, which are not
needed here. Other scalar columns of a dataset row go into ``meta`` as well.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioLoadError, decode_audio, load_audio, resample

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")
PATH_COLUMNS = ("path", "audio_filepath", "audio_path", "filepath", "file", "wav")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HFOptions:
    """How dataset and manifest SRCs are read (the ``--hf-*``, ``--audio-column``, ``--id-column`` flags)."""

    split: str | None = None  # None: "train"
    audio_column: str = "audio"
    id_column: str | None = None
    streaming: bool = False


class Candidates:
    """The candidates of a set of SRCs: ``keys`` (their ids, in processing order), ``skipped``
    (``{id: reason}`` for those that can never be read), ``load(id)`` and ``meta(id)``."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.skipped: dict[str, str] = {}
        self._meta: dict[str, dict] = {}
        self._rows: dict[str, tuple[int, int]] = {}  # id -> (row source, row index)
        self._sources: list[_RowSource] = []

    def load(self, key: str) -> torch.Tensor:
        """``(S,)`` float32 audio of candidate ``key``; ``AudioLoadError`` naming it when it does not decode."""
        ref = self._rows.get(key)
        if ref is None:
            return load_audio(key)
        source, row = ref
        return self._sources[source].load(row, key, self._meta)

    def meta(self, key: str) -> dict | None:
        """The index entry's metadata of ``key`` (manifest / dataset columns), once loaded; or None."""
        return self._meta.get(key)

    def is_streaming(self) -> bool:
        return any(isinstance(s, _HFRows) and s.streaming for s in self._sources)


def scan_sources(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], dict[str, str]]:
    """Files / folders (recursive) / text lists only: ``(sorted resolved paths, skipped)``.

    ``skipped``: ``{path: reason}`` for paths that can never be read (a dangling symlink with an
    audio suffix, a folder that cannot be listed). A missing SRC (or a path named in a list that
    does not exist) is a ``ValueError``; files that exist but do not decode are left to the loader.
    """
    if not sources:
        raise ValueError("prepare needs at least one SRC (audio file, folder or text list of paths)")
    found: set[Path] = set()
    skipped: dict[str, str] = {}
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            _walk(p, found, skipped)
        elif p.is_file() and p.suffix.lower() not in LIST_SUFFIXES:
            found.add(p.resolve())  # audio, or a file with an unknown suffix: let the decoder judge
        elif p.is_file():
            _read_list(p, found, skipped)
        elif p.is_symlink():
            skipped[str(p.absolute())] = f"{p}: dangling symlink to {os.readlink(p)}"
        else:
            raise ValueError(f"SRC {src}: no such file or folder")
    return sorted(found, key=str), {k: v for k, v in skipped.items() if Path(k) not in found}


def scan_candidates(sources: Sequence[str | os.PathLike], options: HFOptions | None = None) -> Candidates:
    """Every SRC kind (module docstring) -> ``Candidates``. ``ValueError`` before any decoding for
    a missing SRC, a manifest without a path column, a dataset without the audio or id column."""
    opts = options or HFOptions()
    if not sources:
        raise ValueError("prepare needs at least one SRC (audio file, folder, manifest, dataset or list)")
    plain: list[str | os.PathLike] = []
    out = Candidates()
    rows: dict[str, tuple[int, int]] = {}
    files_meta: dict[str, dict] = {}
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            _add_dataset(out, rows, _open_dataset(str(src), p, opts), opts)
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            _add_manifest(out, rows, files_meta, p, opts)
        elif not p.exists() and not p.is_symlink() and HUB_ID.match(str(src)):
            _add_dataset(out, rows, _open_dataset(str(src), None, opts), opts)
        else:
            plain.append(src)
    paths, skipped = scan_sources(plain) if plain else ([], {})
    file_keys = sorted({str(q) for q in paths} | set(files_meta))
    for k in file_keys:
        if k in rows:
            raise ValueError(f"candidate id {k!r} names both a file and a dataset row; ids must be unique")
    out.keys = file_keys + list(rows)
    out.skipped.update(skipped)
    out._meta.update(files_meta)
    out._rows = rows
    return out


def _walk(folder: Path, found: set[Path], skipped: dict[str, str]) -> None:
    """Audio files under ``folder`` (symlinked folders are not followed, as ``Path.rglob``)."""

    def unreadable(e: OSError) -> None:
        skipped[str(Path(e.filename).absolute())] = f"{e.filename}: cannot list folder ({e.strerror})"

    for dirpath, _, filenames in os.walk(folder, onerror=unreadable):
        for name in filenames:
            q = Path(dirpath) / name
            if q.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if q.is_file():
                found.add(q.resolve())
            elif q.is_symlink():
                skipped[str(q.absolute())] = f"{q}: dangling symlink to {os.readlink(q)}"


def _read_list(list_path: Path, found: set[Path], skipped: dict[str, str]) -> None:
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = Path(line).expanduser()
        if not p.is_absolute():
            p = list_path.parent / p
        if p.is_symlink() and not p.exists():
            skipped[str(p.absolute())] = f"{list_path}:{n}: {p}: dangling symlink to {os.readlink(p)}"
        elif not p.exists():
            raise ValueError(f"{list_path}:{n}: listed path {line!r} does not exist")
        elif p.is_dir():
            _walk(p, found, skipped)
        else:
            found.add(p.resolve())


# -- manifests ----------------------------------------------------------------------------------
def _manifest_rows(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a JSON-lines or CSV/TSV manifest and its columns (first-seen order)."""
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        return rows, columns
    rows, columns = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _add_manifest(
    out: Candidates, rows: dict, files_meta: dict[str, dict], path: Path, opts: HFOptions
) -> None:
    table, columns = _manifest_rows(path)
    col = (
        opts.audio_column
        if opts.audio_column in columns
        else next((c for c in PATH_COLUMNS if c in columns), None)
    )
    if col is None:
        raise ValueError(
            f"{path}: no path column (--audio-column {opts.audio_column!r} or one of {list(PATH_COLUMNS)}); "
            f"it has columns {columns}"
        )
    if opts.id_column is not None and opts.id_column not in columns:
        raise ValueError(f"{path}: no id column {opts.id_column!r} (--id-column); it has columns {columns}")
    source = _ManifestRows([])
    out._sources.append(source)
    for n, row in enumerate(table, 2 if path.suffix.lower() in (".csv", ".tsv") else 1):
        value = str(row.get(col) or "").strip()
        p = Path(value).expanduser()
        p = p if p.is_absolute() else path.parent / p
        meta = {k: v for k, v in row.items() if k not in (col, opts.id_column)}
        key = str(row[opts.id_column]) if opts.id_column else str(p.resolve())
        if key in rows or key in files_meta:
            raise ValueError(f"{path}:{n}: id {key!r} appears twice; ids must be unique")
        if not value or not p.is_file():
            out.skipped[key] = f"{path}:{n}: listed path {value!r} is not a file"
            continue
        if opts.id_column:
            rows[key] = (len(out._sources) - 1, len(source.paths))
            source.paths.append(str(p))
            out._meta[key] = meta
        else:
            files_meta[key] = meta


# -- Hugging Face datasets --------------------------------------------------------------------------
def _open_dataset(src: str, local: Path | None, opts: HFOptions):
    try:
        import datasets
    except ImportError as e:
        what = (
            "a Hugging Face dataset folder" if local is not None else "no such file or folder; as a hub id it"
        )
        raise ValueError(f"SRC {src}: {what} needs `pip install 'whispergpt[hf]'`") from e
    split = opts.split or "train"
    if local is not None:
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{src}: no split {split!r} (--hf-split); it has splits {sorted(ds)}")
            ds = ds[split]
        # the fingerprint save_to_disk stored: the same on every load, wherever the folder is moved
        state = next((f for f in (local / "state.json", local / split / "state.json") if f.is_file()), None)
        fingerprint = json.loads(state.read_text())["_fingerprint"] if state else ds._fingerprint
        if opts.streaming:
            ds = ds.to_iterable_dataset()
    else:
        try:
            ds = datasets.load_dataset(src, split=split, streaming=opts.streaming)
        except Exception as e:  # the hub, the cache and the builders raise many types
            raise ValueError(
                f"SRC {src}: no such file or folder, and not a loadable Hugging Face dataset "
                f"({type(e).__name__}: {e})"
            ) from e
        fingerprint = getattr(ds, "_fingerprint", None)
        if opts.streaming or fingerprint is None:  # an iterable dataset has none: name + split
            fingerprint = hashlib.sha1(f"{src}|{split}".encode()).hexdigest()[:16]
    columns = list(ds.column_names or [])
    if opts.audio_column not in columns:
        raise ValueError(
            f"{src}: no audio column {opts.audio_column!r} (--audio-column); it has columns {columns}"
        )
    if opts.id_column is not None and opts.id_column not in columns:
        raise ValueError(f"{src}: no id column {opts.id_column!r} (--id-column); it has columns {columns}")
    if isinstance((ds.features or {}).get(opts.audio_column), datasets.Audio):
        ds = ds.cast_column(opts.audio_column, datasets.Audio(decode=False))  # path/bytes: no torchcodec
    return _HFRows(src, ds, opts.audio_column, fingerprint, opts.streaming, opts.id_column)


def _add_dataset(out: Candidates, rows: dict, source: _HFRows, opts: HFOptions) -> None:
    out._sources.append(source)
    index = len(out._sources) - 1
    if opts.id_column is not None:
        ids = source.column(opts.id_column)
    else:
        ids = [f"{source.fingerprint}:{i}" for i in range(source.num_rows())]
    for i, key in enumerate(ids):
        key = str(key)
        if key in rows:
            raise ValueError(f"{source.name}: id {key!r} appears twice (--id-column); ids must be unique")
        rows[key] = (index, i)


class _RowSource:
    def load(self, row: int, key: str, meta: dict[str, dict]) -> torch.Tensor:
        raise NotImplementedError


class _ManifestRows(_RowSource):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def load(self, row: int, key: str, meta: dict[str, dict]) -> torch.Tensor:
        return load_audio(self.paths[row])


class _HFRows(_RowSource):
    """One dataset: rows by index (map-style) or from a forward cursor (streaming, rows asked in order)."""

    def __init__(
        self, name: str, ds, column: str, fingerprint: str, streaming: bool, id_column: str | None = None
    ) -> None:
        self.name, self.ds, self.column_name, self.fingerprint = name, ds, column, fingerprint
        self.streaming, self.id_column = streaming, id_column
        self._it, self._next = None, 0

    def column(self, name: str) -> list:
        if not self.streaming:
            return list(self.ds[name])
        return [ex[name] for ex in self.ds.select_columns([name])]  # one pass, without the audio

    def num_rows(self) -> int:
        if not self.streaming:
            return len(self.ds)
        others = [c for c in self.ds.column_names if c != self.column_name]
        return sum(1 for _ in (self.ds.select_columns(others[:1]) if others else self.ds))

    def _row(self, row: int) -> dict:
        if not self.streaming:
            return self.ds[row]
        if self._it is None or row < self._next:  # asked for an earlier row: start the stream again
            self._it, self._next = iter(self.ds), 0
        for ex in self._it:
            self._next += 1
            if self._next - 1 == row:
                return ex
        raise AudioLoadError(f"{self.name}: row {row} is no longer in the stream")

    def load(self, row: int, key: str, meta: dict[str, dict]) -> torch.Tensor:
        ex = self._row(row)
        meta[key] = {
            k: v for k, v in ex.items() if k not in (self.column_name, self.id_column) and _scalar(v)
        }
        value = ex[self.column_name]
        if isinstance(value, dict) and value.get("bytes") is not None:
            return decode_audio(io.BytesIO(value["bytes"]), f"{key} ({value.get('path') or 'bytes'})")
        if isinstance(value, dict) and value.get("array") is not None:  # decoded samples stored as a column
            return _from_array(value, key)
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, str) or not path:
            raise AudioLoadError(
                f"{key}: the audio column holds neither bytes nor a path ({type(value).__name__})"
            )
        try:
            return load_audio(path)
        except AudioLoadError as e:
            raise AudioLoadError(f"{key}: {e}") from e


def _from_array(value: dict, key: str) -> torch.Tensor:
    """``{"array", "sampling_rate"}`` (samples, or (samples, channels)) -> ``(S,)`` at 24 kHz, checked as a file is."""
    try:
        data = np.asarray(value["array"], dtype=np.float32)
        sr = int(value["sampling_rate"])
    except (KeyError, TypeError, ValueError) as e:
        raise AudioLoadError(f"{key}: the audio column's array is unusable ({type(e).__name__}: {e})") from e
    data = data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.reshape(-1)
    if data.size == 0:
        raise AudioLoadError(f"{key}: the audio column holds no samples")
    if not np.isfinite(data).all():
        raise AudioLoadError(f"{key}: {int((~np.isfinite(data)).sum())} non-finite (NaN/inf) samples")
    return torch.from_numpy(np.ascontiguousarray(resample(data, sr, SAMPLE_RATE), dtype=np.float32))


def _scalar(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)
