"""The demo corpus builder: audio helpers, the ``Source`` plugin interface and ``build``."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, save_audio
from whispergpt.experiments.demo.system import Requirement, default_cache_dir
from whispergpt.runtime import replacing, write_atomic

FORMAT_VERSION = 1
MODALITIES = ("speech", "music")
# a clip quieter than this (RMS, full scale 1.0) is treated as silence and skipped: -70 dBFS
SILENCE_RMS = 10 ** (-70 / 20)
MAX_CONSECUTIVE_FAILURES = 25
MIN_SEGMENT_SECONDS = 1.0  # a trailing segment shorter than this is dropped (not a whole clip)


# ----------------------------------------------------------------------------------------------
# audio helpers (pure python; tested)


def to_mono_24k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(S,)`` or ``(S, C)`` float audio at any rate -> ``(S',)`` float32 mono at 24 kHz."""
    from whispergpt.audio import resample

    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise ValueError(f"expected (S,) or (S, C) audio, got shape {x.shape}")
    return resample(np.ascontiguousarray(x), int(sample_rate), SAMPLE_RATE)


def is_silent(wave: np.ndarray, threshold: float = SILENCE_RMS) -> bool:
    x = np.asarray(wave, dtype=np.float64)
    return x.size == 0 or float(np.sqrt(np.mean(x * x))) < threshold


