"""The fine acoustic stage as a multiple of real time (issue 14: goal >= 20x on 2 CPU cores).

``run_fine_benchmark(mode, device, repeats)`` times ``whispergpt.inference.fine_stage.fine_generate`` (the
whole stage: window tiling, ``K - Kc`` batched passes, argmax) on random coarse codes of
``seconds`` of audio, with random weights of the shipped recipes' sizes:

- ``fine_quickstart``: ``configs/fine_quickstart.yaml`` (D128 L4 H4, 3 s windows) at 1.5 kbps
  (K=2: one stage), the demo setting;
- ``fine_quickstart@6kbps``: the same model at EnCodec 24 kHz 6 kbps (K=8: seven stages);
- ``fine_base@6kbps``: ``base.yaml``'s ``fine:`` defaults (D256 L4 H4) at 6 kbps.

``x_real_time = batch x seconds / median wall time``; on CPU also ``x_real_time_per_cpu_s``
= ``batch x seconds / median process CPU time`` (all threads): about the wall figure on one idle
core (``n`` idle cores: at most ``n`` times it). On a shared machine the wall figure depends on the
load and this one much less (quote both, with ``uptime``; spinning OpenMP threads inflate CPU time,
so measure it with ``--threads 1``). The codec decode that follows in ``sample``
is not included (it is the same with or without the fine stage; see bench_prepare / bench_sampling).
Standalone: ``python benchmarks/bench_fine.py [--threads 2] [--out runs/bench/fine.json]``;
also the ``fine`` section of ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

SIZES = {  # name -> (K, d_model, n_layers, n_heads, context)
    "fine_quickstart": (2, 128, 4, 4, 225),
    "fine_quickstart@6kbps": (8, 128, 4, 4, 225),
    "fine_base@6kbps": (8, 256, 4, 4, 225),
    "fine_tiny": (2, 64, 2, 4, 64),
}
MODES = {  # mode -> (sizes, seconds of audio, batches, repeats)
    "quick": (("fine_tiny",), 2.0, (1,), 2),
    "cpu": (("fine_quickstart", "fine_quickstart@6kbps", "fine_base@6kbps"), 10.0, (1, 8), 3),
    "gpu": (("fine_quickstart", "fine_quickstart@6kbps", "fine_base@6kbps"), 60.0, (1, 8), 5),
}


def run_fine_benchmark(
    mode: str = "cpu", device: str | torch.device = "cpu", repeats: int | None = None
) -> list[dict]:
    from whispergpt.inference.fine_stage import default_overlap, fine_generate, fine_windows
    from whispergpt.models import FineConfig, FineModel

    names, seconds, batches, default_repeats = MODES[mode]
    repeats = repeats or default_repeats
    device = torch.device(device)
    rows = []
    for name in names:
        K, D, L, H, ctx = SIZES[name]
        torch.manual_seed(0)
        cfg = FineConfig(num_codebooks=K, codebook_size=1024, d_model=D, n_layers=L, n_heads=H, context=ctx)
        model = FineModel(cfg).to(device).eval()
        T = int(seconds * 75)
        for B in batches:
            coarse = torch.randint(0, 1024, (B, 1, T), device=device)
            fine_generate(model, coarse[:, :, : min(T, ctx)])  # warm-up
            times, cpu = [], []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fine_generate(model, coarse)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            med, med_cpu = statistics.median(times), statistics.median(cpu)
            rows.append(
                dict(
                    model=name,
                    params_M=round(model.num_parameters() / 1e6, 3),
                    K=K,
                    stages=cfg.stages,
                    context=ctx,
                    windows=len(fine_windows(T, ctx, None)),
                    overlap=default_overlap(ctx),
                    batch=B,
                    seconds_audio=seconds,
                    seconds=med,
                    x_real_time=B * seconds / med,
                    cpu_s=med_cpu,
                    x_real_time_per_cpu_s=B * seconds / med_cpu if device.type == "cpu" else None,
                    repeats=repeats,
                    times_s=times,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_fine.py", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=list(MODES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path; the table goes next to it as .md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import markdown_table, write_outputs

    rows = run_fine_benchmark(args.mode, args.device, args.repeats)
    table = markdown_table(rows)
    meta = dict(
        mode=args.mode, device=args.device, torch_threads=torch.get_num_threads(), torch=torch.__version__
    )
    print(f"fine stage, {meta}\n\n{table}")
    if args.out:
        write_outputs(args.out, dict(meta=meta, rows=rows), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
