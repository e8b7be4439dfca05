"""``whispergpt compare``: the paper's table: GPT-S / GPT-L (token-only) vs the hybrid, speech and music.

Usage::

    whispergpt compare --speech DIR --music DIR --out DIR [--scale tiny|paper] [--tokens N]
                       [--launcher CMD] [--processes N] [key=value ...]

For each prepared set (``--speech``, ``--music``: ``whispergpt prepare`` outputs with a ``val``
split) it trains the three recipes ``configs/paper_gpt_s.yaml``, ``paper_gpt_l.yaml`` and
``paper_hybrid.yaml`` for the same number of training tokens, then runs ``whispergpt eval`` on the
set's val split (the hybrid with both mel sources) and writes the paper-style table.

Same tokens: every run gets the same ``batch_size``, ``frames`` (= context) and ``max_steps``, so
it consumes ``max_steps x batch_size x processes x frames`` frames (x K codec tokens per frame).
``--tokens N`` (frames) sets ``max_steps = ceil(N / (batch_size x processes x frames))``.

Scales (exactly what changes; everything else is the recipe):

- ``paper``: the recipes as they are (d_model 256/512/256, 4/12/4 layers, context 512), batch 32,
  lr 3e-4 -> 3e-5 cosine, warmup 500, default ``--tokens`` 32 x 512 x 20000 = 327,680,000 frames.
- ``tiny`` (CPU minutes): context 64; GPT-S d_model 64, 2 layers, 4 heads; GPT-L d_model 128,
  6 layers, 4 heads; hybrid d_model 64, 2 layers, 4 heads, mel_dim 16, 1 mel layer (2 heads);
  dropout 0; batch 8, lr 3e-3 -> 3e-4, warmup 30, default ``--tokens`` 8 x 64 x 300 = 153,600
  frames.

In both, ``num_codebooks``, ``codebook_size`` and ``n_mels`` come from each dataset, wandb is off
(``logging.wandb=true`` turns it on), and the trainer's own periodic val uses 8 batches.
``key=value`` overrides apply to every run after the scale (e.g. ``train.lr=1e-3``).

Layout: ``OUT/<set>/<recipe>/`` is a training run (``config.yaml``, ``metrics.jsonl``,
``final/``); ``OUT/<set>/eval.{json,md,png}`` its evaluation; ``OUT/compare.{json,md}`` the table.
Resumable: a run whose ``final/`` exists is not trained again (a killed run resumes from its last
checkpoint), and an evaluation newer than its three models is reused. Delete a folder to redo it.

Training and evaluation run in this process by default, or as subprocesses through ``--launcher``
(output in ``train.log`` / ``eval.log``), e.g. ``--launcher "accelerate launch --num_processes 8"
--processes 8`` for 8 GPUs, or ``--launcher python`` for a fresh interpreter per step.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..cli import command, make_parser
from ..config import apply_overrides
from ..errors import CommandFailed

RECIPES = (("GPT-S", "paper_gpt_s"), ("GPT-L", "paper_gpt_l"), ("hybrid", "paper_hybrid"))
SETS = ("speech", "music")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

SCALES: dict[str, dict] = {
    "paper": dict(
        batch_size=32,
        steps_tokens=32 * 512 * 20000,
        model={},
        train=dict(lr=3e-4, min_lr=3e-5, warmup_steps=500),
    ),
    "tiny": dict(
        batch_size=8,
        steps_tokens=8 * 64 * 300,
        model={
            "*": dict(context=64, dropout=0.0),
            "paper_gpt_s": dict(d_model=64, n_layers=2, n_heads=4),
            "paper_gpt_l": dict(d_model=128, n_layers=6, n_heads=4),
            "paper_hybrid": dict(d_model=64, n_layers=2, n_heads=4, mel_dim=16, mel_layers=1, mel_heads=2),
        },
        train=dict(lr=3e-3, min_lr=3e-4, warmup_steps=30),
    ),
}


def run_config(recipe: str, data_dir: str, out_dir: Path, scale: str, tokens: int | None, processes: int,
               overrides: list[str], configs: Path = CONFIGS) -> dict:  # fmt: skip
    """The raw run config (a dict for ``training.resolve_config``) of one recipe on one set."""
    path = configs / f"{recipe}.yaml"
    if not path.is_file():
        raise ValueError(f"recipe {path} not found (pass --configs DIR holding the paper_*.yaml recipes)")
    base = yaml.safe_load(path.read_text()) or {}
    model = dict(base.get("model") or {})
    sc = SCALES[scale]
    model.update(sc["model"].get("*", {}))
    model.update(sc["model"].get(recipe, {}))
    for key in ("num_codebooks", "codebook_size", "n_mels"):
        model[key] = None  # from the dataset
    cfg = dict(
        out_dir=str(out_dir),
        model=model,
        data=dict(dir=str(data_dir), frames=None),
        train=dict(batch_size=sc["batch_size"], grad_accum=1, eval_batches=8, **sc["train"]),
        logging=dict(wandb=False, progress=False),
    )
    cfg = apply_overrides(cfg, overrides)
    # The token budget after the overrides, so a changed batch or context keeps runs comparable.
    t = cfg["train"]
    frames = cfg["data"].get("frames") or cfg["model"].get("context") or 512
    budget = sc["steps_tokens"] if tokens is None else tokens
    steps = t.setdefault(
        "max_steps", max(1, math.ceil(budget / (t["batch_size"] * t["grad_accum"] * processes * frames)))
    )
    t.setdefault("save_every", max(1, steps // 4))
    t.setdefault("eval_every", max(1, steps // 10))
    t.setdefault("log_every", max(1, steps // 100))
    return cfg


def _run(cmd: list[str], log: Path) -> None:
    """Run ``cmd``, teeing its output into ``log``; ``RuntimeError`` naming the log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-20:]))
        raise CommandFailed(
            f"{shlex.join(cmd)} failed (exit {r.returncode})", r.returncode, log, "see the log"
        )


