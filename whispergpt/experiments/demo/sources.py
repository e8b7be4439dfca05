"""The demo corpus's source plugins by name, and which of them can run here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from whispergpt.experiments.demo.build import MODALITIES, Source
from whispergpt.experiments.demo.sources_music import Music21Source, UfoaiSource
from whispergpt.experiments.demo.sources_speech import EspeakSource, TuxpaintSource
from whispergpt.experiments.demo.system import Requirement, install_hint

ALL_SOURCES: dict[str, type[Source]] = {
    "espeak": EspeakSource,
    "tuxpaint": TuxpaintSource,
    "music21": Music21Source,
    "ufoai": UfoaiSource,
}


# ----------------------------------------------------------------------------------------------
# CLI


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


def iter_sources(names: Iterable[str]) -> list[Source]:
    """Source plugins by name (for scripts)."""
    return [ALL_SOURCES[n]() for n in names]
