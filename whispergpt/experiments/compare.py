"""``whispergpt compare``: the paper's table: GPT-S / GPT-L (token-only) vs the hybrid, speech and music.

Usage::

    whispergpt compare --speech DIR --music DIR --out DIR [--scale tiny|paper] [--tokens N]
                       [--launcher CMD] [--processes N] [key=value ...]
    whispergpt compare --preset paper --out DIR [--scale cpu|gpu|tiny] [--seeds N] [--settings A,B] [--jobs N]
                       [--speech DIR --music DIR | --corpus DIR] [--estimate [A,B]] [key=value ...]

For each prepared set (``--speech``, ``--music``: ``whispergpt prepare`` outputs with a ``val``
split) it trains the three paper recipes (``paper_gpt_s``, ``paper_gpt_l``, ``paper_hybrid``) for
the same number of training tokens, then runs ``whispergpt eval`` on the set's val split (the
hybrid with both mel sources) and writes the paper-style table.

Scales are recipes: ``configs/compare/<scale>/<recipe>.yaml`` extends the shipped recipe and the
scale's ``scale.yaml`` (what changes, e.g. ``tiny``: context 64, small widths, batch 8, lr 3e-3;
``paper``: the recipes as they are, batch 32, lr 3e-4). ``num_codebooks``, ``codebook_size`` and
``n_mels`` come from each dataset; wandb is off (``logging.wandb=true`` turns it on).
``key=value`` overrides apply to every run after the scale (e.g. ``train.lr=1e-3``).

Same tokens: every run gets the same ``batch_size``, ``frames`` (= context) and ``max_steps``, so
it consumes ``max_steps x batch_size x processes x frames`` frames (x K codec tokens per frame).
The budget is ``--tokens N`` (frames), by default the scale's own ``max_steps x batch_size x
context`` (tiny: 8 x 64 x 300 = 153,600; paper: 32 x 512 x 20000 = 327,680,000); it becomes
``max_steps = ceil(N / (batch_size x processes x frames))`` after the overrides, and the save /
eval / log periods follow from it (unless overridden).

Layout: ``OUT/<set>/<recipe>/`` is a training run (``config.yaml``, ``metrics.jsonl``,
``final/``); ``OUT/<set>/eval.{json,md,png}`` its evaluation; ``OUT/<set>/heldout/<recipe>/`` the
model's continuations of ``--prompts`` held-out prompts (the same prompts for every model, next to
the real audio) and ``OUT/<set>/score/<recipe>/`` their scores (``whispergpt score``, NLL under
GPT-L as the one judge); ``OUT/compare.{json,md}`` the tables.
Resumable: a run whose ``final/`` exists is not trained again (a killed run resumes from its last
checkpoint), and an evaluation newer than its three models is reused. Delete a folder to redo it.

``--preset NAME`` runs a whole comparison instead (models x settings x seeds x sets, trained to
convergence, with seed spread, equal-FLOPs reading and curves): ``experiments/preset.py``, e.g.
``whispergpt compare --preset paper --out runs/paper`` (issue 20; docs/EVAL.md).

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
from collections.abc import Callable
from pathlib import Path

import yaml

from whispergpt.config import apply_overrides, load_recipe
from whispergpt.config_io import deep_merge, recipes_dir
from whispergpt.errors import CommandFailed
from whispergpt.runtime import RERUN_HINT, holds_folder, run_child, write_atomic, writing

RECIPES = (("GPT-S", "paper_gpt_s"), ("GPT-L", "paper_gpt_l"), ("hybrid", "paper_hybrid"))
SETS = ("speech", "music")
CONFIGS = recipes_dir()


def scales(configs: str | os.PathLike = CONFIGS) -> list[str]:
    """The scales ``configs/compare/<scale>/`` defines (folders with a ``scale.yaml``)."""
    root = Path(configs) / "compare"
    return sorted(d.name for d in root.iterdir() if (d / "scale.yaml").is_file()) if root.is_dir() else []


def _set_by(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def run_config(recipe: str, data_dir: str, out_dir: Path, scale: str, tokens: int | None, processes: int,
               overrides: list[str], configs: str | os.PathLike = CONFIGS) -> dict:  # fmt: skip
    """The raw run config (a dict for ``training.resolve_config``) of one recipe on one set:
    ``configs/compare/<scale>/<recipe>.yaml``, then the overrides, then the token arithmetic."""
    path = Path(configs) / "compare" / scale / f"{recipe}.yaml"
    if not path.is_file():
        raise ValueError(
            f"recipe {path} not found (scales under {configs}: {scales(configs)}; "
            "--configs DIR must hold compare/<scale>/paper_*.yaml)"
        )
    cfg = load_recipe(path)
    # The scale's default budget is its own max_steps x batch x frames (one process).
    t, frames = cfg["train"], cfg["data"].get("frames") or cfg["model"]["context"]
    budget = t["max_steps"] * t["batch_size"] * t["grad_accum"] * frames if tokens is None else tokens
    cfg = deep_merge(cfg, dict(out_dir=str(out_dir), data=dict(dir=str(data_dir))))
    cfg = apply_overrides(cfg, overrides)
    # Steps from the budget after the overrides, so a changed batch or context keeps runs comparable.
    t, frames = cfg["train"], cfg["data"].get("frames") or cfg["model"]["context"]
    if not _set_by(overrides, "train.max_steps"):
        t["max_steps"] = max(1, math.ceil(budget / (t["batch_size"] * t["grad_accum"] * processes * frames)))
    steps = t["max_steps"]
    for key, every in (("save_every", steps // 4), ("eval_every", steps // 10), ("log_every", steps // 100)):
        if not _set_by(overrides, f"train.{key}"):
            t[key] = max(1, every)
    return cfg


def run_logged(cmd: list[str], log: Path, env: dict | None = None) -> None:
    """Run ``cmd`` (in ``env``), its output appended to ``log``; ``CommandFailed`` naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    with writing(log, "the step's log", RERUN_HINT), open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        r = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-20:]))
        raise CommandFailed(
            f"{shlex.join(cmd)} failed (exit {r.returncode})", r.returncode, log, "see the log"
        )


