"""``whispergpt compare --preset NAME``: a whole comparison (models x settings x seeds x sets) in
one command, trained to convergence, evaluated, and summarised with its seed spread.

A preset is a YAML file (``configs/compare/presets/<name>.yaml``; ``paper.yaml`` is issue 20's):
``settings`` (what every model is trained under), ``models`` (trained in every setting),
``ablations`` (extra runs varying one setting's model), ``seeds``, ``sets`` and ``scales`` (the
model sizes and the training block per machine, e.g. ``cpu`` / ``gpu`` / ``tiny``); see the file.

Steps, each skipped when its output is complete (a re-run resumes; delete a folder to redo it):

1. data: ``--speech`` / ``--music`` prepared sets, or the demo corpus built and prepared like the
   quickstart's (``OUT/corpus``, ``OUT/prepared/{speech,music}``; ``--corpus DIR`` reuses a corpus);
2. every run: ``whispergpt train`` (a killed run resumes from its last checkpoint; a run with
   ``final/`` is done), then ``whispergpt eval`` of ``final/`` on the set's whole val split with
   the setting's mel source. ``--jobs N`` runs N at once, each with ``cores / N`` threads;
3. the report (``compare_report``): ``OUT/compare.{md,json}`` and ``OUT/curves-<set>.png``.

Layout: ``OUT/runs/<set>/<setting>/<model>/seed<k>/`` holds ``recipe.yaml`` (what compare asked
for), ``config.yaml`` (the resolved config), ``run.json`` (plan, FLOPs, wall times),
``metrics.jsonl``, ``final/``, ``eval.{json,md,png}`` and the ``train.log`` / ``eval.log``.

``--estimate`` trains nothing: it times a few dozen steps of each distinct model, one thread, and
extrapolates the whole preset's wall time (``OUT/estimate.{md,json}``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from whispergpt.config import apply_overrides, load_recipe
from whispergpt.config_io import deep_merge, recipes_dir
from whispergpt.errors import CommandFailed
from whispergpt.experiments.plan import Run
from whispergpt.runtime import write_atomic, write_json_atomic

PRESET_KEYS = {"corpus", "sets", "seeds", "default_scale", "settings", "default_settings", "models", "ablations",
               "scales"}  # fmt: skip
SCALE_KEYS = {"jobs", "common", "models", "fine"}  # fine: a fine stage per set and seed (compare_bits)


def presets_dir() -> Path:
    return recipes_dir() / "compare" / "presets"


def presets() -> list[str]:
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_preset(name_or_path: str | os.PathLike) -> dict:
    """A preset (a path, or the name of a shipped one) as a checked mapping."""
    p = Path(name_or_path)
    if not p.is_file():
        p = presets_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(f"preset {name_or_path!r} not found: not a file, nor one of {presets()}")
    preset = yaml.safe_load(p.read_text()) or {}
    unknown = set(preset) - PRESET_KEYS
    missing = {"settings", "models", "scales"} - set(preset)
    if unknown or missing:
        raise ValueError(f"{p}: unknown keys {sorted(unknown)} / missing keys {sorted(missing)}")
    for name, scale in preset["scales"].items():
        if set(scale) - SCALE_KEYS or set(preset["models"]) - set(scale.get("models", {})):
            raise ValueError(
                f"{p}: scale {name!r} must have keys among {sorted(SCALE_KEYS)} and a `models` entry for "
                f"each of {preset['models']}"
            )
    for name, ab in (preset.get("ablations") or {}).items():
        if ab.get("setting") not in preset["settings"] or ab.get("model") not in preset["models"]:
            raise ValueError(f"{p}: ablation {name!r} must name one of the settings and one of the models")
    preset.setdefault("sets", ["speech", "music"])
    preset.setdefault("seeds", [0, 1, 2])
    preset.setdefault("ablations", {})
    preset.setdefault("default_settings", list(preset["settings"]))
    if set(preset["default_settings"]) - set(preset["settings"]):
        raise ValueError(f"{p}: default_settings must name settings, got {preset['default_settings']}")
    preset["path"] = str(p)
    return preset


def run_config(preset: dict, scale: str, setting: str, model: str, seed: int, data_dir: str,
               out_dir: Path, overrides: list[str]) -> dict:  # fmt: skip
    """The raw config of one run, lowest first: the model's recipe, the scale's common block, the
    model's block, the setting, the ablation's overrides, the seed, the command line's overrides."""
    sc = preset["scales"][scale]
    base_model = preset["ablations"][model]["model"] if model in preset["ablations"] else model
    spec = dict(sc["models"][base_model])
    cfg = load_recipe(spec.pop("recipe", "base.yaml"))
    for part in (sc.get("common") or {}, spec, preset["settings"][setting]):
        cfg = deep_merge(cfg, part)
    if model in preset["ablations"]:
        cfg = apply_overrides(cfg, preset["ablations"][model].get("overrides") or [])
    cfg = deep_merge(cfg, dict(out_dir=str(out_dir), data=dict(dir=str(data_dir)), train=dict(seed=seed)))
    return apply_overrides(cfg, overrides)


