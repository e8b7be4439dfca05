#!/usr/bin/env python
"""Loader throughput: random training crops from a prepared dataset, per shard layout, on CPU.

    python benchmarks/bench_loader.py                        # 1 h of K=8, M=80 data, 1500-frame crops
    python benchmarks/bench_loader.py --quick                # a few seconds
    python benchmarks/bench_loader.py --hours 2 --frames 750 --out runs/benchmarks/loader.json

Layouts (the same values, written by hand in each documented layout; see whispergpt.data.streams):

- ``format1-fp32``: channel-major ``(K, N)`` / ``(M, N)`` shards, fp32 mel: what ``prepare`` wrote
  before format 2. A crop reads K + M row segments.
- ``format2-fp32``: time-major ``(N, K)`` / ``(N, M)``: a crop is one contiguous range per file.
- ``format2-fp16``: time-major with the mel stored as float16 (half the mel bytes).

Measures, all through ``PreparedDataset.random_crop`` (codes + mel, as the trainer draws them, so
the copy to int64 / float32 tensors is included):

- ``crop``: one crop, page cache warm;
- ``batch-warm``: ``--batch`` crops + ``default_collate`` (what a DataLoader worker does per batch;
  the stack is where a format-2 crop, a transposed view, becomes contiguous), page cache warm
  (a dataset that fits in RAM);
- ``batch-cold``: the same with every shard file dropped from the page cache before each batch
  (memmaps released, then ``posix_fadvise(DONTNEED)``), so each batch reads the disk, as on a
  dataset larger than RAM (on a VM the host may still cache).

Prints a table, the load average before and after, and writes JSON with ``--out``. Nothing
asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LAYOUTS = ("format1-fp32", "format2-fp32", "format2-fp16")


def write_dataset(
    root: Path, layout: str, hours: float, K: int, M: int, shard_seconds: float, seed: int = 0, V: int = 1024
) -> int:
    """A synthetic dataset of ``hours`` of audio in ``layout``; returns its bytes on disk."""
    fmt, short = layout.split("-")
    mel_dtype = {"fp32": "float32", "fp16": "float16"}[short]
    time_major = fmt == "format2"
    rng = np.random.default_rng(seed)
    total = int(hours * 3600 * 75)
    per_shard = int(shard_seconds * 75)
    file_frames = 20 * 75  # 20 s files, as the demo corpus cuts them
    shards, nbytes = [], 0
    for s, lo in enumerate(range(0, total, per_shard)):
        n = min(per_shard, total - lo)
        d = root / "shards" / f"train-{s:05d}"
        d.mkdir(parents=True)
        codes = rng.integers(0, V, (n, K), dtype=np.int16)  # (N, K)
        mel = rng.standard_normal((n, M), dtype=np.float32).astype(mel_dtype)  # (N, M)
        for name, arr in (("codes.npy", codes), ("mel.npy", mel)):
            np.save(d / name, arr if time_major else np.ascontiguousarray(arr.T))
            nbytes += (d / name).stat().st_size
        index = [
            dict(
                path=f"/bench/{s}-{a}.wav",
                frames=min(file_frames, n - a),
                offset=a,
                seconds=min(file_frames, n - a) / 75,
            )
            for a in range(0, n, file_frames)
        ]
        (d / "index.json").write_text(json.dumps(index))
        shards.append(dict(name=d.name, split="train", files=len(index), frames=n))
    manifest = dict(
        format_version=2 if time_major else 1, sample_rate=24000, frame_rate=75, hop_length=320, num_codebooks=K,
        codebook_size=V, n_mels=M, codec="bench", bandwidth=6.0, skipped=[], shards=shards,
        splits=dict(train=dict(files=sum(x["files"] for x in shards), frames=total, seconds=total / 75),
                    val=dict(files=0, frames=0, seconds=0.0)),
    )  # fmt: skip
    if time_major:
        manifest.update(streams=["codes", "mel"], mel_dtype=mel_dtype)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return nbytes


def drop_cache(root: Path) -> None:
    for f in (root / "shards").rglob("*.npy"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_read_bytes() -> int | None:
    """Bytes this process made the block layer read (``/proc/self/io``; page-fault readahead included)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def time_batches(
    root: Path, frames: int, batch: int, batches: int, cold: bool, seed: int
) -> tuple[list[float], int | None]:
    """Seconds of each of ``batches`` batches: ``batch`` random crops + ``default_collate`` (what a
    DataLoader worker does per batch; ``batch=1`` without the collate: one bare crop), and the disk
    bytes read in the timed sections (None where ``/proc/self/io`` is missing)."""
    from torch.utils.data import default_collate

    from whispergpt.data import PreparedDataset

    ds = PreparedDataset(root, "train", frames=frames)
    g = torch.Generator().manual_seed(seed)
    ds.random_crop(g)  # open the memmaps
    times, read = [], 0
    for _ in range(batches):
        if cold:
            ds = copy.copy(ds)  # the copy reopens its memmaps lazily: the old maps are released,
            drop_cache(root)  # so their pages can be dropped (mapped pages would stay cached)
        r0, t0 = disk_read_bytes(), time.perf_counter()
        if batch == 1:
            codes, mel = ds.random_crop(g)
        else:
            codes, mel = default_collate([ds.random_crop(g) for _ in range(batch)])
        times.append(time.perf_counter() - t0)
        r1 = disk_read_bytes()
        read = None if r0 is None or r1 is None or read is None else read + r1 - r0
    assert codes.shape[-1] == frames and mel.dtype == torch.float32
    return times, read


