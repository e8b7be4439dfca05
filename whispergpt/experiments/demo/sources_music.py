"""Music sources of the demo corpus: the ufoai soundtrack (recorded) and music21 scores rendered
with FluidSynth (rendered)."""

from __future__ import annotations

import random
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from whispergpt.audio import SAMPLE_RATE, load_audio
from whispergpt.experiments.demo import system
from whispergpt.experiments.demo.build import Item, Source, to_mono_24k
from whispergpt.experiments.demo.system import Requirement, find_data, run_tool

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
            Requirement("music21", "module", "music21", system.find_module("music21")),
            Requirement("fluidsynth", "binary", "fluidsynth", system.which("fluidsynth")),
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
        run_tool(
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