def plan(preset: dict, scale: str, sets: dict[str, str], out: Path, seeds: list[int],
         overrides: list[str], processes: int = 1, settings: list[str] | None = None) -> list[Run]:  # fmt: skip
    """Every run, validated against its dataset now (before hours of training), with its FLOPs;
    seed-major (a cut-short preset has whole seeds), the costliest first within a seed."""
    from whispergpt.config import resolve_config
    from whispergpt.models import WhisperGPT
    from whispergpt.models.flops import whispergpt_flops_per_frame

    if scale not in preset["scales"]:
        raise ValueError(
            f"scale must be one of {sorted(preset['scales'])} (preset {preset['path']}), got {scale!r}"
        )
    settings = settings or preset["default_settings"]
    combos = [(st, m) for st in settings for m in preset["models"]]
    combos += [(ab["setting"], name) for name, ab in preset["ablations"].items() if ab["setting"] in settings]
    flops: dict[str, dict] = {}
    runs = []
    for seed in seeds:
        for set_name, data_dir in sets.items():
            for setting, model in combos:
                run_dir = out / "runs" / set_name / setting / model / f"seed{seed}"
                raw = run_config(preset, scale, setting, model, seed, data_dir, run_dir, overrides)
                cfg = resolve_config(json.loads(json.dumps(raw)))
                key = json.dumps(cfg.model.__dict__, sort_keys=True, default=str)
                if key not in flops:
                    net = WhisperGPT(cfg.model)
                    flops[key] = dict(whispergpt_flops_per_frame(net), params=net.num_parameters())
                t = cfg.train
                record = dict(set=set_name, setting=setting, model=model, seed=seed, data=str(data_dir),
                              mel=cfg.data.mel_source, max_steps=t.max_steps, eval_every=t.eval_every,
                              batch_size=t.batch_size, frames=cfg.data.frames,
                              frames_per_step=t.batch_size * t.grad_accum * processes * cfg.data.frames,
                              **flops[key])  # fmt: skip
                runs.append(Run(set_name, setting, model, seed, run_dir, raw, record))
    cost = {
        r.name: r.record["flops_per_frame"] * r.record["frames_per_step"] * r.record["max_steps"]
        for r in runs
    }
    return sorted(runs, key=lambda r: (seeds.index(r.seed), -cost[r.name]))


# --- running --------------------------------------------------------------------------------------


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _eval_args(run: Run, checkpoint: Path, out: Path) -> list[str]:
    # eval's "decoded" decodes the codebooks the model generates: decoded_coarse for coarse
    mel = "decoded" if run.record["mel"].startswith("decoded") else run.record["mel"]
    return ["eval", "--checkpoint", str(checkpoint), "--data", run.record["data"], "--split", "val",
            "--mel", mel, "--out", str(out)]  # fmt: skip


def _call(launch: list[str] | None, args: list[str], log: Path, threads: int,
          main: Callable[[list[str]], int] | None) -> None:  # fmt: skip
    """``whispergpt <args>``: a child process through ``launch`` (output in ``log``), or in this
    process through ``main`` when ``launch`` is None (one run at a time: no start-up per run)."""
    from whispergpt.experiments.compare import run_logged, run_step

    if launch is None:
        run_step(None, args[0], args[1:], log, main)
    else:
        run_logged([*launch, "-m", "whispergpt", *args], log, _env(threads))