def run_loader_benchmark(
    hours: float = 1.0,
    frames: int = 1500,
    batch: int = 8,
    batches: int = 100,
    repeats: int = 3,
    K: int = 8,
    M: int = 80,
    shard_seconds: float = 1800.0,
    layouts: tuple[str, ...] = LAYOUTS,
    workdir: str | None = None,
) -> list[dict]:
    """Rows ``{layout, measure, crops_per_s, MB_per_s, ms_per_batch, ...}``, median over repeats.

    Measures: ``crop`` (one ``random_crop``, warm cache), ``batch-warm`` and ``batch-cold``
    (``batch`` crops + collate, page cache kept / dropped before every batch)."""
    measures = (("crop", 1, False), ("batch-warm", batch, False), ("batch-cold", batch, True))
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for layout in layouts:
            root = Path(tmp) / layout
            nbytes = write_dataset(root, layout, hours, K, M, shard_seconds)
            crop_bytes = frames * (K * 2 + M * (2 if layout.endswith("fp16") else 4))
            for measure, b, cold in measures:
                n = batches * (batch if b == 1 else 1)  # as many crops in each measure
                per_repeat, reads = [], []
                for r in range(repeats):
                    t, read = time_batches(root, frames, b, n, cold, seed=r)
                    per_repeat.append(sum(t) / len(t) / b)  # seconds per crop
                    reads.append(read)
                s = statistics.median(per_repeat)
                rows.append(
                    dict(
                        bench="loader", layout=layout, measure=measure, batch=b, frames=frames, K=K, M=M,
                        crops_per_s=round(1 / s, 1), ms_per_crop=round(1e3 * s, 3),
                        MB_per_s=round(crop_bytes / s / 1e6, 1), crop_kB=round(crop_bytes / 1e3, 1),
                        dataset_MB=round(nbytes / 1e6, 1),
                        disk_kB_per_crop=None if None in reads else round(statistics.median(reads) / (n * b) / 1e3, 1),
                        repeats=repeats, crops_per_repeat=n * b,
                        ms_per_crop_all=[round(1e3 * x, 3) for x in per_repeat],
                    )
                )  # fmt: skip
                print(f"[bench_loader] {layout} {measure}: {1 / s:,.0f} crops/s", file=sys.stderr, flush=True)
    base = {r["measure"]: r["ms_per_crop"] for r in rows if r["layout"] == "format1-fp32"}
    for r in rows:
        r["speedup_vs_format1"] = (
            round(base[r["measure"]] / r["ms_per_crop"], 2) if r["measure"] in base else None
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="0.1 h, 10 batches, 1 repeat")
    p.add_argument("--hours", type=float, default=None, help="audio in the synthetic dataset (default 1)")
    p.add_argument("--frames", type=int, default=1500, help="crop length (gpt_100m: 1500)")
    p.add_argument("--batch", type=int, default=8, help="crops per batch (gpt_100m: 8)")
    p.add_argument("--batches", type=int, default=None, help="batches per repeat (default 100)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"subset of {','.join(LAYOUTS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a loader worker)")
    p.add_argument("--workdir", default=None, help="where the synthetic datasets go (default: $TMPDIR)")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    layouts = tuple(x for x in args.layouts.split(",") if x)
    if not layouts or set(layouts) - set(LAYOUTS):
        p.error(f"--layouts: expected a subset of {list(LAYOUTS)}, got {args.layouts!r}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = run_loader_benchmark(
        hours=args.hours or (0.1 if args.quick else 1.0),
        frames=args.frames,
        batch=args.batch,
        batches=args.batches or (10 if args.quick else 100),
        repeats=args.repeats or (1 if args.quick else 3),
        layouts=layouts,
        workdir=args.workdir,
    )
    load_after = os.getloadavg()
    cols = [
        "layout",
        "measure",
        "crops_per_s",
        "ms_per_crop",
        "MB_per_s",
        "crop_kB",
        "dataset_MB",
        "disk_kB_per_crop",
        "speedup_vs_format1",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\nload average (1/5/15 min) before {load_before}, after {tuple(round(x, 2) for x in load_after)}; "
          f"{os.cpu_count()} CPUs, {args.threads} torch thread(s)")  # fmt: skip
    if args.out:
        meta = dict(command=" ".join(sys.argv), torch=torch.__version__, numpy=np.__version__,
                    python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
                    load_before=load_before, load_after=load_after)  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
