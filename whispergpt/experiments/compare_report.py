"""The report of ``whispergpt compare --preset``: seeds summarised, gaps against the seed spread,
NLL at equal training FLOPs, codebook-0 NLL, and the val-NLL curves (no training here).

Every run folder holds ``run.json`` (what the preset planned: set, setting, model, seed, FLOPs
per frame, frames per step, wall times), ``config.yaml`` (the resolved config, from the trainer),
``metrics.jsonl`` (the trainer's val NLL every ``eval_every`` steps, and the early-stop record)
and ``eval.json`` (``whispergpt eval`` of ``final/`` on the whole val split).

Rules (docs/EVAL.md "The paper preset"):

- **mean ± sd**: the mean over seeds and the sample standard deviation (n - 1).
- **A gap exceeds the seed spread** when ``|mean_a - mean_b| > sd_a + sd_b``: the ±1 sd bars do
  not overlap. Fewer than 2 seeds on either side: never.
- **Equal training FLOPs**: a run at step ``s`` has spent ``s x frames_per_step x FLOPs per
  frame``. The budget of a (set, setting) is the smallest total any of its runs spent, so every
  curve reaches it; each run is read at the best trainer val NLL it reached within the budget.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import yaml

from whispergpt.evaluation.teacher_forced import read_val_curve

GAP_RULE = "|Δ| > sd_a + sd_b (the ±1 sd bars do not overlap)"


# --- statistics -----------------------------------------------------------------------------------


def spread(values: Iterable[float]) -> dict:
    """``{n, mean, sd, min, max}`` of the seeds' values (sd: sample, n - 1; 0.0 for one value)."""
    v = [float(x) for x in values]
    if not v:
        return dict(n=0, mean=None, sd=None, min=None, max=None)
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return dict(n=len(v), mean=mean, sd=sd, min=min(v), max=max(v))


def gap(a: dict, b: dict) -> dict:
    """``a - b`` of two :func:`spread` results and whether it exceeds the seed spread (GAP_RULE)."""
    if not a["n"] or not b["n"]:
        return dict(delta=None, spread=None, beyond=False)
    delta, both = a["mean"] - b["mean"], a["sd"] + b["sd"]
    return dict(delta=delta, spread=both, beyond=bool(a["n"] >= 2 and b["n"] >= 2 and abs(delta) > both))


def best_within(curve: list[tuple[float, float]], budget: float) -> float | None:
    """The lowest NLL of ``(flops, nll)`` points at ``flops <= budget`` (None before the first)."""
    seen = [nll for flops, nll in curve if flops <= budget * (1 + 1e-9)]
    return min(seen) if seen else None


# --- reading runs ---------------------------------------------------------------------------------


def read_run(run_dir: str | os.PathLike) -> dict:
    """One finished run: its plan (run.json), resolved config, val curve and whole-split eval."""
    d = Path(run_dir)
    rec = json.loads((d / "run.json").read_text())
    rec["config"] = yaml.safe_load((d / "config.yaml").read_text())
    rec["run_dir"] = str(d)
    metrics = d / "metrics.jsonl"
    curve = read_val_curve(metrics if metrics.is_file() else None)
    rec["curve"] = [[s, v] for s, v in curve]
    per_step = rec["frames_per_step"] * rec["flops_per_frame"]
    rec["curve_flops"] = [[s * per_step, v] for s, v in curve]
    rec["stopped_early"], rec["steps"] = False, max((s for s, _ in curve), default=0)
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        rec["steps"] = max(rec["steps"], int(r.get("step", 0)))
        rec["stopped_early"] = rec["stopped_early"] or bool(r.get("early_stop"))
    rec["train_flops"] = rec["steps"] * per_step
    rec["best_val"] = min((v for _, v in curve), default=None)
    report = json.loads((d / "eval.json").read_text())
    (entry,) = report["checkpoints"]
    (ev,) = entry["evaluations"]
    m = ev["metrics"]
    rec.update(params=entry["config"]["num_parameters"], mel_source=ev["mel_source"], nll=m["nll"])
    rec["nll_per_codebook"] = [p["nll"] for p in m["per_codebook"]]
    rec["eval_tokens"] = m["tokens"]
    return rec


# --- the summary ----------------------------------------------------------------------------------


