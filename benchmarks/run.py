#!/usr/bin/env python
"""whispergpt benchmarks: one entry point, a markdown table on stdout, JSON (and the table) on disk.

    python benchmarks/run.py --quick                 # CI smoke mode: tiny sizes, < 1 min on 2 CPU cores
    python benchmarks/run.py                         # CPU: small sizes, a few minutes
    python benchmarks/run.py --device cuda           # GPU: gpt_100m sizes (~110M params, 1500 frames), bf16
    python benchmarks/run.py --only train,prepare --out runs/bench/mine.json

Sections: ``train`` (bench_train.py: tokens/s vs transformers' MusicgenForCausalLM), ``sampling``
(bench_sampling.py: frames/s vs MusicgenForCausalLM.generate), ``prepare`` (bench_prepare.py:
codec encode x real time), ``fine`` (bench_fine.py: the fine acoustic stage x real time),
``mae_tools`` (bench_mae_tools.py: ``embed`` x real time, semantic k-means fit time), ``hierarchy``
(bench_hierarchy.py: the three-stage sampler x real time, each stage's share).
Every comparison is a ratio measured in this process, median of
repeats. See benchmarks/README.md and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SECTIONS = ("train", "sampling", "prepare", "fine", "mae_tools", "hierarchy")

# Per mode: sizes and repeat counts. "quick" exists for CI and must stay well under a minute.
MODES: dict[str, dict] = {
    "quick": dict(
        train_size="quick", train_repeats=3, train_steps=1, train_warmup=1,
        prepare_seconds=1.0, prepare_batch=1, prepare_repeats=2, prepare_codecs=("tiny-1.5kbps",),
        embed_seconds=1.0, embed_batch=1, embed_inputs=("mel",), kmeans_hours=0.02, kmeans_dim=32, kmeans_clusters=16, kmeans_threads=(1,),
    ),
    "cpu": dict(
        train_size="cpu", train_repeats=5, train_steps=2, train_warmup=1,
        prepare_seconds=5.0, prepare_batch=2, prepare_repeats=3,
        prepare_codecs=("encodec-24khz-6kbps", "tiny-1.5kbps"),
        embed_seconds=10.0, embed_batch=2, embed_inputs=("mel", "latent"), kmeans_hours=1.0, kmeans_dim=256, kmeans_clusters=512, kmeans_threads=(None, 1),
    ),
    "gpu": dict(
        train_size="gpu", train_repeats=5, train_steps=10, train_warmup=3,
        prepare_seconds=30.0, prepare_batch=8, prepare_repeats=5,
        prepare_codecs=("encodec-24khz-6kbps", "tiny-1.5kbps"),
        embed_seconds=30.0, embed_batch=8, embed_inputs=("mel", "latent"), kmeans_hours=1.0, kmeans_dim=768, kmeans_clusters=512, kmeans_threads=(None, 1),
    ),
}  # fmt: skip


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _meta(args: argparse.Namespace, mode: str, device) -> dict:
    import torch
    import transformers
    from bench_train import bf16_peak, device_name

    return dict(
        timestamp=dt.datetime.now().isoformat(timespec="seconds"),
        command="python benchmarks/run.py " + " ".join(args.argv),
        mode=mode,
        device=device_name(device),
        bf16_peak_TFLOPs=(bf16_peak(device) or 0) / 1e12 or None,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        git_commit=_git_commit(),
    )


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def write_outputs(out: str | Path, payload: dict, text: str) -> Path:
    """``out`` (JSON of ``payload``) and ``out`` with ``.md`` (``text``), folders made: every
    benchmark's pair of outputs."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(text if text.endswith("\n") else text + "\n")
    return out