def run_step(launcher: list[str] | None, command: str, args: list[str], log: Path,
             main: Callable[[list[str]], int] | None = None) -> None:  # fmt: skip
    """``whispergpt <command> <args>``: through the launcher when there is one, else in this process
    through ``main`` (the CLI's entry point, handed in: the harness never imports the CLI), else as
    a child of this interpreter."""
    if launcher or main is None:
        run_logged([*(launcher or [sys.executable]), "-m", "whispergpt", command, *args], log)
        return
    print(f"$ whispergpt {command} {shlex.join(args)}", flush=True)
    rc = main([command, *args])
    if rc != 0:
        raise CommandFailed(f"whispergpt {command} failed (exit {rc})", rc)


@holds_folder("compare")
def compare(
    sets: dict[str, str],
    out: str | os.PathLike,
    scale: str = "tiny",
    tokens: int | None = None,
    launcher: str | None = None,
    processes: int = 1,
    overrides: list[str] | None = None,
    configs: str | os.PathLike = CONFIGS,
    prompts: int = 8,
    prompt_seconds: float | None = None,
    seconds: float = 2.0,
    main: Callable[[list[str]], int] | None = None,
) -> dict:
    """Train + evaluate every recipe on every set, then (``prompts > 0``) have every model continue
    the same held-out prompts and score them; returns (and writes) the comparison dict. Without a
    launcher each step runs in this process through ``main`` (``whispergpt.cli.main``), or as a
    child process when ``main`` is None."""
    from whispergpt.config import resolve_config
    from whispergpt.data import read_manifest

    if scale not in scales(configs):
        raise ValueError(
            f"scale must be one of {scales(configs)} (folders of {configs}/compare), got {scale!r}"
        )
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
    scored: dict[str, dict[str, dict]] = {}
    for set_name, data_dir in sets.items():
        finals = []
        for _label, recipe in RECIPES:
            run_dir = out / set_name / recipe
            raw = run_config(recipe, data_dir, run_dir, scale, tokens, processes, overrides or [], configs)
            resolve_config(json.loads(json.dumps(raw)))  # validate now, before hours of training
            final = run_dir / "final"
            if not (final / "model.safetensors").is_file():
                run_dir.mkdir(parents=True, exist_ok=True)
                recipe_path = run_dir / "recipe.yaml"
                write_atomic(recipe_path, yaml.safe_dump(raw, sort_keys=False), "the run's recipe")
                t0 = time.perf_counter()
                run_step(launch, "train", [str(recipe_path)], run_dir / "train.log", main)
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
            run_step(launch, "eval", args, out / set_name / "eval.log", main)
            timings[f"eval {set_name}"] = time.perf_counter() - t0
        results[set_name] = json.loads(report_path.read_text())
        if prompts > 0:
            t0 = time.perf_counter()
            scored[set_name], work = score_heldout(
                out / set_name, data_dir, finals, prompts, prompt_seconds, seconds, launch, main
            )
            if work:
                timings[f"heldout {set_name}"] = time.perf_counter() - t0
    table = comparison_table(results)
    if scored:
        from whispergpt.evaluation.score_report import comparison

        labels = dict((r, lab) for lab, r in RECIPES)
        for set_name, reports in scored.items():
            named = {labels[r]: rep for r, rep in reports.items()}
            table += "\n" + comparison(
                named, f"{set_name}: continuations of the same {prompts} held-out prompts"
            )
    summary = dict(scale=scale, processes=processes, overrides=overrides or [], timings_s=timings,
                   rows=table_rows(results), sets={k: str(v) for k, v in sets.items()},
                   scored={k: {r: str(out / k / "score" / r / "score.json") for r in v} for k, v in scored.items()})  # fmt: skip
    write_atomic(out / "compare.json", json.dumps(summary, indent=2) + "\n", "the comparison")
    write_atomic(out / "compare.md", table, "the comparison table")
    print(table, flush=True)
    return summary