def run_one(
    run: Run, launch: list[str] | None, threads: int, main: Callable[[list[str]], int] | None = None
) -> bool:
    """Train (unless ``final/`` exists) and evaluate (unless ``eval.json`` is newer) one run;
    ``run.json`` keeps the plan and the wall times summed over resumes. Returns whether it worked."""

    run.dir.mkdir(parents=True, exist_ok=True)
    path = run.dir / "run.json"
    rec = {**(json.loads(path.read_text()) if path.is_file() else {}), **run.record}
    final = run.dir / "final" / "model.safetensors"
    worked = False
    if not final.is_file():
        recipe = run.dir / "recipe.yaml"
        write_atomic(recipe, yaml.safe_dump(run.raw, sort_keys=False))
        t0 = time.perf_counter()
        _call(launch, ["train", str(recipe)], run.dir / "train.log", threads, main)
        rec["train_s"] = rec.get("train_s", 0.0) + time.perf_counter() - t0
        write_json_atomic(path, rec)
        worked = True
    report = run.dir / "eval.json"
    if not report.is_file() or report.stat().st_mtime < final.stat().st_mtime:
        t0 = time.perf_counter()
        _call(launch, _eval_args(run, final.parent, report), run.dir / "eval.log", threads, main)
        rec["eval_s"] = time.perf_counter() - t0
        worked = True
    write_json_atomic(path, rec)
    return worked


def execute(runs: list[Run], jobs: int, launch: list[str] | None, threads: int,
            main: Callable[[list[str]], int] | None = None) -> tuple[int, list[str]]:  # fmt: skip
    """All runs, ``jobs`` at a time; a failed run is reported and the others go on.
    Returns (runs that did work, failures as "name: log")."""
    done, failures, n = [0], [], len(runs)

    def one(i: int, run: Run) -> None:
        print(f"[{i + 1}/{n}] {run.name}: start", flush=True)
        t0 = time.perf_counter()
        try:
            if run_one(run, launch, threads, main):
                done[0] += 1
                print(
                    f"[{i + 1}/{n}] {run.name}: done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True
                )
            else:
                print(f"[{i + 1}/{n}] {run.name}: finished already", flush=True)
        except CommandFailed as e:
            failures.append(f"{run.name}: {e.path}")
            print(f"[{i + 1}/{n}] {run.name}: FAILED, see {e.path}", flush=True)

    if jobs == 1:  # in this thread: an in-process run may need the main thread (signals, Ctrl-C)
        for i, run in enumerate(runs):
            one(i, run)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, range(n), runs))
    return done[0], failures


