"""``whispergpt consistency``: does a continuation stay with its prompt? (AudioLM's measure.)

Input: folders written by ``sample --data`` (held-out prompts, ``inference/heldout.py``): per prompt
``<name>.wav`` (prompt + continuation), ``<name>_continuation.wav`` and ``<name>_reference.wav``
(the real audio that followed), and ``generation.json`` (``prompt_frames``, the prompts).

Per prompt, two clips are compared with the prompt: the generated continuation, with the first
``prompt_frames`` codec frames of ``<name>.wav`` (the prompt as the model heard it: codec-decoded),
and, as the ceiling, the real continuation (the reference), with the prompt cut from the same
original file (``path``, ``start`` in ``generation.json``; the decoded prompt when the reference
was decoded too). Like is compared with like because codec decoding alone moves a clip in the
judge's space (measured: comparing original references with decoded prompts, the language probe
gave none of 32 speech references its prompt's label; like with like, 24 of 32). Metrics:

- ``language_agreement`` (with ``--mae``): AudioLM's speaker/language consistency. A language
  classifier (the ``probe`` protocol: a standardised logistic regression, ``C`` by 3-fold CV, on
  the mean-pooled EnCodecMAE embeddings at ``--layer``) is fitted on every clip of the probe's
  ``language`` task (12 Tux Paint languages); the metric is 1 when the clip's predicted language
  is the prompt's predicted language. ``language_prob``: the classifier's probability, on the
  clip, of the prompt's predicted language (smoother with few prompts).
- ``mae_similarity`` (with ``--mae``): cosine similarity of the prompt's and the clip's
  mean-pooled MAE embeddings (content/speaker similarity in the MAE's space).
- ``chroma_continuity``: cosine similarity of the prompt's and the clip's chroma profiles
  (``metrics.paired.chroma_profile``): does music keep its key and harmony?

Every value is a mean over prompts with a seeded 95 % bootstrap interval. Folders whose prompts
are the same (file and start, in order) as the first folder's also get the paired difference
(folder - first folder) with its own interval: the comparison of two systems on the same prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import HOP_LENGTH, load_audio
from whispergpt.errors import InputError
from whispergpt.evaluation.distribution import mean_summary
from whispergpt.evaluation.paired import chroma_profile

METRICS = {  # name -> (needs the MAE, direction)
    "language_agreement": (True, "higher: the continuation keeps the prompt's language"),
    "language_prob": (True, "higher: P(prompt's language) on the clip"),
    "mae_similarity": (True, "higher: closer to the prompt in the MAE's space"),
    "chroma_continuity": (False, "higher: closer to the prompt's chroma profile"),
}
CLIPS = ("continuation", "reference")
PROMPT_OF = {"continuation": "prompt", "reference": "prompt_reference"}  # like with like (decoded / original)


def read_folder(folder: str | Path) -> dict:
    """The prompts of a held-out folder: ``{name, key, prompt, continuation, reference}`` waves."""
    folder = Path(folder)
    meta_path = folder / "generation.json"
    if not meta_path.is_file():
        raise InputError(f"{folder}: no generation.json (expected a folder written by sample --data)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{meta_path}: unreadable ({e})") from e
    if not isinstance(meta, dict) or "prompts" not in meta or "prompt_frames" not in meta:
        raise InputError(f"{folder}: generation.json has no held-out prompts (written by sample --data?)")
    n_prompt = int(meta["prompt_frames"]) * HOP_LENGTH
    items = []
    for p in meta["prompts"]:
        name = p["name"]
        paths = {k: folder / f"{name}{s}.wav" for k, s in (("full", ""), ("continuation", "_continuation"),
                                                           ("reference", "_reference"))}  # fmt: skip
        missing = [str(q) for q in paths.values() if not q.is_file()]
        if missing:
            raise InputError(f"{folder}: prompt {name}: missing {missing}")
        prompt = load_audio(paths["full"])[:n_prompt]
        items.append(dict(
            name=name, key=(p.get("path"), p.get("start")), prompt=prompt,
            prompt_reference=_original_prompt(p, n_prompt, prompt),
            continuation=load_audio(paths["continuation"]), reference=load_audio(paths["reference"]),
        ))  # fmt: skip
    if not items:
        raise InputError(f"{folder}: generation.json lists no prompts")
    return dict(folder=str(folder), prompt_frames=int(meta["prompt_frames"]), items=items,
                checkpoint=meta.get("checkpoint"), semantic=(meta.get("semantic") or {}).get("checkpoint"))  # fmt: skip


def _original_prompt(p: dict, n_prompt: int, decoded: torch.Tensor) -> torch.Tensor:
    """The prompt cut from the original file, when the reference was cut from it too (else the
    decoded prompt, as the reference is then decoded as well): each clip is compared with a prompt
    of its own kind, since codec decoding alone moves a clip in the judge's space."""
    if p.get("reference_source") != "original audio" or p.get("path") is None:
        return decoded
    try:
        wave = load_audio(p["path"])
    except ValueError:
        return decoded
    start = int(p["start"]) * HOP_LENGTH
    return wave[start : start + n_prompt]


