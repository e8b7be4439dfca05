"""``whispergpt score``: judge generated audio offline (distribution, paired and token metrics).

Usage::

    whispergpt score GENERATED_DIR [--reference DIR] --out DIR [--codec NAME_OR_PATH]
                     [--checkpoint CKPT] [--judge CKPT] [--bootstrap 1000] [--seed 0] [--device cpu]

Writes ``OUT/score.json`` (everything, per pair included), ``OUT/score.md`` (the table, with a
"how to read this" line) and ``OUT/score.png`` (log-mel distance per second since the prompt end,
and code entropy per codebook). Pairing rule and prompt boundaries: ``whispergpt.evaluation.clips``;
the metrics: docs/EVAL.md ("Scoring generated audio"). Exit status 2 on bad input (no readable
audio, a folder that does not exist, a codec or checkpoint that does not load).
"""

from __future__ import annotations

import json
from pathlib import Path

from whispergpt.evaluation.score import PAIRED_SCALARS, round_floats
from whispergpt.evaluation.tokens import NGRAM

HOW_TO_READ = (
    "How to read this: FD and MMD compare the generated set with the reference set in the codec's "
    "latent space (lower = closer; MMD near 0 = indistinguishable at this N); paired metrics compare "
    "each continuation with the real audio after the same prompt; two models differ only where "
    "their 95 % intervals do not overlap."
)


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _ci(block: dict | None) -> str:
    if not block or not block.get("ci"):
        return "n/a"
    lo, hi = block["ci"]
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _row(name: str, block: dict | None, note: str = "") -> str:
    block = block or {}
    n = block.get("n", block.get("n_generated", ""))
    why = block.get("reason") or block.get("note") or ""
    note = "; ".join(x for x in (note, why) if x)
    return f"| {name} | {_fmt(block.get('value'))} | {_ci(block)} | {n} | {note} |"


def markdown(report: dict) -> str:
    c = report["counts"]
    lines = [
        f"# score: {report['generated_dir']}",
        "",
        f"{c['generated']} generated clips, {c['reference']} reference clips, {c['pairs']} pairs; "
        f"codec {report['codec']['name']} ({report['codec']['bandwidth']} kbps); "
        f"{report['bootstrap']} bootstrap resamples, seed {report['seed']}.",
        "",
        HOW_TO_READ,
        "",
        "| metric | value | 95 % CI | n | note |",
        "|---|---|---|---|---|",
    ]
    d = report["distribution"]
    lines.append(_row("Fréchet codec distance (FD)", d["fd"], "lower is closer"))
    lines.append(_row("MMD² (unbiased, cubic kernel)", d["mmd"], "lower is closer; ~0 = same"))
    lines.append("| *per-codebook values, per-pair values and the drift curve: score.json* | | | | |")
    for name, (direction, unit) in PAIRED_SCALARS.items():
        lines.append(_row(f"paired: {name} ({unit})", report["paired"][name], direction))
    t = report["tokens"]
    for side in ("generated", "reference"):
        st = t.get(side)
        if not st:
            continue
        k = len(st["entropy_bits"])
        lines.append(_row(f"{side}: code entropy (bits), mean of {k} codebooks", st["entropy_bits_mean"]))
        lines.append(_row(f"{side}: {NGRAM}-gram repetition, mean of {k} codebooks", st["repetition_mean"]))
        lines.append(_row(f"{side}: silent-frame share", st["silent_share"]))
    for name, block in report["nll"].items():
        if block.get("reason"):
            lines.append(_row(f"NLL under --{name}", dict(value=None, reason=block["reason"])))
            continue
        for side in ("generated", "reference"):
            lines.append(_row(f"NLL under --{name}, {side} (nats/token)", block[side]))
    if report["skipped"]:
        lines += ["", "Skipped files:"] + [f"- {s['file']}: {s['reason']}" for s in report["skipped"]]
    if report["resampled"]:
        lines += ["", "Resampled to 24 kHz:"] + [
            f"- {r['file']} ({r['sample_rate']} Hz)" for r in report["resampled"]
        ]
    return "\n".join(lines) + "\n"


def comparison(reports: dict[str, dict], title: str) -> str:
    """Markdown: the headline metrics of several ``score`` reports side by side (same prompts).

    A row is marked ``*`` where the first two columns' 95 % intervals do not overlap.
    """
    names = list(reports)

    def blocks(r: dict) -> dict[str, dict | None]:
        d, t = r["distribution"], r["tokens"].get("generated") or {}
        out = {"FD (codec latent)": d["fd"], "MMD² (codec latent)": d["mmd"]}
        out.update({f"paired {k}": r["paired"][k] for k in PAIRED_SCALARS})
        out["code entropy (bits)"] = t.get("entropy_bits_mean")
        out[f"{NGRAM}-gram repetition"] = t.get("repetition_mean")
        judge = r["nll"].get("judge") or {}
        out["NLL under the judge (nats/token)"] = judge.get("generated")
        return out

    rows = {name: blocks(reports[name]) for name in names}
    lines = [
        f"### {title}",
        "",
        "| metric | " + " | ".join(names) + " | differs |",
        "|---" * (len(names) + 2) + "|",
    ]
    for metric in rows[names[0]]:
        cells = [rows[n].get(metric) or {} for n in names]
        a, b = (cells + [{}])[:2]
        differs = bool(a.get("ci") and b.get("ci") and (a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0]))
        shown = [f"{_fmt(c.get('value'))} {_ci(c) if c.get('ci') else ''}".strip() for c in cells]
        lines.append(f"| {metric} | " + " | ".join(shown) + f" | {'*' if differs else ''} |")
    return "\n".join(lines + ["", HOW_TO_READ]) + "\n"


def plot(report: dict, path: Path) -> None:
    """Two panels: log-mel distance per second since the prompt end; code entropy per codebook."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    curve = report["paired"]["mel_distance_curve"]
    if curve["value"]:
        xs = curve["seconds"]
        ax1.plot(xs, curve["value"], marker="o", label="mean over pairs")
        band = [(x, *ci) for x, ci in zip(xs, curve["ci"]) if ci]
        if band:
            bx, lo, hi = zip(*band)
            ax1.fill_between(bx, lo, hi, alpha=0.25, label="95 % bootstrap CI")
        ax1.legend(fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("second since the prompt end")
    ax1.set_ylabel("mean |log-mel difference|")
    ax1.set_title("drift from the real continuation")
    for side in ("generated", "reference"):
        st = report["tokens"].get(side)
        if st:
            ax2.plot(
                range(len(st["entropy_bits"])),
                [b["value"] for b in st["entropy_bits"]],
                marker="o",
                label=side,
            )
    ax2.set_xlabel("codebook")
    ax2.set_ylabel("code entropy per clip (bits)")
    ax2.set_title("token diversity")
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: str | Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "score.json", out / "score.md", out / "score.png"
    report = round_floats(report)
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
