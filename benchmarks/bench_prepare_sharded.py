"""Sharded prepare: wall time of ``whispergpt prepare`` on 1 and 2 CPU processes, disk per stream.

    python benchmarks/bench_prepare_sharded.py data/demo --out runs/bench/prepare_sharded.json

Runs the CLI as a user would, each run in a fresh ``--out``:

- ``1 process x 1 thread``: ``whispergpt prepare SRC ...`` (``OMP_NUM_THREADS=1``);
- ``2 processes x 1 thread``: ``accelerate launch --num_processes 2 -m whispergpt prepare SRC ...``
  (ranks from the launcher, rank 0 merges at the end);
- ``1 process x 2 threads``: the single process given both cores, for comparison.

Wall times include each process's start-up (imports, loading the codec) and, for the launch, the
merge. The 2-process dataset is compared with the 1-process one file by file (split, codes, every
mel: bit-identical on one thread per process). Disk per hour of audio is measured per stored file
of the 1-process run (prepared with ``--latent`` so the latent is measured too); the semantic
stream (int16, one token per frame) is computed from its size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
    "1 process x 2 threads": (1, 2),
}


def run_one(
    sources: list[str], out: Path, codec: str, bandwidth: float, processes: int, threads: int
) -> dict:
    args = ["prepare", *sources, "--out", str(out), "--codec", codec, "--bandwidth", str(bandwidth),
            "--device", "cpu", "--no-progress", "--latent"]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, "-m", "whispergpt", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml"), "--num_processes", str(processes),
               "-m", "whispergpt", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)  # every process of the run
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    # per rank: "prepare: encoded N files, S s of audio in T s"
    encode = [float(x) for x in re.findall(r"of audio in ([\d.]+) s", run.stdout)]
    m = json.loads((out / "manifest.json").read_text())
    audio_s = sum(v["frames"] for v in m["splits"].values()) / m["frame_rate"]
    return dict(wall_s=round(wall, 1), cpu_s=round(cpu, 1), encode_s_per_rank=encode, audio_s=round(audio_s, 1),
                x_real_time=round(audio_s / wall, 2), files=sum(v["files"] for v in m["splits"].values()),
                shards=len(m["shards"]), load=round(os.getloadavg()[0], 2))  # fmt: skip


def by_key(out: Path) -> dict:
    from whispergpt.data import PreparedDataset

    got = {}
    for split in ("train", "val"):
        ds = PreparedDataset(
            out, split, streams=("codes", "mel", "mel_decoded", "mel_decoded_coarse", "latent")
        )
        for i, f in enumerate(ds.files):
            got[f["path"]] = (split, [a.numpy() for a in ds.file_arrays(i)])
    return got


STREAMS = ("codes", "mel", "mel_decoded", "mel_decoded_coarse", "latent")


def compare(a: Path, b: Path) -> dict:
    """Same files and split; per stream, whether every file is bit-identical, and the largest difference."""
    ka, kb = by_key(a), by_key(b)
    same_split = sorted(ka) == sorted(kb) and all(ka[k][0] == kb[k][0] for k in ka)
    out = dict(same_files_and_split=same_split)
    for j, name in enumerate(STREAMS):
        diffs = [float(np.abs(ka[k][1][j].astype(np.float64) - kb[k][1][j]).max()) for k in ka if k in kb]
        out[f"{name}_max_abs_diff"] = max(diffs, default=0.0)
    out["bit_identical"] = same_split and all(out[f"{n}_max_abs_diff"] == 0 for n in STREAMS)
    return out


def disk_per_hour(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    hours = sum(v["frames"] for v in m["splits"].values()) / m["frame_rate"] / 3600
    sizes: dict[str, int] = {}
    for p in (out / "shards").rglob("*.npy"):
        sizes[p.stem] = sizes.get(p.stem, 0) + p.stat().st_size
    per_h = {k: round(v / hours / 1e6, 1) for k, v in sorted(sizes.items())}
    per_h["semantic (computed: int16 per frame)"] = round(2 * m["frame_rate"] * 3600 / 1e6, 2)
    return per_h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="whispergpt prepare on 1 vs 2 CPU processes; disk per stream.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="audio to prepare (e.g. the demo corpus)")
    p.add_argument("--codec", default=None, help="default: the shipped codec")
    p.add_argument("--bandwidth", type=float, default=6.0)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {list(RUNS)}")
    p.add_argument(
        "--repeats", type=int, default=1, help="rounds of the runs, interleaved (a shared machine's noise)"
    )
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    from whispergpt.codec.codec import SHIPPED_CODEC_DIR

    codec = args.codec or str(SHIPPED_CODEC_DIR)
    sources = [str(Path(s).resolve()) for s in args.sources]
    load = os.getloadavg()
    rows, outs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for name in args.runs.split(","):
                procs, threads = RUNS[name]
                out = Path(tmp) / f"r{round_}p{procs}t{threads}"
                outs.setdefault(name, out)
                rows.append(
                    dict(
                        run=name, round=round_, **run_one(sources, out, codec, args.bandwidth, procs, threads)
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
        base = outs.get("1 process x 1 thread")
        for r in rows:
            if base is not None and r["run"] != "1 process x 1 thread" and r["round"] == 0:
                r.update(compare(base, outs[r["run"]]))
        disk = disk_per_hour(base) if base is not None else {}
    ref = next((r["wall_s"] for r in rows if r["run"] == "1 process x 1 thread"), None)  # round 0
    print("\n| run | audio s | wall s | CPU s | x real time | speed-up | encode s per rank | same as 1x1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        up = f"{ref / r['wall_s']:.2f}x" if ref else "-"
        diff = [n for n in STREAMS if r.get(f"{n}_max_abs_diff")]
        same = (
            "-" if "bit_identical" not in r else "bit-identical" if r["bit_identical"] else f"all but {diff}"
        )
        print(f"| {r['run']} | {r['audio_s']} | {r['wall_s']} | {r['cpu_s']} | {r['x_real_time']} | {up} | {r['encode_s_per_rank']} | {same} |")  # fmt: skip
    for r in rows:
        if "bit_identical" in r and not r["bit_identical"]:
            print(
                f"{r['run']}: largest differences "
                + ", ".join(f"{n} {r[n + '_max_abs_diff']:.2e}" for n in STREAMS)
            )
    print("\n| stream | MB per hour of audio |\n|---|---|")
    for k, v in disk.items():
        print(f"| {k} | {v} |")
    print(f"load average before {load}, after {tuple(round(x, 2) for x in os.getloadavg())}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(command=" ".join(sys.argv), rows=rows, disk_MB_per_hour=disk,
                                                  load_before=load), indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