def _step(launcher: list[str] | None, command: str, args: list[str], log: Path) -> None:
    """``whispergpt <command> <args>``: in this process (no launcher) or through the launcher."""
    if launcher:
        _run([*launcher, "-m", "whispergpt.cli", command, *args], log)
        return
    from .. import evaluate, training

    print(f"$ whispergpt {command} {shlex.join(args)}", flush=True)
    rc = (training.main if command == "train" else evaluate.main)(args)
    if rc != 0:
        raise CommandFailed(f"whispergpt {command} failed (exit {rc})", rc)


def compare(
    sets: dict[str, str],
    out: str | os.PathLike,
    scale: str = "tiny",
    tokens: int | None = None,
    launcher: str | None = None,
    processes: int = 1,
    overrides: list[str] | None = None,
    configs: str | os.PathLike = CONFIGS,
) -> dict:
    """Train + evaluate every recipe on every set; returns (and writes) the comparison dict."""
    from ..data import read_manifest
    from ..training import resolve_config

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if tokens is not None and tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    launch = shlex.split(launcher) if launcher else None
    out = Path(out)
    for name, d in sets.items():
        m = read_manifest(d)  # ValueError if not a dataset
        if not m["splits"].get("val", {}).get("files"):
            raise ValueError(f"--{name} {d}: the val split is empty; prepare it with --val-fraction > 0")
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    for set_name, data_dir in sets.items():
        finals = []
        for _label, recipe in RECIPES:
            run_dir = out / set_name / recipe
            raw = run_config(
                recipe, data_dir, run_dir, scale, tokens, processes, overrides or [], Path(configs)
            )
            resolve_config(json.loads(json.dumps(raw)))  # validate now, before hours of training
            final = run_dir / "final"
            if not (final / "model.safetensors").is_file():
                run_dir.mkdir(parents=True, exist_ok=True)
                recipe_path = run_dir / "recipe.yaml"
                recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
                t0 = time.perf_counter()
                _step(launch, "train", [str(recipe_path)], run_dir / "train.log")
                timings[f"train {set_name}/{recipe}"] = time.perf_counter() - t0
            else:
                print(f"{final} exists: not training again", flush=True)
            finals.append(final)
        report_path = out / set_name / "eval.json"
        newest = max((f / "model.safetensors").stat().st_mtime for f in finals)
        if not report_path.is_file() or report_path.stat().st_mtime < newest:
            args = [a for f in finals for a in ("--checkpoint", str(f))]
            args += ["--data", str(data_dir), "--split", "val", "--mel", "both", "--out", str(report_path)]
            t0 = time.perf_counter()
            _step(launch, "eval", args, out / set_name / "eval.log")
            timings[f"eval {set_name}"] = time.perf_counter() - t0
        results[set_name] = json.loads(report_path.read_text())
    table = comparison_table(results)
    summary = dict(scale=scale, processes=processes, overrides=overrides or [], timings_s=timings,
                   rows=table_rows(results), sets={k: str(v) for k, v in sets.items()})  # fmt: skip
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "compare.md").write_text(table)
    print(table, flush=True)
    return summary


