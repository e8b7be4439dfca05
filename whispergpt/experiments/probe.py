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

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import N_MELS, log_mel
from whispergpt.errors import InputError
from whispergpt.experiments.probe_tasks import DEFAULT_TASKS, TASKS, ProbeTask, load_task
from whispergpt.runtime import replacing, resolve_device, write_atomic, write_json_atomic
from whispergpt.semantic.features import MAEInput, check_layer, embed_clips, load_mae, random_mae

REPRESENTATIONS = ("encodecmae", "random-mae", "log-mel", "codec-latent")
CS = (0.01, 0.1, 1.0, 10.0)
DEFAULT_PER_CLASS = {"speech-music": 60, "language": 30, "instrument": 30, "pitch": 20, "toy": 12}


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        raise InputError(
            "probe needs scikit-learn", hint="pip install 'whispergpt[mae-tools]' (scikit-learn)"
        ) from e
    return LogisticRegression, StratifiedKFold, StandardScaler


def fit_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int):
    """A standardised logistic regression fitted on ``x[train]``: ``(scaler, classifier, C, cv_accuracy)``.

    ``C`` is the one of ``CS`` with the best mean accuracy over (up to) 3 stratified folds of the
    train clips (the smallest ``C``, i.e. the strongest regularisation, on a tie); ``cv_accuracy``
    is that mean (None when a class has a single train clip: then ``C`` = 1)."""
    LogisticRegression, StratifiedKFold, StandardScaler = _sklearn()

    def fit(c: float, rows: np.ndarray):
        scaler = StandardScaler().fit(x[rows])
        return scaler, LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x[rows]), y[rows])

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    folds = min(3, int(np.bincount(y[train]).min()))
    best, cv_accuracy = 1.0, None
    # one BLAS thread: these problems are tiny, and threads cost ~15x here on a busy 2-core machine
    with threadpool_limits(1):
        if folds >= 2:  # else a class has a single train clip: no folds to pick C with
            cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x[train], y[train]))
            scores = [np.mean([_accuracy(fit(c, train[a]), x, y, train[b]) for a, b in cv]) for c in CS]
            best, cv_accuracy = CS[int(np.argmax(scores))], float(np.max(scores))
        scaler, clf = fit(best, train)
    return scaler, clf, best, cv_accuracy


def _accuracy(model, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    scaler, clf = model
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return float((clf.predict(scaler.transform(x[rows])) == y[rows]).mean())


def linear_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    """Test accuracy of ``fit_probe`` on ``x[train]``."""
    scaler, clf, _, _ = fit_probe(x, y, train, seed)
    return _accuracy((scaler, clf), x, y, test)


class Embedder:
    """Mean-pooled clip embeddings of each representation (see the module docstring)."""

    def __init__(self, checkpoint, layer: int | None, codec: str | None, device: torch.device):
        self.device = device
        self.model, directory = load_mae(checkpoint, device)
        self.layer = check_layer(self.model, layer)
        self.inputs = MAEInput.from_checkpoint(self.model, directory, device)
        self.checkpoint = directory
        self.n_mels = self.inputs.dim if self.inputs.kind == "mel" else N_MELS
        self.codec_name = codec
        self._codec = None

    def codec(self):
        if self._codec is None:
            if self.codec_name is None and self.inputs.kind == "latent":
                self._codec = self.inputs.codec_model()
            else:
                from whispergpt.codec import open_codec
                from whispergpt.training.record import training_codec

                name, bandwidth = self.codec_name, None
                if name is None:
                    name, bandwidth = training_codec(self.checkpoint) or ("default", None)
                self._codec = open_codec(name, bandwidth=bandwidth, device=self.device)[0]
            self.codec_name = self._codec.name
        return self._codec

    def baseline_key(self, rep: str) -> str | None:
        """What a baseline's embeddings depend on besides the clips (None: not cached, the MAEs)."""
        if rep == "log-mel":
            return f"log-mel-{self.n_mels}"
        if rep == "codec-latent":
            digest = hashlib.sha256()
            for p in self.codec().model.encoder.parameters():  # the weights, wherever they came from
                digest.update(p.detach().cpu().float().numpy().tobytes())
            return f"codec-latent-{digest.hexdigest()[:16]}"
        return None

    @torch.inference_mode()
    def embed(self, rep: str, clips: Sequence[torch.Tensor], seed: int = 0) -> np.ndarray:
        """``(N, D)`` float64 embeddings of ``clips`` under ``rep``."""
        if rep == "log-mel":
            rows = [log_mel(c.to(self.device), n_mels=self.n_mels).mean(-1) for c in clips]  # (M,)
        elif rep == "codec-latent":
            from whispergpt.evaluation.embed import encode_clips  # batches clips of equal length

            rows = [
                z.mean(-1) for z in encode_clips(self.codec(), [c.to(self.device) for c in clips])
            ]  # (D,)
        elif rep in ("encodecmae", "random-mae"):
            model = self.model if rep == "encodecmae" else random_mae(self.model.config, seed).to(self.device)
            rows = embed_clips(model, self.inputs, list(clips), self.layer)  # (D,) each
        else:
            raise ValueError(f"unknown representation {rep!r}, expected one of {REPRESENTATIONS}")
        return torch.stack([r.double().cpu() for r in rows]).numpy()


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
    _sklearn()
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