def score_heldout(set_dir: Path, data_dir: str, finals: list[Path], prompts: int, prompt_seconds: float | None,
                  seconds: float, launch: list[str] | None,
                  main: Callable[[list[str]], int] | None = None) -> tuple[dict[str, dict], bool]:  # fmt: skip
    """Every model continues the same held-out prompts (``sample --data``); each set is scored
    against the real continuations, all under one judge (GPT-L, the largest token-only model).
    Returns the score reports by recipe and whether anything had to be (re)done."""
    if prompt_seconds is None:  # half the shortest context: every model holds the prompt
        ctx = min(json.loads((f / "config.json").read_text())["context"] for f in finals)
        prompt_seconds = max(1, ctx // 2) / 75
    judge = next(f for f in finals if f.parent.name == "paper_gpt_l")
    reports, work = {}, False
    for final in finals:
        recipe = final.parent.name
        gen = set_dir / "heldout" / recipe
        args = ["--checkpoint", str(final), "--data", str(data_dir), "--split", "val"]
        args += ["--num-prompts", str(prompts), "--prompt-seconds", f"{prompt_seconds:.6g}"]
        args += ["--seconds", f"{seconds:.6g}", "--out", str(gen), "--seed", "0", "--no-progress"]
        record = gen / "generation.json"  # written last: the set is complete
        if not record.is_file() or json.loads(record.read_text()).get("num_prompts") != prompts:
            run_step(launch, "sample", args, gen / "sample.log", main)  # resumes: finished prompts are kept
            work = True
        dest = set_dir / "score" / recipe
        report = dest / "score.json"
        if not report.is_file() or report.stat().st_mtime < record.stat().st_mtime:
            args = [str(gen), "--checkpoint", str(final), "--judge", str(judge), "--out", str(dest)]
            run_step(launch, "score", args, dest / "score.log", main)
            work = True
        reports[recipe] = json.loads(report.read_text())
    return reports, work


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