def summarize(records: list[dict], models: list[str], settings: list[str],
              ablations: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Groups by (set, setting, model), gaps of the first model against the others in each
    setting, equal-FLOPs readings and codebook-0 comparisons. ``models``: the preset's models
    (the first is the hybrid); ``settings``: in order (the first is the paper's); ``ablations``:
    ablation name -> the model it varies (in its own setting)."""
    ablations = ablations or {}
    by: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["set"], r["setting"], r["model"]), []).append(r)
    sets = sorted({k[0] for k in by}, key=lambda s: (s != "speech", s))
    names = models + sorted({k[2] for k in by} - set(models))
    budgets = {}
    for s in sets:
        for st in settings:
            spent = [r["train_flops"] for (s2, st2, _), rs in by.items() if (s2, st2) == (s, st) for r in rs]
            if spent:
                budgets[(s, st)] = min(spent)
    groups = []
    for (s, st, m), rs in by.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        eq = [best_within(r["curve_flops"], budgets[(s, st)]) for r in rs]
        groups.append(
            dict(
                set=s,
                setting=st,
                model=m,
                seeds=[r["seed"] for r in rs],
                params=rs[0]["params"],
                flops_per_frame=rs[0]["flops_per_frame"],
                mel_source=rs[0]["mel_source"],
                nll=spread(r["nll"] for r in rs),
                nll_cb0=spread(r["nll_per_codebook"][0] for r in rs),
                best_val=spread(r["best_val"] for r in rs if r["best_val"] is not None),
                steps=spread(r["steps"] for r in rs),
                stopped_early=sum(r["stopped_early"] for r in rs),
                equal_flops=spread(x for x in eq if x is not None),
                budget=budgets[(s, st)],
                train_s=sum(r.get("train_s", 0.0) for r in rs),
            )  # fmt: skip
        )
    order = {(st, m): i for i, (st, m) in enumerate((st, m) for st in settings for m in names)}
    groups.sort(key=lambda g: (sets.index(g["set"]), order.get((g["setting"], g["model"]), 1e9)))
    get = {(g["set"], g["setting"], g["model"]): g for g in groups}
    gaps = []
    for (s, st, m), g in get.items():
        if m in models[1:] and (s, st, models[0]) in get:
            h = get[(s, st, models[0])]
            gaps.append(dict(set=s, setting=st, a=models[0], b=m, nll=gap(h["nll"], g["nll"]),
                             equal_flops=gap(h["equal_flops"], g["equal_flops"])))  # fmt: skip
    cb0 = []  # each model against itself in the first setting, and each ablation against its base
    for (s, st, m), g in get.items():
        if st != settings[0] and (s, settings[0], m) in get:
            base = get[(s, settings[0], m)]
            cb0.append(
                dict(set=s, a=f"{st}/{m}", b=f"{settings[0]}/{m}", nll=gap(g["nll_cb0"], base["nll_cb0"]))
            )
        if m in ablations and (s, st, ablations[m]) in get:
            base = get[(s, st, ablations[m])]
            cb0.append(
                dict(set=s, a=f"{st}/{m}", b=f"{st}/{ablations[m]}", nll=gap(g["nll_cb0"], base["nll_cb0"]))
            )
    return dict(sets=sets, settings=settings, models=names, base_models=models, groups=groups, gaps=gaps, codebook0=cb0,
                budgets={f"{s}/{st}": b for (s, st), b in budgets.items()}, gap_rule=GAP_RULE)  # fmt: skip


# --- markdown -------------------------------------------------------------------------------------


def _ms(x: dict, digits: int = 3) -> str:
    if not x["n"]:
        return "-"
    return f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}" + ("" if x["n"] > 1 else " (1 seed)")


def _gap(g: dict) -> str:
    if g["delta"] is None:
        return "-"
    verdict = "**beyond spread**" if g["beyond"] else "within spread"
    return f"{g['delta']:+.3f} (spread {g['spread']:.3f}): {verdict}"


def markdown(summary: dict) -> str:
    sets, groups = summary["sets"], summary["groups"]
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for g in groups:
        rows.setdefault((g["setting"], g["model"]), {})[g["set"]] = g
    out = [
        "Val NLL in nats per token on each set's whole val split (`whispergpt eval`, teacher-forced; "
        "`coarse`: codebook 0; `delay`, `depth`: all codebooks), mean ± sd over seeds. FLOPs: training FLOPs "
        "per frame, 6 N + 6 L W C per stack (N matmul parameters, C context).",
        "",
        "| setting | model | mel | params | FLOPs/frame | "
        + " | ".join(f"{s} NLL | {s} steps (early stops)" for s in sets)
        + " |",
        "|---|---|---|---:|---:|" + "---:|---:|" * len(sets),
    ]
    for (st, m), per in rows.items():
        g0 = next(iter(per.values()))
        cells = []
        for s in sets:
            g = per.get(s)
            cells += (
                [_ms(g["nll"]), f"{g['steps']['mean']:.0f} ({g['stopped_early']}/{g['nll']['n']})"]
                if g
                else ["-", "-"]
            )
        out.append(
            f"| {st} | {m} | {g0['mel_source']} | {g0['params']:,} | {g0['flops_per_frame']:.3g} | "
            + " | ".join(cells)
            + " |"
        )
    out += ["", f"Gaps (first model minus the other; negative: the first is better). Rule: {GAP_RULE}.", ""]
    out += ["| set | setting | gap | whole-split NLL | at equal training FLOPs |", "|---|---|---|---|---|"]
    for x in summary["gaps"]:
        out.append(
            f"| {x['set']} | {x['setting']} | {x['a']} − {x['b']} | {_gap(x['nll'])} | {_gap(x['equal_flops'])} |"
        )
    out += [
        "",
        "At equal training FLOPs: each run's best trainer val NLL (every val tile, the run's mel) within "
        "the budget, the smallest total any run of that set and setting spent.",
        "",
        "| set | setting | budget (FLOPs) | " + " | ".join(summary["models"]) + " |",
        "|---|---|---:|" + "---:|" * len(summary["models"]),
    ]
    for s in sets:
        for st in summary["settings"]:
            if f"{s}/{st}" not in summary["budgets"]:
                continue
            per = {g["model"]: g for g in groups if (g["set"], g["setting"]) == (s, st)}
            cells = [_ms(per[m]["equal_flops"]) if m in per else "-" for m in summary["models"]]
            out.append(f"| {s} | {st} | {summary['budgets'][f'{s}/{st}']:.3g} | " + " | ".join(cells) + " |")
    out += ["", "Codebook 0 alone (whole val split):", ""]
    out += ["| setting | model | " + " | ".join(f"{s} codebook-0 NLL" for s in sets) + " |"]
    out += ["|---|---|" + "---:|" * len(sets)]
    for (st, m), per in rows.items():
        out.append(
            f"| {st} | {m} | " + " | ".join(_ms(per[s]["nll_cb0"]) if s in per else "-" for s in sets) + " |"
        )
    if summary["codebook0"]:
        out += ["", "| set | codebook-0 gap | Δ (spread): verdict |", "|---|---|---|"]
        for x in summary["codebook0"]:
            out.append(f"| {x['set']} | {x['a']} − {x['b']} | {_gap(x['nll'])} |")
    return "\n".join(out) + "\n"


# --- curves ---------------------------------------------------------------------------------------


def plot_curves(records: list[dict], summary: dict, out_dir: str | os.PathLike) -> list[Path]:
    """``curves-<set>.png``: val NLL against steps (top) and training FLOPs (bottom, log), one
    column per setting, one colour per model, one line per seed; the equal-FLOPs budget dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whispergpt.runtime import replacing

    colours = dict(zip(summary["models"], plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    paths = []
    for s in summary["sets"]:
        settings = [st for st in summary["settings"] if f"{s}/{st}" in summary["budgets"]]
        fig, axes = plt.subplots(2, len(settings), figsize=(5 * len(settings), 7), squeeze=False, dpi=100)
        for j, st in enumerate(settings):
            labelled = set()
            for r in sorted(records, key=lambda r: (r["model"], r["seed"])):
                if (r["set"], r["setting"]) != (s, st) or not r["curve"]:
                    continue
                label = None if r["model"] in labelled else r["model"]
                labelled.add(r["model"])
                style = dict(color=colours.get(r["model"]), linewidth=1, alpha=0.8, label=label)
                style["linestyle"] = "-" if r["model"] in summary["base_models"] else "--"  # ablations dashed
                axes[0][j].plot(*zip(*r["curve"]), **style)
                axes[1][j].plot(*zip(*r["curve_flops"]), **style)
            axes[1][j].axvline(summary["budgets"][f"{s}/{st}"], color="grey", linestyle=":", linewidth=1)
            axes[1][j].set_xscale("log")
            axes[0][j].set_title(f"{s}: {st}", fontsize=10)
            axes[0][j].set_xlabel("step")
            axes[1][j].set_xlabel("training FLOPs (dotted: the equal-FLOPs budget)")
            for ax in axes[:, j]:
                ax.set_ylabel("val NLL (nats/token)")
                ax.grid(alpha=0.3)
            axes[0][j].legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"curves-{s}.png"
        with replacing(path) as tmp:
            fig.savefig(str(tmp), format="png")
        plt.close(fig)
        paths.append(path)
    return paths
