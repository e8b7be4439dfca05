"""Which files are scored, what they pair with, and where each continuation starts.

Files: every audio file (``audio.AUDIO_EXTENSIONS``) under ``GENERATED_DIR``, recursively, in sorted
order. A clip's *key* is its path relative to its folder root, without extension (``sub/X``).

Pairing rule (a generated clip with the real audio that followed the same prompt):

1. ``X_continuation.wav`` pairs with ``X_reference.wav`` in the same folder (what
   ``whispergpt sample --data`` writes). Both start at the prompt end.
2. Otherwise a generated ``X.wav`` pairs with ``X.wav`` at the same relative path in
   ``--reference DIR`` (same stem, any audio extension). The two files are aligned sample for
   sample, so the reference's continuation starts at the same prompt boundary.

Every reference file found (paired or not: all of ``--reference DIR``, all ``*_reference`` files)
joins the reference *set* of the distribution metrics; unpaired ones are used whole.

Prompt boundary (the first continuation frame of a generated file): ``prompt_frames`` from a
``generation.json`` in the file's folder (an int for every file, or ``{stem: int}``); else, when
``X_continuation.wav`` sits next to ``X.wav`` (what ``whispergpt sample`` writes: the full clip and
its continuation), the full clip is scored from ``frames(X) - frames(X_continuation)`` on, with the
prompt as model context; else 0 (the whole file is continuation). A ``*_continuation`` file alone
starts at 0. Files at another sample rate are resampled to 24 kHz (``load_audio``) and noted;
unreadable files are listed and skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from whispergpt.audio import AUDIO_EXTENSIONS, HOP_LENGTH, SAMPLE_RATE, AudioLoadError, load_audio

CONT, REF = "_continuation", "_reference"


@dataclass
class Clip:
    """One file to score: its audio ``wave (S,)`` at 24 kHz, and the continuation's first frame."""

    key: str
    path: Path
    start: int = 0
    wave: torch.Tensor | None = None
    reference: Clip | None = None  # the paired reference, for generated clips


@dataclass
class ClipSets:
    generated: list[Clip]
    references: list[Clip]  # all references (paired ones are also linked from their generated clip)
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    resampled: list[dict] = field(default_factory=list)  # {"file", "sample_rate"}


def list_audio(folder: str | os.PathLike, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted), none inside ``exclude`` folders."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    ex = [e.resolve() for e in exclude]
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
            rp = p.resolve()
            if not any(rp.is_relative_to(e) for e in ex):
                out.append(p)
    return out


def _key(path: Path, root: Path, suffix: str = "") -> str:
    rel = path.relative_to(root).with_suffix("").as_posix()
    return rel[: len(rel) - len(suffix)] if suffix else rel


def _frames_on_disk(path: Path) -> int | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return int(info.frames * SAMPLE_RATE / info.samplerate) // HOP_LENGTH


def prompt_frames(path: Path, cache: dict[Path, dict | None]) -> int | None:
    """``prompt_frames`` for ``path`` from the ``generation.json`` beside it (None if absent)."""
    folder = path.parent
    if folder not in cache:
        try:
            cache[folder] = json.loads((folder / "generation.json").read_text())
        except (OSError, ValueError):
            cache[folder] = None
    rec = cache[folder]
    if not isinstance(rec, dict) or "prompt_frames" not in rec:
        return None
    pf = rec["prompt_frames"]
    if isinstance(pf, dict):
        pf = pf.get(path.stem)
    return int(pf) if isinstance(pf, (int, float)) and pf >= 0 else None


def discover(generated_dir: str | os.PathLike, reference_dir: str | os.PathLike | None = None,
             exclude: tuple[Path, ...] = ()) -> ClipSets:  # fmt: skip
    """Apply the pairing rule (module docstring); no audio is read yet."""
    root = Path(generated_dir)
    files = list_audio(root, exclude)
    if not files:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    by_key: dict[str, Path] = {}
    for p in files:
        by_key.setdefault(_key(p, root), p)
    cache: dict[Path, dict | None] = {}
    sets = ClipSets(generated=[], references=[])
    refs_here: dict[str, Clip] = {}
    full_of_cont: set[str] = set()
    for key, p in by_key.items():
        if key.endswith(REF):
            refs_here[key[: -len(REF)]] = Clip(key[: -len(REF)], p)
        elif key.endswith(CONT) and key[: -len(CONT)] in by_key:
            full_of_cont.add(key[: -len(CONT)])
    for key, p in by_key.items():
        if key.endswith(REF) or (key.endswith(CONT) and key[: -len(CONT)] in full_of_cont):
            continue
        base = key[: -len(CONT)] if key.endswith(CONT) else key
        start = prompt_frames(p, cache)
        if key in full_of_cont and start is None:  # the full clip beside its continuation
            total, cont = _frames_on_disk(p), _frames_on_disk(by_key[key + CONT])
            start = max(0, total - cont) if total is not None and cont is not None else 0
        if key.endswith(CONT):
            start = 0
        sets.generated.append(Clip(base, p, start or 0))
    ref_root = None if reference_dir is None else Path(reference_dir)
    ref_files: dict[str, Path] = {}
    if ref_root is not None:
        ref_list = list_audio(ref_root, exclude)
        if not ref_list:
            raise ValueError(f"{ref_root}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        for p in ref_list:
            ref_files.setdefault(_key(p, ref_root), p)
    used: set[str] = set()
    for clip in sets.generated:
        if clip.key in refs_here:
            clip.reference = refs_here[clip.key]
        elif clip.key in ref_files:
            clip.reference = Clip(clip.key, ref_files[clip.key], clip.start)
            used.add(clip.key)
    sets.references = list(refs_here.values())
    sets.references += [r for r in (c.reference for c in sets.generated) if r is not None and r.key in used]
    sets.references += [Clip(k, p) for k, p in ref_files.items() if k not in used]
    return sets


def load(sets: ClipSets) -> ClipSets:
    """Read every clip's audio; drop (and list) unreadable files and clips with no continuation."""
    import soundfile as sf

    def read(clip: Clip) -> bool:
        try:
            clip.wave = load_audio(clip.path)
            sr = sf.info(str(clip.path)).samplerate
        except AudioLoadError as e:
            sets.skipped.append(dict(file=str(clip.path), reason=str(e)))
            return False
        if sr != SAMPLE_RATE:
            sets.resampled.append(dict(file=str(clip.path), sample_rate=int(sr)))
        if clip.wave.shape[-1] // HOP_LENGTH - clip.start < 2:
            sets.skipped.append(
                dict(
                    file=str(clip.path),
                    reason=f"fewer than 2 frames after the prompt end (frame {clip.start})",
                )
            )
            return False
        return True

    refs_ok = {id(r) for r in sets.references if read(r)}
    sets.references = [r for r in sets.references if id(r) in refs_ok]
    sets.generated = [g for g in sets.generated if read(g)]
    for g in sets.generated:
        if g.reference is not None and id(g.reference) not in refs_ok:
            g.reference = None
    if not sets.generated:
        raise ValueError(
            "no readable generated audio: " + "; ".join(f"{s['file']}: {s['reason']}" for s in sets.skipped)
        )
    return sets