def markdown_table(rows: list[dict]) -> str:
    """One markdown table; columns are the rows' keys in first-seen order (lists and ``bench`` left out)."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k != "bench" and not isinstance(v, (list, dict)) and k not in cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


def render(results: dict) -> str:
    m = results["meta"]
    out = [
        f"## whispergpt benchmarks ({m['mode']} mode)",
        "",
        f"{m['device']}; torch {m['torch']}, transformers {m['transformers']}; commit {m['git_commit']}; "
        f"{m['timestamp']}",
        f"`{m['command']}`",
    ]
    for section in SECTIONS:
        rows = results["sections"].get(section)
        if rows:
            out += ["", f"### {section}", "", markdown_table(rows)]
    for section, note in results["notes"].items():
        out += ["", f"note ({section}): {note}"]
    return "\n".join(out) + "\n"


def _call_filtered(fn, **kwargs):
    """Call ``fn`` with the keyword arguments its signature accepts (bench_sampling's is its own)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def run_sections(args: argparse.Namespace, mode: str, device) -> dict:
    cfg = MODES[mode]
    results: dict = dict(meta=_meta(args, mode, device), sections={}, notes={}, errors={})
    for section in args.only:
        t0 = time.perf_counter()
        print(f"[bench] {section} ...", file=sys.stderr, flush=True)
        try:
            if section == "train":
                from bench_train import TRAIN_SIZES, run_train_benchmark

                rows = run_train_benchmark(
                    TRAIN_SIZES[cfg["train_size"]],
                    device=device,
                    repeats=args.repeats or cfg["train_repeats"],
                    steps=cfg["train_steps"],
                    warmup=cfg["train_warmup"],
                    compile=args.compile,
                )
            elif section == "prepare":
                from bench_prepare import run_prepare_benchmark

                rows = run_prepare_benchmark(
                    seconds=cfg["prepare_seconds"],
                    batch=cfg["prepare_batch"],
                    device=device,
                    repeats=args.repeats or cfg["prepare_repeats"],
                    codecs=cfg["prepare_codecs"],
                )
            elif section == "fine":
                from bench_fine import run_fine_benchmark

                rows = run_fine_benchmark(mode, device, args.repeats)
            elif section == "hierarchy":
                from bench_hierarchy import run_hierarchy_benchmark

                rows = run_hierarchy_benchmark(mode, device, args.repeats)
            elif section == "mae_tools":
                from bench_mae_tools import run_embed_benchmark, run_kmeans_benchmark

                rows = run_embed_benchmark(
                    mode, seconds=cfg["embed_seconds"], batch=cfg["embed_batch"], device=device,
                    repeats=args.repeats or cfg["prepare_repeats"], inputs=cfg["embed_inputs"],
                )  # fmt: skip
                rows += run_kmeans_benchmark(
                    cfg["kmeans_hours"],
                    cfg["kmeans_dim"],
                    cfg["kmeans_clusters"],
                    threads=cfg["kmeans_threads"],
                )
            else:
                try:
                    import bench_sampling
                except ModuleNotFoundError as e:
                    if e.name != "bench_sampling":
                        raise
                    results["notes"][section] = "benchmarks/bench_sampling.py is not present: skipped"
                    continue
                kwargs = dict(
                    mode=mode, quick=mode == "quick", device=device, compile=args.compile, clock=args.clock
                )
                if args.repeats:
                    kwargs["repeats"] = args.repeats
                rows = _call_filtered(bench_sampling.run_sampling_benchmark, **kwargs)
            results["sections"][section] = rows
        except Exception as e:  # one broken section must not hide the others' numbers
            traceback.print_exc()
            results["errors"][section] = f"{type(e).__name__}: {e}"
        print(f"[bench] {section} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="whispergpt vs transformers MusicGen: training, sampling and preparation throughput.",
    )
    p.add_argument("--quick", action="store_true", help="CI smoke mode: tiny sizes, < 1 minute on CPU")
    p.add_argument("--mode", choices=list(MODES), help="size preset (default: gpu on CUDA, else cpu)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default: per mode)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (both sides)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="sampling: wall time, or process CPU time (a shared machine; with --threads 1)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON path (default runs/benchmarks/<timestamp>.json); the markdown goes next to it as .md",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad or not only:
        print(f"--only: expected a subset of {list(SECTIONS)}, got {args.only!r}", file=sys.stderr)
        return 2
    args.only = only
    if args.repeats is not None and args.repeats < 1:
        print(f"--repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if args.quick and args.mode not in (None, "quick"):
        print(f"--quick conflicts with --mode {args.mode}", file=sys.stderr)
        return 2

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError as e:
        print(f"--device: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else args.mode or ("gpu" if device.type == "cuda" else "cpu")

    results = run_sections(args, mode, device)
    text = render(results)
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = write_outputs(args.out or Path("runs") / "benchmarks" / f"{stamp}-{mode}.json", results, text)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    for section, err in results["errors"].items():
        print(f"error in {section}: {err}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
