"""``prepare``: encode audio into a memory-mapped training set (the CLI is ``cli/prepare.py``).

Usage::

    whispergpt prepare SRC... --out DIR --codec NAME_OR_PATH [--bandwidth 6] [--n-mels 80]
                       [--val-fraction 0.05] [--seed 0] [--batch-seconds 60] [--shard-seconds 1800]
                       [--device auto|cpu|cuda] [--augment RECIPE.yaml [--copies 1]]
                       [--no-decoded-mel] [--no-coarse-mel] [--mel-dtype float16|float32] [--latent]
                       [--semantic TOKENIZER_DIR] [--hf-split S] [--audio-column audio] [--id-column C]
                       [--hf-streaming] [--shard I/N]
    whispergpt prepare --merge DIR
    whispergpt inspect DIR [--max-skipped 10]

SRC is an audio file, a folder (searched recursively for ``audio.AUDIO_EXTENSIONS``, any case), a
text file listing paths (one per line, ``#`` comments, relative paths resolved against the list
file's folder), a JSON-lines/CSV manifest, a ``datasets`` ``save_to_disk`` folder or a hub id
(``whispergpt.data.sources``). A missing SRC, a manifest without a path column or a dataset without
the audio column is an error before any work is done. Each candidate has a stable id (a file's
resolved path; a row's ``--id-column`` value, else ``fingerprint:row``): the index entry's
``path`` holds it, and it keys the split, resume and ``skipped``. ``--shard I/N`` (or the rank of
``accelerate launch``) prepares the candidates whose id hashes to ``I`` as part ``I`` of ``DIR``,
``--merge DIR`` joins the parts (``whispergpt.data.merge``).

Dataset layout (``format_version`` 2)
-------------------------------------
::

    DIR/manifest.json    sample_rate, frame_rate, hop_length, num_codebooks (K), codebook_size (V),
                         n_mels (M), codec, bandwidth, codec_config, seed, val_fraction, augment,
                         decoded_mel, decoded_coarse_mel, latent, mel_dtype, streams, [latent_dim],
                         semantic (tokenizer dir or null), [semantic_tokenizer: clusters, layer, rate...],
                         splits: {train: {files, frames, seconds}, val: {...}},
                         shards: [{name, split, files, frames, file_frames}], skipped: [{path, reason}],
                         format_version (file_frames: each file's frames, so the reader starts from here)
    DIR/shards/<split>-<NNNNN>/   one completed shard: one time-major ``.npy`` per stored stream
                                  (codes, mel, mel_decoded, mel_decoded_coarse, latent; see
                                  ``whispergpt.data.streams``) + index.json

Column ``t`` of a file's codes and mel is frame ``t`` (samples ``[t*320, (t+1)*320)``); a file of
``S`` samples has ``S // 320`` frames (trailing partial hop dropped, as both ``Codec.encode`` and
``log_mel`` do). Read it with ``whispergpt.data.PreparedDataset``. The decoded mels (on by
default; ``--no-decoded-mel`` drops both, ``--no-coarse-mel`` the second) are what sampling feeds back: ``mel_decoded`` decodes
all K codebooks (delay/parallel models), ``mel_decoded_coarse`` codebook 0 alone (coarse models).
``--latent`` adds ``Codec.latent`` (what the codes quantize; the EnCodecMAE input). ``--semantic
DIR`` adds one semantic token per frame from a ``whispergpt semantic fit`` tokenizer (alignment
rule: ``whispergpt.semantic.tokenizer``; codec frame ``t`` gets token ``t // 3`` at 25 Hz). Measured
costs of each: docs/DATA.md.

Crash safety and resume
-----------------------
A shard is written into ``DIR/shards/.tmp-<name>-<pid>/`` and renamed into place only once all its
files are complete; ``manifest.json`` is written to a temp file and ``os.replace``-d, after
every shard. Readers use only shards named in the manifest; ``prepare`` on an existing DIR
rebuilds the shard list from the completed shard directories on disk (so a shard renamed just
before a crash is kept), deletes stale ``.tmp-*`` directories, and encodes only files not yet in a
completed shard. A shard failing the cheap check (``verify.check_shard``) is moved aside to
``.bad-<name>`` and its files are encoded again (``inspect --verify`` checks values too); a failed
write (full disk) removes the temp shard and stops with one line. Codec, bandwidth, n_mels, seed,
val_fraction, augment and the stored streams must match the existing manifest (else
``ValueError``: use a new ``--out``); a format-1 dataset (older version) cannot be extended. Unreadable files are retried on resume; the
``skipped`` list is keyed by path, so it stays deduplicated.

Split
-----
By file, decided before decoding anything: candidate paths (resolved, deduplicated) are sorted,
permuted with ``numpy.random.default_rng(seed)``, and the first ``round(n * val_fraction)`` go to
``val`` (at least 1 when ``val_fraction > 0`` and ``n >= 2``). Files that then fail to load just
drop out, so the split never depends on which files are readable.
Every candidate path ends up in a completed shard or in ``skipped`` with its reason: dangling
symlinks and folders that cannot be listed when the sources are scanned, undecodable files while
encoding. The last line printed is ``prepare: N prepared, M skipped, of N+M candidates``.

Encoding
--------
Files are grouped into batches of at most ``batch_seconds`` of audio, zero-padded at the end to
the longest, encoded in one ``Codec.encode`` call, and each file's codes are cut to its own
``S // 320`` frames. This is exact because the 24 kHz EnCodec is causal: padding after a file's
end cannot change its codes (``tests/test_prepare.py`` checks batched == one-by-one). A file
longer than ``batch_seconds`` is encoded alone in chunks of ``batch_seconds`` with
``CONTEXT_SECONDS`` (2 s) of left context re-encoded and discarded, bounding memory. The LSTM
state makes this approximate; measured agreement with whole-file encoding: 100% of frames on the
tiny random codec (10 s of noise, 1 s chunks) and 99.98% of codes on the full-size 24 kHz config
(random codebooks, 27 s of speech, 10 s chunks; 99.45% without the context). Batched vs one-by-one
is bit-exact on one thread; with several threads, last-bit float differences can flip a near-tie
code (~1% of frames seen with random tiny codebooks). The mel is computed per file on the whole waveform
(cheap, exact). The decoded mels decode each file's codes (``Codec.decode`` is causal, so whole-
file decoding equals what the sampler's feedback loop reconstructs frame by frame, up to its
stated window error); long files are decoded in ``batch_seconds`` chunks with ``CONTEXT_SECONDS``
of left context, like encoding. Each decode costs about one encode. On CUDA, files are read
``PACK_BATCHES`` batches ahead and batched by length (``audio_batches``: less padding), and the
decoded mels are computed on the GPU too. Work runs under ``torch.inference_mode`` on ``--device`` (``auto``: CUDA when
available).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, num_frames
from whispergpt.data.augment import AugmentedCopies, AugmentRecipe
from whispergpt.data.dataset import FORMAT_VERSION, MANIFEST, SHARDS_DIR, read_manifest
from whispergpt.data.encode import encode_batch, encode_long, latent_dim
from whispergpt.data.merge import PARTS_DIR, part_path, shard_of, shard_tag
from whispergpt.data.sources import HFOptions, scan_candidates, scan_sources
from whispergpt.data.streams import MEL_DTYPES, STREAMS, FileWork, SemanticSource, register_stream
from whispergpt.data.verify import bad_values, check_shard
from whispergpt.runtime import LOCK_NAME, holds_folder, move_aside, resolve_device, write_json_atomic, writing

CONTEXT_SECONDS = 2.0
SPLITS = ("train", "val")


class NoUsableAudioError(ValueError):
    """Every candidate file was skipped (the manifest with the skipped list is still written)."""


def collect_sources(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The candidate audio paths of files / folders / lists (``sources.scan_sources``), without the skipped ones."""
    return scan_sources(sources)[0]