def run_preset(preset_name: str | os.PathLike, out: str | os.PathLike, scale: str | None = None,
               sets: dict[str, str] | None = None, seeds: int | None = None, jobs: int | None = None,
               launcher: str | None = None, processes: int = 1, overrides: list[str] | None = None,
               corpus: str | None = None, minutes: float | None = None, install: bool = True,
               estimate_steps: tuple[int, int] | None = None, settings: list[str] | None = None,
               main: Callable[[list[str]], int] | None = None) -> dict:  # fmt: skip
    """The whole preset (see the module docstring); returns the report's summary (or the estimate).
    One run at a time without a launcher: in this process through ``main`` (``whispergpt.cli.main``)."""
    import shlex

    from whispergpt.experiments.compare_bits import bits_report, fine_runs
    from whispergpt.experiments.compare_report import markdown, plot_curves, read_run, summarize

    preset = load_preset(preset_name)
    scale = scale or preset.get("default_scale") or sorted(preset["scales"])[0]
    if scale not in preset["scales"]:
        raise ValueError(
            f"--scale must be one of {sorted(preset['scales'])} for preset {preset_name}, got {scale!r}"
        )
    jobs = jobs or int(preset["scales"][scale].get("jobs", 1))
    if jobs < 1 or processes < 1:
        raise ValueError(f"--jobs and --processes must be >= 1, got {jobs}, {processes}")
    all_seeds = list(preset["seeds"])
    if seeds is not None and not 1 <= seeds <= len(all_seeds):
        raise ValueError(
            f"--seeds must be in [1, {len(all_seeds)}] (the preset's seeds: {all_seeds}), got {seeds}"
        )
    seed_list = all_seeds[:seeds] if seeds else all_seeds
    settings = settings or list(preset["default_settings"])
    if not settings or set(settings) - set(preset["settings"]):
        raise ValueError(
            f"--settings must name settings of the preset ({sorted(preset['settings'])}), got {settings}"
        )
    settings = [
        st for st in preset["settings"] if st in settings
    ]  # the preset's order: the first is the reference
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // jobs))
    sets = sets or demo_data(preset, out, corpus, minutes, install)
    sets = {k: str(v) for k, v in sets.items() if k in preset["sets"]}
    launch = shlex.split(launcher) if launcher else [sys.executable]
    runs = plan(preset, scale, sets, out, seed_list, overrides or [], processes, settings)
    fine = fine_runs(preset, scale, sets, out, seed_list, overrides or [])
    if estimate_steps:
        return estimate(runs, out, launch, threads, jobs, estimate_steps)
    if jobs == 1 and not launcher:
        launch = None  # one at a time: in this process, as compare's own runs
    print(
        f"{len(runs) + len(fine)} runs, {jobs} at a time, {threads} thread(s) each; output in {out}",
        flush=True,
    )
    t0 = time.perf_counter()
    worked, failures = execute(runs + fine, jobs, launch, threads, main)
    finished = [r for r in runs if (r.dir / "eval.json").is_file() and (r.dir / "run.json").is_file()]
    records = [read_run(r.dir) for r in finished]
    ablations = {name: ab["model"] for name, ab in preset["ablations"].items()}
    summary = summarize(records, list(preset["models"]), settings, ablations)
    summary.update(preset=preset["path"], scale=scale, seeds=seed_list, jobs=jobs, threads=threads,
                   wall_s=time.perf_counter() - t0, runs_done_now=worked, failures=failures,
                   runs=[{k: v for k, v in r.items()} for r in records])  # fmt: skip
    text = markdown(summary)
    bits = bits_report(runs + fine)  # every strategy on bits/s over all K codebooks, coarse + fine paired
    if bits:
        summary["bits_per_second"] = bits["rows"]
        text += "\n" + bits["markdown"]
    write_atomic(out / "compare.md", text)
    write_json_atomic(out / "compare.json", summary)
    if records:
        plot_curves(records, summary, out)
    print(text, flush=True)
    if failures:
        raise CommandFailed(f"{len(failures)} of {len(runs) + len(fine)} runs failed: " + "; ".join(failures), 1,
                            hint="fix the cause and rerun the same command: finished runs are kept")  # fmt: skip
    return summary


def demo_data(preset: dict, out: Path, corpus: str | None, minutes: float | None, install: bool) -> dict:
    """The preset's data when no prepared sets are given: the quickstart's corpus and prepare steps."""
    from whispergpt.experiments.quickstart import Runner, demo_sets

    c = preset.get("corpus") or {}
    folder = Path(corpus) if corpus else out / "corpus"
    return demo_sets(Runner(out), folder, corpus is None, minutes or c.get("minutes", 6), None,
                     str(c.get("codec", "default")), float(c.get("bandwidth", 1.5)), install,
                     float(c.get("val_fraction", 0.15)))  # fmt: skip


# --- the time estimate ----------------------------------------------------------------------------


