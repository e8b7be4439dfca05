"""A compare preset's fine-stage runs and its bits-per-second table (issue 14 item 4).

A preset scale with a ``fine:`` block (``configs/compare/presets/strategies.yaml``) also trains
one fine acoustic stage per set and seed (``task: fine``, ``models/fine.py``): the stage that
completes every ``coarse`` run of that set and seed to all K codebooks. It is trained on the true
codes, so one fine stage serves the hybrid and the token-only coarse model alike.

``bits_report`` reads every finished run's ``eval.json``, pools the runs of each (set, seed) into
one report and ranks them on bits per second over all K codebooks (``metrics.bits``: the summed
per-codebook NLLs x 75 / ln 2): ``delay`` and ``depth`` score all K themselves, each ``coarse``
run is paired with its fine stage (``coarse/hybrid + fine``), and partial rows are marked. Mean
and sd are over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from whispergpt.config import apply_overrides, load_recipe
from whispergpt.config_io import deep_merge
from whispergpt.evaluation.bits import bits_rows
from whispergpt.experiments.compare_report import spread

SETTING = MODEL = "fine"  # the fine runs' place in the layout: runs/<set>/fine/fine/seed<k>


def fine_runs(preset: dict, scale: str, sets: dict[str, str], out: Path, seeds: list[int],
              overrides: list[str]) -> list:  # fmt: skip
    """The fine-stage runs of a preset scale (none without a ``fine:`` block), validated now.

    Each config, lowest first: the block's ``recipe`` (default ``fine_quickstart.yaml``), the
    scale's ``common`` block without its ``model`` section (the decoders' sizes), the rest of the
    ``fine`` block, the set and seed, the command line's overrides."""
    from whispergpt.config import resolve_config
    from whispergpt.experiments.plan import Run

    block = preset["scales"][scale].get("fine")
    if not block:
        return []
    spec = dict(block)
    base = load_recipe(spec.pop("recipe", "fine_quickstart.yaml"))
    common = {k: v for k, v in (preset["scales"][scale].get("common") or {}).items() if k != "model"}
    runs = []
    for seed in seeds:
        for set_name, data_dir in sets.items():
            run_dir = out / "runs" / set_name / SETTING / MODEL / f"seed{seed}"
            raw = deep_merge(deep_merge(base, common), spec)
            raw = deep_merge(
                raw, dict(out_dir=str(run_dir), data=dict(dir=str(data_dir)), train=dict(seed=seed))
            )
            raw = apply_overrides(raw, overrides)
            cfg = resolve_config(json.loads(json.dumps(raw)))
            if cfg.task != "fine":
                raise ValueError(f"{preset['path']}: scale {scale!r}: the fine block must train task: fine")
            record = dict(set=set_name, setting=SETTING, model=MODEL, seed=seed, data=str(data_dir),
                          mel=cfg.data.mel_source, max_steps=cfg.train.max_steps)  # fmt: skip
            runs.append(Run(set_name, SETTING, MODEL, seed, run_dir, raw, record))
    return runs


def bits_report(runs: list) -> dict | None:
    """Bits/s rows per (set, seed) from the runs' ``eval.json`` files, then mean ± sd over seeds;
    None when no run has finished. Returns ``{"rows": [...], "markdown": str}``."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        path = Path(r.dir) / "eval.json"
        if not path.is_file():
            continue
        for e in json.loads(path.read_text())["checkpoints"]:
            name = MODEL if r.setting == SETTING else f"{r.setting}/{r.model}"
            groups.setdefault((r.set, r.seed), []).append(dict(e, name=name))
    if not groups:
        return None
    pooled: dict[tuple[str, str, str], dict] = {}  # (set, name, mel) -> rows over seeds
    for (set_name, _seed), entries in sorted(groups.items()):
        for row in bits_rows(dict(checkpoints=entries)):
            key = (set_name, row["name"], row["mel_source"])
            pooled.setdefault(key, dict(row, set=set_name, per_seed=[]))["per_seed"].append(
                row["bits_per_second"]
            )
    rows = []
    for row in pooled.values():
        s = spread(row.pop("per_seed"))
        rows.append(dict(row, bits_per_second=s["mean"], bits_sd=s["sd"], seeds=s["n"]))
    return dict(rows=rows, markdown=markdown(rows))


def markdown(rows: list[dict]) -> str:
    sets = sorted({r["set"] for r in rows}, key=lambda s: (s != "speech", s))
    names: dict[tuple[str, str], dict] = {}
    for r in rows:
        names.setdefault((r["name"], r["mel_source"]), {})[r["set"]] = r

    def rank(item):
        per = item[1]
        first = per.get(sets[0]) or next(iter(per.values()))
        return (not first["complete"], first["bits_per_second"] if first["complete"] else 0.0)

    out = [
        "Bits per second over all K codebooks (whole val split, teacher-forced; the per-codebook NLLs "
        "summed x 75 / ln 2), mean ± sd over seeds. `coarse` scores codebook 0 and its fine stage the "
        "rest: together (`+ fine`) they are complete; a run alone that scores only some codebooks is "
        "`partial`.",
        "",
        "| model | strategy | fusion | mel (eval) | params | "
        + " | ".join(f"{s} bits/s" for s in sets)
        + " |",
        "|---|---|---|---|---:|" + "---:|" * len(sets),
    ]
    for (name, mel), per in sorted(names.items(), key=rank):
        r0 = next(iter(per.values()))
        cells = []
        for s in sets:
            r = per.get(s)
            if r is None:
                cells.append("-")
                continue
            text = (
                f"{r['bits_per_second']:.1f} ± {r['bits_sd']:.1f}"
                if r["seeds"] > 1
                else f"{r['bits_per_second']:.1f}"
            )
            cells.append(text if r["complete"] else f"partial ({text})")
        params = r0.get("params")
        out.append(
            f"| {name} | {r0['strategy']} | {r0['fusion']} | {mel} | {'-' if params is None else f'{params:,}'} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(out) + "\n"
