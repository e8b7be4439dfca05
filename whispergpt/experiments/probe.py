"""``whispergpt probe CHECKPOINT``: linear probes on frozen, mean-pooled embeddings, EnCodecMAE vs baselines.

For every task (``probe_tasks``) and every seed: a stratified split of the task's clips (seeded per
task and seed, 30% test), each representation's clip embeddings, a standardiser fitted on the train
clips, and a multinomial logistic regression (scikit-learn, L-BFGS; the inverse regularisation
``C`` picked from ``CS`` by 3-fold cross-validation on the train clips only). The score is test
accuracy; the table gives mean ± sample std over the seeds, and the chance level (the majority
class's share of the test clips).

Representations (all mean-pooled over the clip's 75 Hz frames):

- ``encodecmae``: the checkpoint's encoder at ``--layer`` (default the last);
- ``random-mae``: an EnCodecMAE of the same config, randomly initialised with the seed;
- ``log-mel``: the causal log-mel the MAE reads (its ``n_mels``; 80 for a latent MAE);
- ``codec-latent``: ``Codec.latent`` of ``--codec`` (default: the MAE's training codec, else the
  offline default codec).

The baselines' embeddings are kept next to the task's clips (``emb-<key>.npy``, the key covering
``n_mels`` or a hash of the codec encoder's weights), so a second probe run only embeds with the MAEs.

Outputs in ``--out``: ``probe.json`` (settings, per-seed accuracies, tasks not run and why),
``probe.md`` (the table) and ``probe.png`` (bars with the spread).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whispergpt.errors import InputError
from whispergpt.evaluation.consistency import LanguageJudge
from whispergpt.evaluation.probe import REPRESENTATIONS, Embedder, linear_probe, require_sklearn
from whispergpt.experiments.probe_tasks import DEFAULT_TASKS, TASKS, ProbeTask, load_task
from whispergpt.runtime import replacing, resolve_device, write_atomic, write_json_atomic

DEFAULT_PER_CLASS = {"speech-music": 60, "language": 30, "instrument": 30, "pitch": 20, "toy": 12}


def probe_task(
    task: ProbeTask,
    embedder: Embedder,
    seeds: Sequence[int],
    reps: Sequence[str] = REPRESENTATIONS,
    log=print,
) -> dict:
    """``{rep: {mean, std, accuracy: [per seed]}}`` plus the split sizes and chance level."""
    y = task.labels
    splits = {s: task.split(s) for s in seeds}
    fixed = {}
    for rep in reps:
        if rep == "random-mae":
            continue
        t0 = time.perf_counter()
        key = embedder.baseline_key(rep)
        cached = None if key is None or task.folder is None else task.folder / f"emb-{key}.npy"
        if cached is not None and cached.is_file():
            fixed[rep] = np.load(cached)
            continue
        fixed[rep] = embedder.embed(rep, task.clips)
        if cached is not None:
            with replacing(cached) as tmp:
                np.save(tmp, fixed[rep])
        log(
            f"probe: {task.name}: {rep} embeddings of {len(task.clips)} clips in {time.perf_counter() - t0:.1f} s"
        )
    results = {}
    for rep in reps:
        accs = []
        for s in seeds:
            x = fixed[rep] if rep != "random-mae" else embedder.embed(rep, task.clips, seed=s)
            accs.append(linear_probe(x, y, *splits[s], seed=s))
        results[rep] = dict(mean=float(np.mean(accs)), std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                            accuracy=accs)  # fmt: skip
    train, test = splits[seeds[0]]
    chance = [
        float(np.bincount(y[te], minlength=len(task.classes)).max() / len(te)) for _, te in splits.values()
    ]
    return dict(
        classes=task.classes, clips=len(task.clips), n_train=len(train), n_test=len(test),
        chance=float(np.mean(chance)), info=task.info, results=results,
    )  # fmt: skip


def run_probe(
    checkpoint: str | Path,
    tasks: Sequence[str | ProbeTask] = DEFAULT_TASKS,
    layer: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    per_class: int | None = None,
    out: str | Path | None = None,
    cache: str | Path | None = None,
    codec: str | None = None,
    device: str | torch.device = "auto",
    build_seed: int = 0,
    rebuild: bool = False,
    representations: Sequence[str] = REPRESENTATIONS,
    log=print,
) -> dict:
    """Probe every task (names, or ``ProbeTask`` objects built elsewhere); returns the report."""
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {list(seeds)}")
    unknown = [r for r in representations if r not in REPRESENTATIONS]
    if unknown or not representations:
        raise InputError(f"unknown representations {unknown}: expected some of {list(REPRESENTATIONS)}")
    for t in tasks:
        if isinstance(t, str) and t not in TASKS:
            raise InputError(f"unknown probe task {t!r}: expected one of {sorted(TASKS)}")
    require_sklearn()
    embedder = Embedder(checkpoint, layer, codec, resolve_device(device))
    report = dict(
        checkpoint=str(embedder.checkpoint), layer=embedder.layer, num_layers=int(embedder.model.num_layers),
        mae_input=embedder.inputs.kind, seeds=list(seeds), representations=list(representations),
        tasks={}, not_run={},
    )  # fmt: skip
    for t in tasks:
        if isinstance(t, str):
            try:
                t0 = time.perf_counter()
                t = load_task(t, per_class or DEFAULT_PER_CLASS[t], build_seed, cache, rebuild)
                log(
                    f"probe: task {t.name}: {len(t.clips)} clips, {len(t.classes)} classes ({time.perf_counter() - t0:.1f} s)"
                )
            except InputError as e:  # a missing tool: the other tasks still run
                report["not_run"][t] = e.message()
                log(f"probe: task {t} not run: {e.message()}")
                continue
        report["tasks"][t.name] = probe_task(t, embedder, seeds, representations, log)
    report["codec"] = embedder.codec_name
    if not report["tasks"]:
        raise InputError(f"no probe task could run: {report['not_run']}")
    if out is not None:
        write_outputs(report, out)
    return report


def markdown_table(report: dict) -> str:
    """Tasks as columns, representations as rows, ``mean ± std`` test accuracy in %."""
    names = list(report["tasks"])
    lines = [
        "| representation | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for rep in report["representations"]:
        cells = []
        for n in names:
            r = report["tasks"][n]["results"][rep]
            cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}")
        lines.append(f"| {rep} | " + " | ".join(cells) + " |")
    lines.append(
        "| chance | " + " | ".join(f"{100 * report['tasks'][n]['chance']:.1f}" for n in names) + " |"
    )
    sizes = ", ".join(
        f"{n} {t['n_train']}/{t['n_test']} clips, {len(t['classes'])} classes"
        for n, t in report["tasks"].items()
    )
    foot = [
        "",
        f"Test accuracy (%), mean ± std over seeds {report['seeds']}; layer {report['layer']} of "
        f"{report['num_layers']} ({report['mae_input']} input); train/test: {sizes}.",
    ]
    foot += [f"Not run: {n}: {why}" for n, why in report["not_run"].items()]
    return "\n".join(lines + foot) + "\n"


def save_plot(report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, reps = list(report["tasks"]), report["representations"]
    width = 0.8 / len(reps)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(names) + 2), 3.6), dpi=100)
    for i, rep in enumerate(reps):
        res = [report["tasks"][n]["results"][rep] for n in names]
        xs = np.arange(len(names)) + (i - (len(reps) - 1) / 2) * width
        ax.bar(
            xs,
            [100 * r["mean"] for r in res],
            width,
            yerr=[100 * r["std"] for r in res],
            capsize=2,
            label=rep,
        )
    for j, n in enumerate(names):
        ax.hlines(
            100 * report["tasks"][n]["chance"], j - 0.4, j + 0.4, colors="k", linestyles=":", linewidth=1
        )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"linear probes, mean ± std over {len(report['seeds'])} seeds (dotted: chance)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(str(tmp))
    plt.close(fig)


def write_outputs(report: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "probe.json", out / "probe.md", out / "probe.png"]
    write_json_atomic(paths[0], report)
    write_atomic(paths[1], markdown_table(report))
    save_plot(report, paths[2])
    return paths


def language_judge(mae, layer: int | None, device: str = "cpu", cache=None, seed: int = 0,
                   task: str = "language") -> LanguageJudge:  # fmt: skip
    """``consistency``'s judge: a probe of the MAE at ``layer`` fitted on every clip of the probe task
    ``task`` (the language task by default)."""
    data = load_task(task, DEFAULT_PER_CLASS[task], 0, cache)
    return LanguageJudge(mae, layer, resolve_device(device), data, task, seed)
