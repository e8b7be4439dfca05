"""The demo corpus (``whispergpt data demo``): build a small real speech + music corpus from Debian/PyPI packages.

Layout written under ``--out DIR`` (24 kHz mono 16-bit WAV everywhere)::

    DIR/speech/real/*.wav        tuxpaint-stamps-default recordings (13 languages)
    DIR/speech/synthetic/*.wav   espeak-ng (English; other languages with --espeak-voices)
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

Modules: ``system`` (tools, install commands, ``--install``), ``build`` (audio helpers, ``Source``,
``build``), ``sources_speech`` / ``sources_music`` (the plugins), ``sources`` (plugins by name); the CLI is
``whispergpt.cli.data``.
"""

from __future__ import annotations

from whispergpt.experiments.demo import system
from whispergpt.experiments.demo.build import (
    FORMAT_VERSION,
    MAX_CONSECUTIVE_FAILURES,
    MIN_SEGMENT_SECONDS,
    MODALITIES,
    SILENCE_RMS,
    BuildResult,
    Item,
    Source,
    build,
    is_silent,
    readme_text,
    segment,
    split_budget,
    to_mono_24k,
)
from whispergpt.experiments.demo.sources import (
    ALL_SOURCES,
    check_sources,
    iter_sources,
    parse_sources,
    resolve,
)
from whispergpt.experiments.demo.sources_music import (
    GM_ENSEMBLES,
    MUSIC21_COMPOSERS,
    MUSIC21_MAX_BYTES,
    SOUNDFONTS,
    UFOAI_PK3,
    Music21Source,
    UfoaiSource,
)
from whispergpt.experiments.demo.sources_speech import (
    ESPEAK_VOICES,
    TUXPAINT_STAMPS,
    EspeakSource,
    TuxpaintSource,
    espeak_voice_names,
    number_text,
    synthetic_text,
    tuxpaint_transcript,
)
from whispergpt.experiments.demo.system import (
    Requirement,
    data_roots,
    default_cache_dir,
    find_data,
    find_module,
    install,
    install_hint,
    which,
)

__all__ = [
    "ALL_SOURCES",
    "ESPEAK_VOICES",
    "FORMAT_VERSION",
    "GM_ENSEMBLES",
    "MAX_CONSECUTIVE_FAILURES",
    "MIN_SEGMENT_SECONDS",
    "MODALITIES",
    "MUSIC21_COMPOSERS",
    "MUSIC21_MAX_BYTES",
    "SILENCE_RMS",
    "SOUNDFONTS",
    "TUXPAINT_STAMPS",
    "UFOAI_PK3",
    "BuildResult",
    "EspeakSource",
    "Item",
    "Music21Source",
    "Requirement",
    "Source",
    "TuxpaintSource",
    "UfoaiSource",
    "build",
    "check_sources",
    "data_roots",
    "default_cache_dir",
    "espeak_voice_names",
    "find_data",
    "find_module",
    "install",
    "install_hint",
    "is_silent",
    "iter_sources",
    "number_text",
    "parse_sources",
    "readme_text",
    "resolve",
    "segment",
    "split_budget",
    "synthetic_text",
    "system",
    "to_mono_24k",
    "tuxpaint_transcript",
    "which",
]
