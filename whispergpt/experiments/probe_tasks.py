"""The probe's labelled clips, built from the demo corpus's sources and cached.

Tasks (``TASKS``; every clip is 24 kHz mono):

- ``speech-music``: espeak-ng sentences (English voices and variants, random rate/pitch: the demo's
  ``EspeakSource``) vs FluidSynth renders of random melodies on a random melodic GM program.
- ``language``: spoken language of Tux Paint stamp descriptions (``tuxpaint-stamps-default``, the
  demo's ``TuxpaintSource``); the first ``LANGUAGE_SECONDS`` of each recording, cut down to a
  multiple of ``LANGUAGE_STEP`` (equal lengths batch through the encoders). Languages with fewer
  than ``MIN_PER_CLASS`` recordings are left out (of the package's 13, Malayalam has 6).
- ``instrument``: General-MIDI program family (``FAMILIES``: piano, organ, guitar, bass, strings,
  brass, reed, pipe) of FluidSynth renders of single-instrument random melodies; the program is
  drawn within the family, so the probe must generalise over programs.
- ``pitch``: pitch class (C..B) of single rendered notes (NSynth-like): random melodic program,
  octave and velocity.
- ``toy``: no tools needed (tests, smoke runs): low-pass vs high-pass noise. Not a default.

A task is a pure function of (name, clips per class, build seed, soundfont): items are drawn from
a ``random.Random(f"{name}-{seed}")``. FluidSynth renders all clips of a task from one MIDI file
(one slot per clip, a silent gap for release tails), which is ~100x faster than one call per clip.

Cache: ``CACHE/<name>-<key>/`` holds ``clips.safetensors`` (``audio``: all clips concatenated,
``offsets``: ``(N + 1,)`` int64) and ``task.json`` (classes, labels, origins, build settings); written
under a temp name and renamed, so a killed build is rebuilt, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import SAMPLE_RATE, load_audio
from whispergpt.errors import InputError
from whispergpt.experiments.demo import system
from whispergpt.experiments.demo.sources_music import SOUNDFONTS
from whispergpt.experiments.demo.sources_speech import EspeakSource, TuxpaintSource

TASK_VERSION = 3
MIN_PER_CLASS = 10
LANGUAGE_SECONDS = 4.0
LANGUAGE_STEP = 0.5  # recordings are cut to a multiple of this: few distinct lengths, so clips batch
SPEECH_MUSIC_PROGRAMS = (
    96  # GM programs 0-95: every melodic family (ensemble's choir and voices too), no effects
)
PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
# GM program family (program // 8) -> (name, lowest, highest MIDI note it is rendered in)
FAMILIES = {0: ("piano", 48, 84), 2: ("organ", 48, 84), 3: ("guitar", 45, 79), 4: ("bass", 28, 55),
            5: ("strings", 55, 88), 7: ("brass", 52, 82), 8: ("reed", 55, 84), 9: ("pipe", 60, 93)}  # fmt: skip


@dataclass
class ProbeTask:
    """Labelled clips: ``clips[i]`` ``(S_i,)`` float32 has class ``classes[labels[i]]``."""

    name: str
    classes: list[str]
    clips: list[torch.Tensor]
    labels: np.ndarray
    origins: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    folder: Path | None = None  # its cache folder (baseline embeddings are kept there too)

    def split(self, seed: int, test_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
        """Stratified ``(train, test)`` indices; seeded per task and per ``seed``."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng([seed, int(hashlib.sha256(self.name.encode()).hexdigest()[:8], 16)])
        train, test = [], []
        for c in range(len(self.classes)):
            idx = rng.permutation(np.flatnonzero(self.labels == c))
            n_test = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
            test += idx[:n_test].tolist()
            train += idx[n_test:].tolist()
        return np.sort(train), np.sort(test)


# -- MIDI + FluidSynth ----------------------------------------------------------------------------
TICKS_PER_SECOND = 960  # 480 ticks per quarter at the default 120 bpm


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def write_midi(path: Path, events: list[tuple[float, bytes]]) -> None:
    """A format-0 MIDI file of ``(seconds, message bytes)`` events on the default 120 bpm clock."""
    track, now = b"", 0
    for t, msg in sorted(events, key=lambda e: e[0]):
        tick = round(t * TICKS_PER_SECOND)
        track += _vlq(tick - now) + msg
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480)
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(track)) + track)


def soundfont(cache: Path) -> Path | None:
    return system.find_data(SOUNDFONTS, cache)