def _timed(cmd: list[str], log: Path, env: dict) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child command."""
    from whispergpt.experiments.compare import run_logged

    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run_logged(cmd, log, env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, time.perf_counter() - t0


def estimate(runs: list[Run], out: Path, launch: list[str], threads: int, jobs: int,
             steps: tuple[int, int]) -> dict:  # fmt: skip
    """Time ``steps[0]`` and ``steps[1]`` training steps of each distinct (setting, model) on the
    first set (the difference removes start-up and the final validation), and one ``eval``; then
    extrapolate every run to its ``max_steps`` (an upper bound: early stopping ends runs sooner)."""
    from whispergpt.data import PreparedDataset

    short, long = steps
    if not 1 <= short < long:
        raise ValueError(f"--estimate needs 1 <= first < second step count, got {steps}")
    env, per = _env(threads), {}
    first_set = runs[0].set
    for run in runs:
        key = (run.setting, run.model)
        if key in per or run.set != first_set:
            continue
        d = out / "estimate" / run.setting / run.model
        shutil.rmtree(d, ignore_errors=True)
        cpu, wall = [], []
        for n in (short, long):
            raw = apply_overrides(run.raw, [f"out_dir={d / str(n)}", f"train.max_steps={n}", "train.eval_every=0",
                                            "train.early_stop_patience=0", f"train.save_every={n}"])  # fmt: skip
            (d / str(n)).mkdir(parents=True)
            write_atomic(d / str(n) / "recipe.yaml", yaml.safe_dump(raw, sort_keys=False))
            c, w = _timed([*launch, "-m", "whispergpt", "train", str(d / str(n) / "recipe.yaml")],
                          d / str(n) / "train.log", env)  # fmt: skip
            cpu.append(c)
            wall.append(w)
        ev = _timed([*launch, "-m", "whispergpt", *_eval_args(run, d / str(long) / "final", d / "eval.json")],
                    d / "eval.log", env)  # fmt: skip
        step_cpu, step_wall = (cpu[1] - cpu[0]) / (long - short), (wall[1] - wall[0]) / (long - short)
        per[key] = dict(setting=run.setting, model=run.model, params_matmul=run.record["n_matmul"],
                        flops_per_frame=run.record["flops_per_frame"], step_cpu_s=step_cpu, step_wall_s=step_wall,
                        startup_cpu_s=max(0.0, cpu[0] - short * step_cpu), eval_cpu_s=ev[0], eval_wall_s=ev[1])  # fmt: skip
        print(f"{run.setting}/{run.model}: {step_cpu:.3f} CPU-s/step ({step_wall:.3f} s wall), "
              f"eval {ev[0]:.1f} CPU-s; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    parts: dict[tuple[str, str], dict] = {}
    for run in runs:
        p, r = per[(run.setting, run.model)], run.record
        tiles = len(PreparedDataset(r["data"], "val", frames=r["frames"]))
        evals = r["max_steps"] // r["eval_every"] if r["eval_every"] else 1
        val_cpu = (
            evals * math.ceil(tiles / r["batch_size"]) * p["step_cpu_s"] / 3
        )  # a forward ~ 1/3 of a step
        total = p["startup_cpu_s"] + r["max_steps"] * p["step_cpu_s"] + val_cpu + p["eval_cpu_s"]
        part = parts.setdefault(
            (run.setting, run.model), dict(**p, runs=0, max_steps=r["max_steps"], cpu_s=0.0)
        )
        part["runs"] += 1
        part["cpu_s"] += total
    cores = os.cpu_count() or 1
    lanes = max(1, min(jobs, cores // max(1, threads)))
    total_cpu = sum(p["cpu_s"] for p in parts.values())
    result = dict(threads=threads, jobs=jobs, lanes=lanes, cores=cores, steps=list(steps), load_average=os.getloadavg(),
                  parts=list(parts.values()), total_cpu_s=total_cpu, wall_s=total_cpu / lanes)  # fmt: skip
    lines = [
        f"Estimate (upper bound: every run to max_steps), {threads} thread(s) per run, {lanes} run(s) at once; "
        f"measured from {short} vs {long} steps, load average {result['load_average'][0]:.1f} on {cores} cores.",
        "",
        "| setting | model | matmul params | FLOPs/frame | CPU-s/step | wall-s/step | eval CPU-s | runs | "
        "max steps | expected h (one lane) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in parts.values():
        lines.append(
            f"| {p['setting']} | {p['model']} | {p['params_matmul']:,} | {p['flops_per_frame']:.3g} | "
            f"{p['step_cpu_s']:.3f} | {p['step_wall_s']:.3f} | {p['eval_cpu_s']:.1f} | {p['runs']} | "
            f"{p['max_steps']} | {p['cpu_s'] / 3600:.2f} |"
        )
    lines += ["", f"Total: {total_cpu / 3600:.2f} CPU-hours -> **{result['wall_s'] / 3600:.2f} h** on {lanes} lane(s) "
              "(CPU time ~ wall time of a one-thread run on an idle core), plus the corpus and prepare steps."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    write_atomic(out / "estimate.md", text)
    write_json_atomic(out / "estimate.json", result)
    print(text, flush=True)
    return result