def table_rows(results: dict[str, dict]) -> list[dict]:
    """One row per (recipe, mel source): params, training frames, NLL/ppl per set."""
    rows: dict[tuple[str, str], dict] = {}
    labels = dict((r, lab) for lab, r in RECIPES)
    for set_name, report in results.items():
        for e in report["checkpoints"]:
            recipe = Path(e["checkpoint"]).parent.name
            for x in e["evaluations"]:
                key = (recipe, x["mel_source"])
                row = rows.setdefault(
                    key,
                    dict(model=labels.get(recipe, recipe), recipe=recipe, mel_source=x["mel_source"],
                         mel_label=x["mel_label"], params={}, fusion=e["config"]["fusion"]),
                )  # fmt: skip
                row["params"][set_name] = e["config"]["num_parameters"]
                m = x["metrics"]
                row[set_name] = dict(nll=m["nll"], ppl=m["ppl"], acc=m["acc"], tokens=m["tokens"])
    return list(rows.values())


def comparison_table(results: dict[str, dict]) -> str:
    sets = list(results)
    head = "| model | mel source | params | " + " | ".join(f"{s} NLL (ppl)" for s in sets) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(sets)]
    for row in table_rows(results):
        params = sorted(set(row["params"].values()))
        cells = [f"{row[s]['nll']:.3f} ({row[s]['ppl']:.1f})" if s in row else "-" for s in sets]
        lines.append(
            f"| {row['model']} | {row['mel_label']} | {' / '.join(f'{p:,}' for p in params)} | "
            + " | ".join(cells)
            + " |"
        )
    tokens = {s: next(iter(results[s]["checkpoints"]))["evaluations"][0]["metrics"]["tokens"] for s in sets}
    note = ", ".join(f"{s}: {results[s]['data']['files']} files, {tokens[s]:,} scored tokens" for s in sets)
    return (
        "NLL in nats per token on each set's val split, whole split, teacher-forced (coarse pattern: codebook 0). "
        f"{note}.\n\n" + "\n".join(lines) + "\n"
    )


@command("compare")
def main(argv: list[str]) -> int:
    ap = make_parser(
        "whispergpt compare",
        "Train the paper's GPT-S / GPT-L / hybrid recipes on a speech and a music set for the "
        "same number of tokens, evaluate them, and write the paper-style table.",
        """
        whispergpt compare --speech data/prepared/speech --music data/prepared/music --out runs/compare
        whispergpt compare --speech ds/s --music ds/m --out runs/c --scale tiny train.lr=1e-3 \
            --launcher "accelerate launch" --processes 2
        """,
    )
    ap.add_argument("--speech", required=True, help="prepared speech dataset (with a val split)")
    ap.add_argument("--music", required=True, help="prepared music dataset (with a val split)")
    ap.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    ap.add_argument("--scale", choices=tuple(SCALES), default="tiny")
    ap.add_argument("--tokens", type=int, default=None, help="training frames per run (default: per scale)")
    ap.add_argument(
        "--launcher", default=None, help='command prefix for train/eval, e.g. "accelerate launch"'
    )
    ap.add_argument(
        "--processes", type=int, default=1, help="processes the launcher starts (token arithmetic)"
    )
    ap.add_argument("--configs", default=str(CONFIGS), help="folder holding configs/paper_*.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.lr=1e-3")
    args = ap.parse_args(argv)
    compare(
        {"speech": args.speech, "music": args.music},
        args.out,
        scale=args.scale,
        tokens=args.tokens,
        launcher=args.launcher,
        processes=args.processes,
        overrides=args.overrides,
        configs=args.configs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