def render_slots(
    slots: list[list[tuple[int, float, float, int, int]]], seconds: float, cache: Path
) -> list[np.ndarray]:
    """Render clips of ``seconds`` with FluidSynth, one MIDI file for all; a slot is a list of
    ``(program, start, duration, note, velocity)`` notes (times within the clip)."""
    gap = 1.5  # silence between slots for release tails (sustained instruments ring on)
    period = seconds + gap
    events = []
    for i, notes in enumerate(slots):
        t0 = i * period
        for program, start, dur, note, vel in notes:
            events.append((t0 + max(0.0, start - 0.001), bytes([0xC0, program])))
            events.append((t0 + start, bytes([0x90, note, vel])))
            events.append((t0 + min(start + dur, seconds - 0.05), bytes([0x80, note, 0])))
        events.append((t0 + seconds, bytes([0xB0, 123, 0])))  # all notes off
    sf2 = soundfont(cache)
    assert sf2 is not None
    with tempfile.TemporaryDirectory(prefix="whispergpt-probe-") as tmp:
        mid, wav = Path(tmp) / "slots.mid", Path(tmp) / "slots.wav"
        write_midi(mid, events)
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(SAMPLE_RATE), "-T", "wav", "-F", str(wav), str(sf2), str(mid)]  # fmt: skip
        system.run_tool(cmd, timeout=1800)
        audio = load_audio(wav).numpy()
    n = int(seconds * SAMPLE_RATE)
    clips = [audio[round(i * period * SAMPLE_RATE) :][:n] for i in range(len(slots))]
    return [np.pad(c, (0, n - len(c))) for c in clips]


def _melody(rng: random.Random, program: int, lo: int, hi: int, seconds: float) -> list:
    """A random monophonic line on one program: notes of a random major/minor scale in [lo, hi]."""
    root = rng.randrange(12)
    steps = [0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10]
    scale = [n for n in range(lo, hi + 1) if (n - root) % 12 in steps]
    beat = rng.choice([0.2, 0.25, 0.3, 0.4])
    notes, t, i = [], 0.0, rng.randrange(len(scale))
    while t < seconds - 0.1:
        dur = beat * rng.choice([1, 1, 2, 3])
        i = min(len(scale) - 1, max(0, i + rng.choice([-2, -1, -1, 1, 1, 2, 3, -3])))
        notes.append((program, t, dur * 0.95, scale[i], rng.randint(70, 115)))
        t += dur
    return notes


# -- task builders --------------------------------------------------------------------------------
@dataclass
class TaskSpec:
    name: str
    needs: Callable[[Path], list[system.Requirement]]
    build: Callable[[int, int, Path], tuple[list[str], list[np.ndarray], list[int], list[str]]]
    clip_seconds: float


def _needs_fluidsynth(cache: Path) -> list[system.Requirement]:
    sf2 = soundfont(cache)
    return [
        system.Requirement("fluidsynth", "binary", "fluidsynth", system.which("fluidsynth")),
        system.Requirement("a General-MIDI soundfont (.sf2)", "apt-data", "fluid-soundfont-gm", str(sf2) if sf2 else None),
    ]  # fmt: skip