class LanguageJudge:
    """A language classifier on mean-pooled MAE embeddings, fitted on a labelled probe task
    (``clips``, ``labels``, ``classes``; ``experiments.probe.language_judge`` builds the language one)."""

    def __init__(self, checkpoint, layer: int | None, device: torch.device, task, task_name: str,
                 seed: int = 0) -> None:  # fmt: skip
        from whispergpt.evaluation.probe import Embedder, fit_probe

        self.embedder = Embedder(checkpoint, layer, None, device)
        self.task = task_name
        x = self.embedder.embed("encodecmae", task.clips)  # (N, D)
        self.scaler, self.clf, self.c, self.cv_accuracy = fit_probe(x, task.labels, np.arange(len(x)), seed)
        self.classes = task.classes

    def embed(self, waves: Sequence[torch.Tensor]) -> np.ndarray:
        return self.embedder.embed("encodecmae", waves)

    def probs(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(self.scaler.transform(x))  # (N, classes)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def per_prompt(folder: dict, judge: LanguageJudge | None) -> dict[str, dict[str, list[float]]]:
    """``{clip: {metric: [value per prompt]}}`` for the continuation and the reference."""
    items = folder["items"]
    out: dict[str, dict[str, list[float]]] = {c: {} for c in CLIPS}
    for c in CLIPS:
        key = PROMPT_OF[c]
        out[c]["chroma_continuity"] = [
            float(np.dot(chroma_profile(it[key].numpy()), chroma_profile(it[c].numpy()))) for it in items
        ]
    if judge is not None:
        for c in CLIPS:
            ep = judge.embed([it[PROMPT_OF[c]] for it in items])  # (N, D)
            label = judge.probs(ep).argmax(-1)  # the prompt's predicted language
            ec = judge.embed([it[c] for it in items])
            pc = judge.probs(ec)
            out[c]["language_agreement"] = (pc.argmax(-1) == label).astype(float).tolist()
            out[c]["language_prob"] = pc[np.arange(len(items)), label].tolist()
            out[c]["mae_similarity"] = _cos(ep, ec).tolist()
    return out


def run_consistency(
    folders: Sequence[str | Path], judge: LanguageJudge | None = None, n_boot: int = 1000, seed: int = 0
) -> dict:
    """The report: per folder, per clip (continuation / reference), per metric: mean, interval, n.
    Without a ``judge``, the metrics that need the MAE are left out."""
    if not folders:
        raise InputError("consistency needs at least one folder of held-out continuations")
    data = [read_folder(f) for f in folders]
    report = dict(
        mae=str(judge.embedder.checkpoint) if judge else None, layer=judge.embedder.layer if judge else None,
        judge_task=judge.task if judge else None, language_classes=judge.classes if judge else None, language_probe_c=judge.c if judge else None,
        language_probe_cv_accuracy=judge.cv_accuracy if judge else None, bootstrap=n_boot, seed=seed,
        metrics={k: v[1] for k, v in METRICS.items() if judge or not v[0]}, folders=[],
    )  # fmt: skip
    values = [per_prompt(d, judge) for d in data]
    first_keys = [it["key"] for it in data[0]["items"]]
    for i, (d, v) in enumerate(zip(data, values)):
        entry = dict(folder=d["folder"], checkpoint=d["checkpoint"], semantic_lm=d["semantic"],
                     prompts=len(d["items"]), prompt_frames=d["prompt_frames"], clips={}, paired=None)  # fmt: skip
        for c in CLIPS:
            entry["clips"][c] = {m: mean_summary(x, n_boot, seed, j) for j, (m, x) in enumerate(v[c].items())}
        if i > 0 and [it["key"] for it in d["items"]] == first_keys:
            base = values[0]["continuation"]
            entry["paired"] = {
                m: mean_summary(np.subtract(x, base[m]).tolist(), n_boot, seed, 50 + j)
                for j, (m, x) in enumerate(v["continuation"].items())
            }
        report["folders"].append(entry)
    return report


def _cell(b: dict) -> str:
    ci = b.get("ci")
    return f"{b['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown(report: dict) -> str:
    metrics = list(report["metrics"])
    lines = [
        "| folder | clip | prompts | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for f in report["folders"]:
        for c in CLIPS:
            cells = [_cell(f["clips"][c][m]) for m in metrics]
            lines.append(f"| {f['folder']} | {c} | {f['prompts']} | " + " | ".join(cells) + " |")
        if f["paired"]:
            cells = [_cell(f["paired"][m]) for m in metrics]
            lines.append(
                f"| {f['folder']} | minus first folder (paired) | {f['prompts']} | "
                + " | ".join(cells)
                + " |"
            )
    foot = [
        "",
        "Mean over prompts [95 % bootstrap interval]; a continuation is compared with the codec-decoded "
        "prompt, a reference with the prompt cut from the original file (when it was).",
    ]
    if report["mae"]:
        foot.append(
            f"Language judge: EnCodecMAE {report['mae']} layer {report['layer']}, logistic regression "
            f"(C={report['language_probe_c']}, 3-fold CV accuracy {100 * report['language_probe_cv_accuracy']:.1f} %) "
            f"on the probe's {report['judge_task']} task ({len(report['language_classes'])} classes)."
        )
    return "\n".join(lines + foot) + "\n"
