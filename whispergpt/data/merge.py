"""Sharded prepare: which candidates a rank takes, its part of the dataset, and ``prepare --merge``.

``prepare --shard I/N`` (or, with no flag, rank ``RANK`` of ``WORLD_SIZE`` under ``accelerate
launch`` / ``torchrun``) prepares only the candidates whose id hashes to ``I`` (``shard_of``).
The split is still decided over every candidate, so it is the single-process split. All ranks
share ``--out DIR``; rank ``I`` writes::

    DIR/shards/<split>-s<I>of<N>-<NNNNN>/    its shards (same crash safety as a single run)
    DIR/parts/part-<I>-of-<N>.json           its part: a manifest of its shards and skipped ids,
                                             rewritten atomically after every shard, with
                                             part = {index, count, finished}

``merge_parts(DIR)`` checks the parts (all ``N`` present and finished, the same settings) and
writes ``DIR/manifest.json`` listing every part's shards: ``DIR`` is then an ordinary prepared
dataset, with the files, split, codes and frames a single-process run gives (shard boundaries
differ). A killed rank, launched again, resumes from its own part and shards only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from whispergpt.data.dataset import MANIFEST
from whispergpt.runtime import write_json_atomic

PARTS_DIR = "parts"
# the part keys that must agree: everything that changes what a frame of a stream holds
MERGE_KEYS = (
    "format_version", "codec", "bandwidth", "n_mels", "seed", "val_fraction", "streams", "mel_dtype",
    "decoded_mel", "decoded_coarse_mel", "latent", "latent_dim", "augment", "semantic", "semantic_tokenizer",
    "num_codebooks", "codebook_size", "sample_rate", "frame_rate",
)  # fmt: skip


def shard_of(key: str, count: int) -> int:
    """The rank (of ``count``) that prepares candidate ``key``: a hash, stable across machines and runs."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``ValueError`` otherwise."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


# (rank, world size) variables: torchrun / accelerate launch / deepspeed, then MPI launches
# (accelerate's multi-CPU mode under mpirun), as accelerate's PartialState reads them
LAUNCHER_ENV = (
    ("RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
)


def launcher_shard() -> tuple[int, int] | None:
    """``(rank, world_size)`` from the launcher's environment (``LAUNCHER_ENV``), or None for a
    single process."""
    for rank, size in LAUNCHER_ENV:
        world = int(os.environ.get(size, "1"))
        if world > 1:
            return int(os.environ.get(rank, "0")), world
    return None


def shard_tag(index: int, count: int) -> str:
    return f"s{index:05d}of{count:05d}"


def part_path(out: str | os.PathLike, index: int, count: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{index:05d}-of-{count:05d}.json"


def _read_parts(out: Path) -> list[tuple[Path, dict]]:
    files = sorted((out / PARTS_DIR).glob("part-*.json"))
    if not files:
        raise ValueError(
            f"{out}: no parts to merge ({PARTS_DIR}/part-*.json); prepare with --shard I/N first"
        )
    return [(f, json.loads(f.read_text())) for f in files]


def parts_finished(out: str | os.PathLike, count: int, since: float = 0.0) -> bool:
    """Whether all ``count`` parts exist and are finished, written at or after ``since`` (a
    ``time.time()``; rank 0 polls this before merging, so a part left finished by an earlier launch
    is not taken for this one's)."""
    try:
        parts = _read_parts(Path(out))
    except (ValueError, OSError, json.JSONDecodeError):
        return False
    done = {
        p["part"]["index"]
        for _, p in parts
        if p["part"]["count"] == count and p["part"]["finished"] and p["part"].get("updated", 0.0) >= since
    }
    return done == set(range(count))


def merge_parts(out: str | os.PathLike) -> dict:
    """Join ``DIR/parts/*`` into ``DIR/manifest.json`` (module docstring); returns the manifest.

    ``ValueError`` when a part is missing or unfinished, or two parts disagree on a ``MERGE_KEYS``
    key (the message names the key and both values)."""
    out = Path(out)
    parts = _read_parts(out)
    counts = {p["part"]["count"] for _, p in parts}
    if len(counts) != 1:
        raise ValueError(f"{out}: parts of different shard counts {sorted(counts)}; use one N for every rank")
    count = counts.pop()
    have = {p["part"]["index"] for _, p in parts}
    missing = sorted(set(range(count)) - have)
    if missing:
        raise ValueError(
            f"{out}: parts {missing} of {count} are missing; run `prepare --shard I/{count}` for them"
        )
    for f, p in parts:
        if not p["part"]["finished"]:
            raise ValueError(
                f"{f}: part {p['part']['index']} of {count} is unfinished (still being written, or its run "
                "stopped): let it finish, or rerun that rank with the same command"
            )
    (f0, first) = parts[0]
    for f, p in parts[1:]:
        for key in MERGE_KEYS:
            if p.get(key) != first.get(key):
                raise ValueError(
                    f"parts disagree on {key}: {first.get(key)!r} in {f0.name}, {p.get(key)!r} in {f.name}"
                )
    manifest = {k: v for k, v in first.items() if k not in ("part", "shards", "skipped", "splits")}
    shards = sorted((sh for _, p in parts for sh in p["shards"]), key=lambda sh: sh["name"])
    skipped = {s["path"]: s["reason"] for _, p in parts for s in p["skipped"]}
    manifest["splits"] = {}
    for split in first["splits"]:
        files = sum(sh["files"] for sh in shards if sh["split"] == split)
        frames = sum(sh["frames"] for sh in shards if sh["split"] == split)
        manifest["splits"][split] = dict(files=files, frames=frames, seconds=frames / first["frame_rate"])
    manifest["shards"] = shards
    manifest["skipped"] = [dict(path=p, reason=r) for p, r in sorted(skipped.items())]
    manifest["merged_parts"] = count
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    return manifest


def wait_and_merge(out: str | os.PathLike, count: int, since: float = 0.0, poll_seconds: float = 2.0) -> dict:
    """Rank 0 at the end of a launched run: wait until every part is finished (after ``since``: the
    launch's start, less a margin for clock skew between nodes), then merge. A rank that fails ends
    the launch (the launcher stops the others), so there is no timeout here."""
    while not parts_finished(out, count, since):
        time.sleep(poll_seconds)
    return merge_parts(out)