def _build_speech_music(n: int, seed: int, cache: Path):
    rng = random.Random(f"speech-music-{seed}")
    seconds = 3.0
    espeak = EspeakSource()
    speech, origins = [], []
    with tempfile.TemporaryDirectory(prefix="whispergpt-probe-") as tmp:
        for item in espeak.candidates(rng, cache):
            wave = espeak.render(item, Path(tmp), cache)[: int(seconds * SAMPLE_RATE)]
            if len(wave) >= SAMPLE_RATE:  # at least a second of speech
                speech.append(wave)
                origins.append(item.origin)
            if len(speech) == n:
                break
    programs = [rng.randrange(SPEECH_MUSIC_PROGRAMS) for _ in range(n)]  # choir and synth voices too
    music = render_slots([_melody(rng, p, *FAMILIES.get(p // 8, (None, 48, 84))[1:], seconds) for p in programs],
                         seconds, cache)  # fmt: skip
    origins += [f"fluidsynth: random melody, GM program {p}" for p in programs]
    return ["speech", "music"], speech + music, [0] * n + [1] * n, origins


def _build_language(n: int, seed: int, cache: Path):
    rng = random.Random(f"language-{seed}")
    source = TuxpaintSource()
    by_lang: dict[str, list] = {}
    for item in source.candidates(rng, cache):  # a seeded order of every recording
        lang = item.origin.rsplit("(", 1)[1].rstrip(")")
        if len(by_lang.setdefault(lang, [])) < n:
            by_lang[lang].append(item)
    classes = sorted(lang for lang, items in by_lang.items() if len(items) >= min(n, MIN_PER_CLASS))
    clips, labels, origins = [], [], []
    step = int(LANGUAGE_STEP * SAMPLE_RATE)
    for c, lang in enumerate(classes):
        for item in by_lang[lang]:
            wave = source.render(item, Path("."), cache)[: int(LANGUAGE_SECONDS * SAMPLE_RATE)]
            clips.append(wave[: max(step, len(wave) // step * step)])
            labels.append(c)
            origins.append(item.origin)
    return classes, clips, labels, origins


def _build_instrument(n: int, seed: int, cache: Path):
    rng = random.Random(f"instrument-{seed}")
    seconds = 3.0
    fams = sorted(FAMILIES)
    plan = [(c, 8 * f + rng.randrange(8)) for c, f in enumerate(fams) for _ in range(n)]
    clips = render_slots([_melody(rng, p, *FAMILIES[p // 8][1:], seconds) for _, p in plan], seconds, cache)
    return [FAMILIES[f][0] for f in fams], clips, [c for c, _ in plan], [f"GM program {p}" for _, p in plan]


def _build_pitch(n: int, seed: int, cache: Path):
    rng = random.Random(f"pitch-{seed}")
    seconds = 1.5
    slots, labels, origins = [], [], []
    for pc in range(12):
        for _ in range(n):
            fam = rng.choice(sorted(FAMILIES))
            _, lo, hi = FAMILIES[fam]
            note = rng.choice([m for m in range(lo, hi + 1) if m % 12 == pc])
            program = 8 * fam + rng.randrange(8)
            slots.append([(program, 0.0, 1.0, note, rng.randint(60, 120))])
            labels.append(pc)
            origins.append(f"GM program {program}, MIDI note {note}")
    return PITCH_CLASSES, render_slots(slots, seconds, cache), labels, origins


def _build_toy(n: int, seed: int, cache: Path):
    rng = np.random.default_rng(seed)
    S = int(0.6 * SAMPLE_RATE)
    clips, labels = [], []
    for c in range(2):
        for _ in range(n):
            w = rng.standard_normal(S + 32)
            # low: a 32-tap moving average (energy below ~750 Hz); high: a first difference
            x = np.convolve(w, np.ones(32) / 32, "valid")[:S] if c == 0 else np.diff(w)[:S]
            clips.append((0.1 * rng.uniform(0.5, 1.5) * x / x.std()).astype(np.float32))
            labels.append(c)
    return ["low", "high"], clips, labels, ["synthetic"] * len(clips)


TASKS: dict[str, TaskSpec] = {
    "speech-music": TaskSpec(
        "speech-music",
        lambda cache: EspeakSource().requirements(cache) + _needs_fluidsynth(cache),
        _build_speech_music,
        3.0,
    ),  # fmt: skip
    "language": TaskSpec(
        "language", lambda cache: TuxpaintSource().requirements(cache), _build_language, LANGUAGE_SECONDS
    ),  # fmt: skip
    "instrument": TaskSpec("instrument", _needs_fluidsynth, _build_instrument, 3.0),
    "pitch": TaskSpec("pitch", _needs_fluidsynth, _build_pitch, 1.5),
    "toy": TaskSpec("toy", lambda cache: [], _build_toy, 0.6),
}
DEFAULT_TASKS = ("speech-music", "language", "instrument", "pitch")


def missing_requirements(name: str, cache: Path) -> list[system.Requirement]:
    return [r for r in TASKS[name].needs(cache) if not r.found]


def load_task(
    name: str, per_class: int, seed: int = 0, cache: str | os.PathLike | None = None, rebuild: bool = False
) -> ProbeTask:
    """The clips of task ``name`` (built on first use, then read from the cache)."""
    if name not in TASKS:
        raise InputError(f"unknown probe task {name!r}: expected one of {sorted(TASKS)}")
    if per_class < 2:
        raise ValueError(f"--clips-per-class must be >= 2, got {per_class}")
    data_cache = system.default_cache_dir()  # where `data demo --install` unpacks Debian data
    root = Path(cache) if cache is not None else data_cache / "probe"
    sf2 = soundfont(data_cache)
    key_src = json.dumps([TASK_VERSION, name, per_class, seed, sf2.name if sf2 and name != "toy" else None])
    folder = root / f"{name}-{hashlib.sha256(key_src.encode()).hexdigest()[:10]}"
    if rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "task.json").is_file():
        missing = missing_requirements(name, data_cache)
        if missing:
            raise InputError(
                f"probe task {name!r} needs {', '.join(r.name for r in missing)}",
                hint=f"install: {system.install_hint(missing)}",
            )
        classes, clips, labels, origins = TASKS[name].build(per_class, seed, data_cache)
        info = dict(per_class=per_class, seed=seed, soundfont=str(sf2) if sf2 else None, version=TASK_VERSION)
        _save(folder, dict(name=name, classes=classes, labels=labels, origins=origins, info=info), clips)
    return _load(folder)


def _save(folder: Path, meta: dict, clips: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    offsets = np.cumsum([0] + [len(c) for c in clips]).astype(np.int64)
    audio = np.concatenate(clips).astype(np.float32) if clips else np.zeros(0, np.float32)
    save_file({"audio": audio, "offsets": offsets}, str(tmp / "clips.safetensors"))
    (tmp / "task.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load(folder: Path) -> ProbeTask:
    from safetensors.numpy import load_file

    meta = json.loads((folder / "task.json").read_text())
    arrays = load_file(str(folder / "clips.safetensors"))
    off = arrays["offsets"]
    clips = [torch.from_numpy(arrays["audio"][a:b].copy()) for a, b in zip(off[:-1], off[1:])]
    return ProbeTask(
        meta["name"],
        meta["classes"],
        clips,
        np.asarray(meta["labels"]),
        meta["origins"],
        meta["info"],
        folder,
    )