def assign_splits(paths: Sequence[Path], val_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic by-file split: ``{str(path): "train"|"val"}`` (see module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = sorted(str(p) for p in paths)
    n = len(names)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0  # never leave train empty
    order = np.random.default_rng(seed).permutation(n)
    val = {names[i] for i in order[:n_val]}
    return {name: ("val" if name in val else "train") for name in names}


def lock_folder(out: str | os.PathLike, shard: tuple[int, int] | None) -> Path:
    """Where a prepare holds its lock: ``out``, or for part I of N its own folder under ``parts/``
    (the ranks of one launch share ``out``; a second job on the same part is refused)."""
    return Path(out) if shard is None else Path(out) / PARTS_DIR / f".lock-{shard_tag(*shard)}"


class _ShardWriter:
    """Accumulates encoded files of one split and writes them as atomic shard directories."""

    def __init__(
        self,
        root: Path,
        split: str,
        next_index: int,
        shard_frames: int,
        on_shard,
        manifest: dict,
        tag: str = "",
    ):
        self.root, self.split, self.index, self.shard_frames = root, split, next_index, shard_frames
        self.prefix = f"{split}-{tag}-" if tag else f"{split}-"  # a rank's shards carry its tag
        self.on_shard = on_shard
        self.streams = [STREAMS[n] for n in manifest["streams"]]
        self.storage = {st.name: st.storage(manifest) for st in self.streams}
        self.arrays: dict[str, list[np.ndarray]] = {st.name: [] for st in self.streams}
        self.entries: list[dict] = []
        self.frames = 0

    def add(
        self, path: str, arrays: dict[str, np.ndarray], seconds: float, extra: dict | None = None
    ) -> None:
        """One file's stream arrays, each ``(T, *frame_shape)`` (time-major)."""
        T = arrays["codes"].shape[0]
        for st in self.streams:
            a = arrays[st.name]
            assert a.shape[0] == T, (st.name, a.shape, T)
            self.arrays[st.name].append(np.ascontiguousarray(a, dtype=self.storage[st.name]))  # C order
        self.entries.append(dict(path=path, frames=T, offset=self.frames, seconds=seconds, split=self.split, **(extra or {})))  # fmt: skip
        self.frames += T
        if self.frames >= self.shard_frames:
            self.flush()

    def _write(self, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for st in self.streams:
            np.save(tmp / st.file, np.concatenate(self.arrays[st.name], axis=0))  # (N_total, *frame_shape)
        (tmp / "index.json").write_text(json.dumps(self.entries, indent=1))
        for f in tmp.iterdir():  # data on disk before the rename makes the shard visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())

    def flush(self) -> None:
        if not self.entries:
            return
        name = f"{self.prefix}{self.index:05d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        hint = "free disk space (or move the folder to a disk with room) and rerun: finished shards are kept"
        with writing(
            tmp, f"shard {name}", hint, cleanup=tmp
        ):  # finished shards and the manifest are untouched
            self._write(tmp)
        os.rename(tmp, final)
        # file_frames: the reader starts from the manifest alone, without opening the shard
        frames = [e["frames"] for e in self.entries]
        shard = dict(name=name, split=self.split, files=len(frames), frames=self.frames, file_frames=frames)
        self.arrays = {st.name: [] for st in self.streams}
        self.entries, self.frames = [], 0
        self.index += 1
        self.on_shard(shard)


def _scan_shards(root: Path, manifest: dict, check: bool, tag: str = "") -> tuple[list[dict], set[str]]:
    """Completed shards on disk (``[{name, split, files, frames}]``) and the paths they hold; with
    ``check`` (resuming), broken shards (cheap check) are moved aside, their files not done; with
    ``tag`` (a rank of a sharded run) only that rank's shards."""
    shards, done = [], set()
    if not root.is_dir():
        return shards, done
    files = [STREAMS[n].file for n in manifest["streams"]] + ["index.json"]
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        split = d.name.split("-", 1)[0]
        if tag and not d.name.startswith(f"{split}-{tag}-"):
            continue
        if split not in SPLITS or not all((d / f).is_file() for f in files):
            continue
        if check:
            problem = check_shard(d, manifest)
            if problem is not None:
                moved = move_aside(d)
                print(f"prepare: shard {d.name} is broken ({problem}); moved aside to {moved.name}, "
                      "its files are encoded again", flush=True)  # fmt: skip
                continue
        index = json.loads((d / "index.json").read_text())
        shards.append(
            dict(
                name=d.name,
                split=split,
                files=len(index),
                frames=sum(e["frames"] for e in index),
                file_frames=[e["frames"] for e in index],
            )
        )
        done.update(e["path"] for e in index)
    return shards, done


PACK_BATCHES = 8  # on CUDA, files are read this many batches ahead and batched by length


def audio_batches(
    paths: list[str], batch_seconds: float, skip, load, pack_seconds: float = 0.0
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``load`` files in order and group them into batches of <= batch_seconds (a long file alone).

    ``pack_seconds > 0`` (prepare on CUDA): files are read ahead that much audio at a time and
    batched longest first, so a batch holds files of similar length: the codec's work is the
    zero-padded batch, and padding is what packing removes."""

    def loaded() -> Iterator[tuple[str, torch.Tensor]]:
        for p in paths:
            try:
                wave = load(p)
            except AudioLoadError as e:
                skip(p, str(e))
                continue
            if num_frames(wave.shape[-1]) < 1:
                skip(
                    p,
                    f"{p}: shorter than one frame ({wave.shape[-1]} samples at {SAMPLE_RATE} Hz < {HOP_LENGTH})",
                )
                continue
            yield p, wave

    def group(items) -> Iterator[list[tuple[str, torch.Tensor]]]:
        batch: list[tuple[str, torch.Tensor]] = []
        total = 0.0
        for p, wave in items:
            sec = wave.shape[-1] / SAMPLE_RATE
            if batch and total + sec > batch_seconds:
                yield batch
                batch, total = [], 0.0
            batch.append((p, wave))
            total += sec
        if batch:
            yield batch

    if pack_seconds <= 0:
        yield from group(loaded())
        return
    ahead, seconds = [], 0.0
    for item in loaded():
        ahead.append(item)
        seconds += item[1].shape[-1] / SAMPLE_RATE
        if seconds >= pack_seconds:
            yield from group(sorted(ahead, key=lambda x: -x[1].shape[-1]))
            ahead, seconds = [], 0.0
    yield from group(sorted(ahead, key=lambda x: -x[1].shape[-1]))


@holds_folder("prepare", where=lambda a: lock_folder(a["out"], a["shard"]))
def prepare(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    codec: str | os.PathLike,
    bandwidth: float = 6.0,
    n_mels: int = 80,
    val_fraction: float = 0.05,
    seed: int = 0,
    batch_seconds: float = 60.0,
    device: str | torch.device | None = "auto",
    shard_seconds: float = 1800.0,
    progress: bool = True,
    decoded_mel: bool = True,
    augment: str | os.PathLike | AugmentRecipe | None = None,
    copies: int = 1,
    mel_dtype: str = "float16",
    latent: bool = False,
    decoded_coarse_mel: bool | None = None,
    semantic: SemanticSource | None = None,
    hf: HFOptions | None = None,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Encode ``sources`` into the dataset at ``out`` (resuming if it exists); returns the manifest.

    Streams stored: codes and mel always; ``decoded_mel`` the log-mel of the all-codebook decode,
    ``decoded_coarse_mel`` (default: as ``decoded_mel``) of the codebook-0 decode; ``latent`` the
    codec encoder's output; ``semantic`` (``semantic.tokenizer.semantic_source`` of a ``whispergpt
    semantic fit`` folder) the per-frame semantic tokens. ``mel_dtype``: float16 or float32 for every mel stream.
    ``hf``: how manifests and Hugging Face datasets among ``sources`` are read (``data.sources``).
    ``shard=(I, N)``: only the candidates whose id hashes to ``I``, written as part ``I`` of ``N``
    (``data.merge``; the returned dict is then the part).
    Raises ``ValueError`` for bad arguments / a mismatched existing dataset, and
    ``NoUsableAudioError`` (after writing the manifest) when no file at all could be used.
    """
    from tqdm.auto import tqdm

    from whispergpt.codec import Codec

    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    if batch_seconds <= 0 or shard_seconds <= 0:
        raise ValueError(f"batch_seconds and shard_seconds must be > 0, got {batch_seconds}, {shard_seconds}")
    if mel_dtype not in MEL_DTYPES:
        raise ValueError(f"mel_dtype must be one of {list(MEL_DTYPES)}, got {mel_dtype!r}")
    aug = AugmentedCopies(augment, copies, seed)  # train copies SRC#augN (none without a recipe)
    cands = scan_candidates(sources, hf)  # errors on a missing SRC / column before any work
    if cands.is_streaming() and aug.recipe is not None:
        raise ValueError("--augment re-reads each train file for its copies: not with --hf-streaming")
    aug.loader = cands.load
    split_of = assign_splits(cands.keys, val_fraction, seed)  # over every candidate, before sharding
    unreadable = cands.skipped
    out = Path(out)
    root = out / SHARDS_DIR
    tag, manifest_path = "", out / MANIFEST
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be (I, N) with 0 <= I < N, got {shard}")
        split_of = {k: v for k, v in split_of.items() if shard_of(k, count) == index}
        unreadable = {k: v for k, v in unreadable.items() if shard_of(k, count) == index}
        tag, manifest_path = shard_tag(index, count), part_path(out, index, count)
    coarse = decoded_mel if decoded_coarse_mel is None else decoded_coarse_mel
    semantic_info = None
    if semantic is not None:  # checked before any work by semantic_source; the writer is the tokenizer's
        register_stream(dataclasses.replace(STREAMS["semantic"], writer=semantic.writer))
        semantic_info, semantic = semantic.info, semantic.directory
    settings = dict(codec=str(codec), bandwidth=float(bandwidth), n_mels=int(n_mels), seed=int(seed),
                    val_fraction=float(val_fraction), decoded_mel=bool(decoded_mel), decoded_coarse_mel=bool(coarse),
                    latent=bool(latent), mel_dtype=str(mel_dtype), augment=aug.settings(), semantic=semantic)  # fmt: skip
    streams = [name for name, st in STREAMS.items() if st.enabled(settings)]  # registry order
    skipped: dict[str, str] = {}
    old = None
    if manifest_path.exists():
        old = read_manifest(out) if shard is None else json.loads(manifest_path.read_text())
        if old["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{out} holds a format-{old['format_version']} dataset (channel-major shards, written by an "
                f"older whispergpt): it still trains, but files cannot be added to it; use a new --out"
            )
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{out} was prepared with different settings ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                "use a new --out"
            )
        skipped = {s["path"]: s["reason"] for s in old.get("skipped", [])}
    elif shard is not None and (out / MANIFEST).exists() and not (out / PARTS_DIR).is_dir():
        raise ValueError(f"--out {out} holds a dataset prepared without --shard; shard into a new --out")
    elif out.exists() and any(
        e.name not in (SHARDS_DIR, PARTS_DIR, MANIFEST, LOCK_NAME) for e in out.iterdir()
    ):
        raise ValueError(
            f"--out {out} exists, is not empty and holds no {MANIFEST}; use a new or empty folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    for d in root.glob(f".tmp-*-{tag}-*" if tag else ".tmp-*"):  # debris of an interrupted run (this rank's)
        shutil.rmtree(d, ignore_errors=True)
    shards, done = _scan_shards(root, old or dict(streams=streams), check=old is not None, tag=tag)
    for p in done:
        skipped.pop(p, None)
    for p in list(skipped):  # a folder or a link was skipped by the scan, which this run redoes
        if Path(p).is_dir() or Path(p).is_symlink():
            skipped.pop(p)
    skipped.update(unreadable)

    dev = resolve_device(device)
    cdc = Codec.from_pretrained(codec, bandwidth=bandwidth, device=dev)
    if cdc.codebook_size > 32768:
        raise ValueError(
            f"codes are stored as int16: codebook_size must be <= 32768, got {cdc.codebook_size}"
        )
    cfg = cdc.model.config
    base = dict(
        format_version=FORMAT_VERSION,
        sample_rate=cdc.sample_rate,
        frame_rate=cdc.frame_rate,
        hop_length=HOP_LENGTH,
        num_codebooks=cdc.num_codebooks,
        codebook_size=cdc.codebook_size,
        **settings,
        codec_config=dict(
            model_type=cfg.model_type,
            hidden_size=cfg.hidden_size,
            num_filters=cfg.num_filters,
            codebook_dim=cfg.codebook_dim,
            target_bandwidths=[float(b) for b in cfg.target_bandwidths],
        ),
        streams=streams,
        mel="causal log-mel, 1024-sample window ending at (t+1)*320, see whispergpt.audio",
        mel_decoded=(
            f"the same log-mel of codec.decode(codes) with all {cdc.num_codebooks} codebooks (mel_decoded.npy)"
            if decoded_mel
            else None
        ),
        mel_decoded_coarse=(
            "the same log-mel of codec.decode(codes[:1]), codebook 0 alone (mel_decoded_coarse.npy)"
            if coarse
            else None
        ),
    )
    if latent:
        base["latent_dim"] = latent_dim(cdc)
    if semantic_info is not None:
        base["semantic_tokenizer"] = semantic_info

    def write_manifest(finished: bool = False) -> dict:
        manifest = dict(base)
        if shard is not None:  # merge refuses a part until its run has finished
            manifest["part"] = dict(index=shard[0], count=shard[1], finished=finished, updated=time.time())
        manifest["splits"] = {
            s: dict(
                files=sum(sh["files"] for sh in shards if sh["split"] == s),
                frames=sum(sh["frames"] for sh in shards if sh["split"] == s),
            )
            for s in SPLITS
        }
        for v in manifest["splits"].values():
            v["seconds"] = v["frames"] / cdc.frame_rate
        manifest["shards"] = sorted(shards, key=lambda sh: sh["name"])
        manifest["skipped"] = [dict(path=p, reason=r) for p, r in sorted(skipped.items())]
        with writing(manifest_path, "the manifest", "free disk space and rerun: finished shards are kept"):
            write_json_atomic(manifest_path, manifest, indent=1)
        return manifest

    def on_shard(shard: dict) -> None:
        shards.append(shard)
        write_manifest()

    bar = None

    def skip(path: str, reason: str) -> None:
        skipped[path] = reason
        if bar is not None:
            bar.write(f"skipped {reason}")
            bar.update(1)

    write_manifest()  # from the start, so that a run killed inside its first shard can resume
    order = [k for k in cands.keys if k in split_of]  # files sorted, dataset rows in row order (streams)
    pending = {s: [q for p in order if split_of[p] == s for q in aug.names(p, s) if q not in done] for s in SPLITS}  # fmt: skip
    n_pending = sum(len(v) for v in pending.values())
    pack_seconds = PACK_BATCHES * batch_seconds if dev.type == "cuda" else 0.0  # CPU: id order, as before
    shard_frames = max(1, int(shard_seconds * cdc.frame_rate))
    chunk_frames = max(1, int(batch_seconds * cdc.frame_rate))
    context_frames = int(CONTEXT_SECONDS * cdc.frame_rate)
    print(
        f"prepare: {len(split_of)} candidate files ({len(done)} already done, {n_pending} to encode) -> {out}"
        f"{f' (shard {shard[0]}/{shard[1]})' if shard else ''}; "
        f"codec {codec} @ {bandwidth} kbps (K={cdc.num_codebooks}, V={cdc.codebook_size}), n_mels={n_mels}, "
        f"device {dev}; streams {', '.join(streams)}, mel {mel_dtype}",
        flush=True,
    )
    need_latent = any(STREAMS[name].needs_latent for name in streams)
    want_latent = dict(with_latent=True) if need_latent else {}  # the plain call otherwise (tests wrap it)
    state: dict = {}  # the stream writers' per-run scratch
    t0 = time.perf_counter()
    audio_seconds = 0.0
    n_encoded = 0
    written: set[str] = set()
    bar = tqdm(total=n_pending, unit="file", disable=not progress or n_pending == 0, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for split in SPLITS:
                next_index = 1 + max((int(sh["name"].rsplit("-", 1)[1]) for sh in shards if sh["split"] == split),
                                     default=-1)  # fmt: skip
                writer = _ShardWriter(root, split, next_index, shard_frames, on_shard, base, tag)
                for batch in audio_batches(pending[split], batch_seconds, skip, aug.load, pack_seconds):
                    waves = [w for _, w in batch]
                    if len(batch) == 1 and waves[0].shape[-1] > batch_seconds * SAMPLE_RATE:
                        encoded = encode_long(cdc, waves[0], chunk_frames, context_frames, **want_latent)
                        codes, latents = ([encoded[0]], [encoded[1]]) if need_latent else ([encoded], [None])
                    else:
                        encoded = encode_batch(cdc, waves, **want_latent)
                        codes, latents = encoded if need_latent else (encoded, [None] * len(waves))
                    for (p, w), c, lat in zip(batch, codes, latents):
                        work = FileWork(p, w.to(dev), c.cpu(), None if lat is None else lat.float().cpu(), cdc,
                                        settings, chunk_frames, context_frames, state)  # fmt: skip
                        arrays = {name: STREAMS[name].writer(work) for name in streams}  # (T, ...) each
                        V = cdc.codebook_size
                        problem = next(filter(None, (bad_values(n, a, V) for n, a in arrays.items())), None)
                        if problem:  # checked in memory (one pass, no IO), before it can reach a shard
                            skipped[p] = f"{p}: encoded to bad values ({problem})"
                            bar.write(f"skipped {skipped[p]}")
                            continue
                        extra, meta = aug.pop_record(p) or {}, cands.meta(aug.source.get(p, (p,))[0])
                        writer.add(
                            p, arrays, w.shape[-1] / SAMPLE_RATE, {**extra, "meta": meta} if meta else extra
                        )
                        written.add(p)
                        skipped.pop(p, None)  # skipped by an earlier run, readable now
                        audio_seconds += w.shape[-1] / SAMPLE_RATE
                    n_encoded += len(batch)
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.update(len(batch))
                    bar.set_postfix_str(
                        f"{audio_seconds / elapsed:.1f} audio-s/s = {audio_seconds / elapsed:.1f}x real time"
                    )
                writer.flush()
    finally:
        bar.close()
    manifest = write_manifest(finished=True)
    elapsed = time.perf_counter() - t0
    # every candidate path is accounted for: in a completed shard, or skipped with a reason
    n_prepared = sum(1 for p in split_of if p in done or p in written)
    n_skipped = sum(1 for p in split_of if p in skipped) + len(unreadable)
    n_candidates = len(split_of) + len(unreadable)
    assert n_prepared + n_skipped == n_candidates, (n_prepared, n_skipped, n_candidates)
    copies_skipped = sum(1 for p in skipped if p in aug.source)  # augmented copies are not candidates
    print(
        f"prepare: encoded {n_encoded} files, {audio_seconds:.1f} s of audio in {elapsed:.1f} s "
        f"({n_encoded / max(elapsed, 1e-9):.2f} files/s, {audio_seconds / max(elapsed, 1e-9):.1f}x real time); "
        f"train {manifest['splits']['train']['files']} files, val {manifest['splits']['val']['files']} files",
        flush=True,
    )
    print(
        f"prepare: {n_prepared} prepared, {n_skipped} skipped, of {n_candidates} candidates"
        + (f"; {copies_skipped} augmented copies skipped" if copies_skipped else "")
        + (f" (reasons: whispergpt inspect {out})" if n_skipped or copies_skipped else ""),
        flush=True,
    )
    if shard is None and manifest["splits"]["train"]["files"] + manifest["splits"]["val"]["files"] == 0:
        raise NoUsableAudioError(
            f"no usable audio: all {n_candidates} candidate files were skipped (reasons in {out / MANIFEST})"
        )
    return manifest