def segment(
    wave: np.ndarray,
    seconds: float,
    max_segments: int | None = None,
    min_seconds: float = MIN_SEGMENT_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Cut ``(S,)`` audio into consecutive pieces of ``seconds`` (a whole number of 320-sample
    frames). The trailing piece is kept only if it is at least ``min_seconds`` long, unless it is
    the only piece (a short clip stays whole); silent pieces are dropped."""
    if seconds <= 0:
        raise ValueError(f"segment seconds must be > 0, got {seconds}")
    hop = max(HOP_LENGTH, int(round(seconds * sample_rate / HOP_LENGTH)) * HOP_LENGTH)
    n = len(wave)
    out = []
    for start in range(0, n, hop):
        piece = wave[start : start + hop]
        if start > 0 and len(piece) < min_seconds * sample_rate:
            break
        if len(piece) < HOP_LENGTH or is_silent(piece):
            continue
        out.append(piece)
        if max_segments is not None and len(out) >= max_segments:
            break
    return out


def split_budget(total_seconds: float, sources: Sequence[Source], speech_fraction: float) -> dict[str, float]:
    """Seconds per source: the total is split speech/music by ``speech_fraction``, then evenly
    among the sources of each modality. A modality without sources gets nothing."""
    if not 0.0 <= speech_fraction <= 1.0:
        raise ValueError(f"--speech-fraction must be in [0, 1], got {speech_fraction}")
    share = {"speech": total_seconds * speech_fraction, "music": total_seconds * (1 - speech_fraction)}
    out = {}
    for mod in MODALITIES:
        group = [s for s in sources if s.modality == mod]
        for s in group:
            out[s.name] = share[mod] / len(group)
    return out


# ----------------------------------------------------------------------------------------------
# sources


@dataclass
class Item:
    """One candidate: ``key`` is stable and file-name safe (outputs are ``<source>-<key>-NNN.wav``)."""

    key: str
    origin: str  # original path / score id, recorded in SOURCES.json
    payload: object = None
    text: str | None = None


class Source:
    """A plugin. Subclasses set the class attributes and implement the three methods."""

    name = ""
    modality = ""  # speech | music
    kind = ""  # real | synthetic | rendered | recorded (the sub-folder)
    licence = ""
    description = ""
    max_segments = 3  # per item: several short files from one long recording, not one long file
    trimmable = False  # may the last piece be cut short to fit the budget (music: yes; a sentence: no)

    def requirements(self, cache: Path) -> list[Requirement]:
        return []

    def candidates(self, rng: random.Random, cache: Path) -> Iterator[Item]:
        raise NotImplementedError

    def render(self, item: Item, tmp: Path, cache: Path) -> np.ndarray:
        """The item's audio as ``(S,)`` float32 mono at 24 kHz."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# the builder


@dataclass
class BuildResult:
    files: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per source
    rendered: int = 0  # items rendered in this run (0 on a complete re-run)
    reused: int = 0


def _load_previous(out: Path) -> tuple[dict[tuple[str, str], list[dict]], dict[tuple[str, str], dict]]:
    """Outputs and skips of a previous build, keyed by (source, item key)."""
    p = out / "SOURCES.json"
    if not p.is_file():
        return {}, {}
    try:
        old = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    done: dict[tuple[str, str], list[dict]] = {}
    for f in old.get("files", []):
        done.setdefault((f["source"], f["key"]), []).append(f)
    skipped = {(s["source"], s["key"]): s for s in old.get("skipped", [])}
    return done, skipped


def build(
    out: str | os.PathLike,
    sources: Sequence[Source],
    minutes: float = 6.0,
    speech_fraction: float = 0.5,
    seed: int = 0,
    segment_seconds: float = 20.0,
    cache: Path | None = None,
    log=print,
) -> BuildResult:
    """Build the corpus from ready ``sources`` (requirements already checked) into ``out``."""
    if minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    if segment_seconds < 1:
        raise ValueError(f"--segment-seconds must be >= 1, got {segment_seconds}")
    cache = cache or default_cache_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = split_budget(minutes * 60.0, sources, speech_fraction)
    done, old_skipped = _load_previous(out)
    res = BuildResult()
    meta = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "minutes": minutes,
        "speech_fraction": speech_fraction,
        "segment_seconds": segment_seconds,
        "sample_rate": SAMPLE_RATE,
    }

    def flush() -> None:
        totals = {m: round(sum(f["seconds"] for f in res.files if f["modality"] == m), 2) for m in MODALITIES}
        doc = dict(
            meta,
            totals=totals,
            sources={
                s.name: {
                    "modality": s.modality,
                    "kind": s.kind,
                    "licence": s.licence,
                    "description": s.description,
                }
                for s in sources
            },
            files=res.files,
            skipped=res.skipped,
        )
        write_atomic(out / "SOURCES.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    for src in sources:
        if hasattr(src, "segment_seconds"):
            src.segment_seconds = segment_seconds
        goal = budget[src.name]
        got = 0.0
        rng = random.Random(f"{seed}:{src.name}")
        sub = out / src.modality / src.kind
        sub.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        n_items = 0
        fails = 0  # consecutive failed/silent items: an unlimited source (espeak) must not spin forever
        with tempfile.TemporaryDirectory(prefix=f"wgpt-{src.name}-") as td:
            for item in src.candidates(rng, cache):
                if got >= goal:
                    break
                if fails >= MAX_CONSECUTIVE_FAILURES:
                    log(f"  [{src.name}] giving up after {fails} failed items in a row")
                    break
                k = (src.name, item.key)
                prev = done.get(k)
                # the same item only: another --seed or --espeak-voices gives a key other content
                same = prev and all(
                    f["origin"] == item.origin and f.get("text") == (item.text or None) for f in prev
                )
                if same and all((out / f["path"]).is_file() for f in prev):
                    res.files += prev
                    got += sum(f["seconds"] for f in prev)
                    res.reused += 1
                    n_items += 1
                    continue
                if k in old_skipped and old_skipped[k]["origin"] == item.origin:
                    res.skipped.append(old_skipped[k])
                    continue
                try:
                    wave = src.render(item, Path(td), cache)
                    pieces = segment(wave, segment_seconds, src.max_segments)
                except Exception as e:  # one bad item must not stop the build: record and go on
                    reason = f"{type(e).__name__}: {str(e)[:300]}"
                    res.skipped.append(
                        {"source": src.name, "key": item.key, "origin": item.origin, "reason": reason}
                    )
                    log(f"  [{src.name}] skipped {item.origin}: {reason}")
                    fails += 1
                    flush()
                    continue
                if not pieces:
                    reason = "silent or shorter than one frame"
                    fails += 1
                    res.skipped.append(
                        {"source": src.name, "key": item.key, "origin": item.origin, "reason": reason}
                    )
                    flush()
                    continue
                remaining = goal - got
                entries = []
                for j, piece in enumerate(pieces):
                    if j > 0 and remaining <= 0:
                        break  # do not overshoot the budget by whole extra segments
                    if src.trimmable and MIN_SEGMENT_SECONDS <= remaining < len(piece) / SAMPLE_RATE:
                        piece = piece[: int(remaining * SAMPLE_RATE) // HOP_LENGTH * HOP_LENGTH]
                    rel = Path(src.modality) / src.kind / f"{src.name}-{item.key}-{j:03d}.wav"
                    with replacing(out / rel) as tmp:
                        save_audio(tmp, piece, SAMPLE_RATE)
                    secs = round(len(piece) / SAMPLE_RATE, 3)
                    remaining -= secs
                    e = {
                        "path": str(rel),
                        "source": src.name,
                        "key": item.key,
                        "modality": src.modality,
                        "kind": src.kind,
                        "licence": src.licence,
                        "origin": item.origin,
                        "seconds": secs,
                    }
                    if len(pieces) > 1:
                        e["segment"] = j
                        e["offset_seconds"] = round(j * segment_seconds, 3)
                    if item.text:
                        e["text"] = item.text
                    entries.append(e)
                res.files += entries
                got += sum(e["seconds"] for e in entries)
                res.rendered += 1
                n_items += 1
                fails = 0
                flush()
        res.seconds[src.name] = round(got, 2)
        short = "" if got >= goal else f" (source ran out: {goal:.0f} s asked)"
        log(
            f"  [{src.name}] {n_items} items, {got:.1f} s of {src.modality}/{src.kind} in {time.time() - t0:.1f} s{short}"
        )

    # files of an earlier, larger build that are no longer selected are removed, so that
    # `prepare` on DIR sees exactly what SOURCES.json lists
    keep = {f["path"] for f in res.files}
    for files in done.values():
        for f in files:
            if f["path"] not in keep and (out / f["path"]).is_file():
                (out / f["path"]).unlink()
    flush()
    write_atomic(out / "README.md", readme_text(sources, res))
    return res


def readme_text(sources: Sequence[Source], res: BuildResult) -> str:
    lines = [
        "# whispergpt demo corpus",
        "",
        "Built by `whispergpt data demo`; 24 kHz mono 16-bit WAV. Speech and music are kept apart",
        "(`speech/`, `music/`) so each can be prepared and evaluated alone. `SOURCES.json` lists every",
        "file with its source, licence and origin (and the transcript for speech where known).",
        "",
        "| folder | source | what | seconds | licence |",
        "|---|---|---|---|---|",
    ]
    for s in sources:
        lines.append(
            f"| {s.modality}/{s.kind} | {s.name} | {s.description} | {res.seconds.get(s.name, 0):.0f} | {s.licence} |"
        )
    lines += [
        "",
        "The corpus is for research demos. Redistribution must follow each source's licence;",
        "some music21 corpus works are for non-commercial use only (see music21/corpus/license.txt).",
        "",
    ]
    return "\n".join(lines)
