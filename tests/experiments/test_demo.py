"""The demo-corpus builder's pure-python parts: no apt package, no network (a fake source
synthesises tones/noise)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.cli import data as data_cli
from whispergpt.experiments import demo


class FakeSource(demo.Source):
    """Items are tones (or silence for every ``silent_every``-th item) of ``seconds`` each."""

    def __init__(
        self,
        name="fake",
        modality="music",
        kind="rendered",
        seconds=3.0,
        n=50,
        silent_every=0,
        sample_rate=44100,
        max_segments=3,
        trimmable=False,
    ):
        self.name, self.modality, self.kind = name, modality, kind
        self.licence = "test"
        self.seconds, self.n, self.silent_every, self.sr = seconds, n, silent_every, sample_rate
        self.max_segments, self.trimmable = max_segments, trimmable
        self.rendered: list[str] = []

    def candidates(self, rng, cache):
        keys = list(range(self.n))
        rng.shuffle(keys)
        for k in keys:
            yield demo.Item(f"{k:03d}", f"fake:{k}", k, f"text {k}")

    def render(self, item, tmp, cache):
        self.rendered.append(item.key)
        k = item.payload
        t = np.arange(int(self.seconds * self.sr)) / self.sr
        if self.silent_every and k % self.silent_every == 0:
            x = np.zeros((len(t), 2), np.float32)
        else:  # stereo at 44.1 kHz: the builder must down-mix and resample
            tone = 0.3 * np.sin(2 * np.pi * (200 + 10 * k) * t)
            x = np.stack([tone, 0.5 * tone], axis=1).astype(np.float32)
        return demo.to_mono_24k(x, self.sr)


def test_to_mono_24k_downmixes_and_resamples():
    sr = 48000
    t = np.arange(sr) / sr
    left = np.sin(2 * np.pi * 440 * t)
    x = np.stack([left, -left], axis=1).astype(np.float32)  # cancels when averaged
    y = demo.to_mono_24k(x, sr)
    assert y.shape == (SAMPLE_RATE,) and y.dtype == np.float32
    assert np.abs(y).max() < 1e-4
    y2 = demo.to_mono_24k(np.stack([left, left], axis=1), sr)
    spec = np.abs(np.fft.rfft(y2))
    assert abs(np.argmax(spec) * SAMPLE_RATE / len(y2) - 440) < 2  # pitch preserved at the new rate
    with pytest.raises(ValueError, match="shape"):
        demo.to_mono_24k(np.zeros((2, 2, 2)), sr)


def test_segment_lengths_silence_and_short_tail():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(int(45.5 * SAMPLE_RATE))).astype(np.float32)
    pieces = demo.segment(x, 20.0)
    assert [len(p) for p in pieces] == [20 * SAMPLE_RATE, 20 * SAMPLE_RATE, int(5.5 * SAMPLE_RATE)]
    assert all(len(p) % HOP_LENGTH == 0 for p in pieces[:-1])
    assert len(demo.segment(x, 20.0, max_segments=2)) == 2
    # a tail under min_seconds is dropped; a short clip alone is kept whole
    assert len(demo.segment(x[: int(40.5 * SAMPLE_RATE)], 20.0)) == 2
    assert len(demo.segment(x[: SAMPLE_RATE // 2], 20.0)) == 1
    # silent pieces and sub-frame clips are skipped
    y = x.copy()
    y[20 * SAMPLE_RATE : 40 * SAMPLE_RATE] = 0
    assert len(demo.segment(y, 20.0)) == 2
    assert demo.segment(np.zeros(SAMPLE_RATE, np.float32), 20.0) == []
    assert demo.segment(x[: HOP_LENGTH - 1], 20.0) == []
    assert demo.is_silent(np.full(100, 1e-5)) and not demo.is_silent(np.full(100, 1e-2))


def test_split_budget():
    srcs = [FakeSource("a", "speech"), FakeSource("b", "speech"), FakeSource("c", "music")]
    b = demo.split_budget(600, srcs, 0.4)
    assert b == pytest.approx({"a": 120, "b": 120, "c": 360})
    assert demo.split_budget(600, srcs[:2], 0.5) == pytest.approx({"a": 150, "b": 150})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        demo.split_budget(600, srcs, 1.5)


def _build(out, srcs, **kw):
    kw.setdefault("minutes", 1.0)
    return demo.build(out, srcs, cache=out / "cache", log=lambda *a: None, **kw)


def test_build_budget_layout_and_sources_json(tmp_path):
    speech = FakeSource("tone", "speech", "synthetic", seconds=2.0, max_segments=1)
    music = FakeSource("long", "music", "recorded", seconds=25.0, trimmable=True)
    res = _build(tmp_path, [speech, music], minutes=1.0, speech_fraction=0.5, segment_seconds=10)
    doc = json.loads((tmp_path / "SOURCES.json").read_text())
    secs = {m: sum(f["seconds"] for f in doc["files"] if f["modality"] == m) for m in ("speech", "music")}
    assert 30 <= secs["speech"] < 32  # whole 2 s clips: at most one clip over
    assert secs["music"] == pytest.approx(30, abs=0.02)  # music is trimmed to the budget
    assert {Path(f["path"]).parent.as_posix() for f in doc["files"]} == {"speech/synthetic", "music/recorded"}
    for f in doc["files"]:
        data, sr = sf.read(tmp_path / f["path"])
        info = sf.info(str(tmp_path / f["path"]))
        assert sr == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
        assert len(data) / sr == pytest.approx(f["seconds"], abs=1e-3)
        assert f["licence"] == "test" and f["origin"].startswith("fake:") and f["text"]
    # a 25 s item in 10 s pieces: 10 + 10 (+ a 5 s tail) from the first item, 10 from the next
    assert len(res.files) == len(doc["files"]) and (tmp_path / "README.md").is_file()
    assert sorted(p.name for p in (tmp_path / "music" / "recorded").iterdir()) == sorted(
        Path(f["path"]).name for f in doc["files"] if f["modality"] == "music"
    )


def test_selection_is_deterministic_and_seeded(tmp_path):
    def files(d, seed):
        _build(d, [FakeSource(seconds=2.0)], seed=seed)
        return [f["path"] for f in json.loads((d / "SOURCES.json").read_text())["files"]]

    a, b, c = files(tmp_path / "a", 0), files(tmp_path / "b", 0), files(tmp_path / "c", 1)
    assert a == b and a != c
    assert random.Random("0:fake").random() != random.Random("1:fake").random()


def test_silent_items_are_skipped_and_recorded(tmp_path):
    src = FakeSource(seconds=2.0, silent_every=2, n=40)
    res = _build(tmp_path, [src], minutes=0.5, speech_fraction=0.0)
    assert res.skipped and all(s["reason"].startswith("silent") for s in res.skipped)
    assert all(int(f["key"]) % 2 == 1 for f in res.files)
    assert sum(f["seconds"] for f in res.files) >= 30


def test_rerun_is_idempotent_and_resumes(tmp_path):
    src = FakeSource(seconds=2.0, silent_every=5)
    first = _build(tmp_path, [src], minutes=0.5, speech_fraction=0.0)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    src2 = FakeSource(seconds=2.0, silent_every=5)
    again = _build(tmp_path, [src2], minutes=0.5, speech_fraction=0.0)
    assert src2.rendered == [] and again.rendered == 0 and again.reused == first.rendered
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")} == mtimes
    assert again.files == first.files and len(again.skipped) == len(first.skipped)
    # a killed build: drop the last file, the rerun renders only that item
    victim = tmp_path / first.files[-1]["path"]
    victim.unlink()
    src3 = FakeSource(seconds=2.0, silent_every=5)
    third = _build(tmp_path, [src3], minutes=0.5, speech_fraction=0.0)
    assert src3.rendered == [first.files[-1]["key"]] and victim.is_file()
    # a larger budget extends; a smaller one removes the files it no longer lists
    _build(tmp_path, [FakeSource(seconds=2.0, silent_every=5)], minutes=1.0, speech_fraction=0.0)
    assert len(list(tmp_path.rglob("*.wav"))) > len(third.files)
    small = _build(tmp_path, [FakeSource(seconds=2.0, silent_every=5)], minutes=0.2, speech_fraction=0.0)
    assert sorted(p.name for p in tmp_path.rglob("*.wav")) == sorted(
        Path(f["path"]).name for f in small.files
    )


def test_failing_item_is_reported_and_skipped(tmp_path):
    class Flaky(FakeSource):
        def render(self, item, tmp, cache):
            if item.payload % 3 == 0:
                raise RuntimeError("boom")
            return super().render(item, tmp, cache)

    res = _build(tmp_path, [Flaky(seconds=2.0)], minutes=0.2, speech_fraction=0.0)
    assert any("boom" in s["reason"] for s in res.skipped) and res.files


def _missing_everything(monkeypatch, tmp_path):
    # the hooks live in demo.system: its callers look them up there at call time
    monkeypatch.setattr(demo.system, "which", lambda name: None)
    monkeypatch.setattr(demo.system, "find_module", lambda name: None)
    monkeypatch.setattr(demo.system, "data_roots", lambda cache: [tmp_path / "empty"])


def test_missing_tools_give_exact_install_command(monkeypatch, tmp_path, capsys):
    _missing_everything(monkeypatch, tmp_path)
    rc = data_cli.main(["demo", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1  # a missing tool is an input error: one line
    assert (
        "no speech source is available; install with: sudo apt-get install -y espeak-ng tuxpaint-stamps-default"
        in err
    )
    assert (
        "no music source is available; install with: "
        "sudo apt-get install -y fluid-soundfont-gm fluidsynth ufoai-music && pip install music21"
    ) in err
    assert not (tmp_path / "o" / "SOURCES.json").exists()

    rc = data_cli.main(["demo", "--check", "--cache", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rc == 2 and "espeak-ng" in out and "MISSING: sudo apt-get install -y espeak-ng" in out
    assert "MISSING: pip install music21" in out


def test_missing_source_warns_when_modality_still_covered(monkeypatch, tmp_path, capsys):
    _missing_everything(monkeypatch, tmp_path)
    monkeypatch.setattr(
        demo.system, "which", lambda name: "/usr/bin/espeak-ng" if name == "espeak-ng" else None
    )
    srcs = [demo.EspeakSource(), demo.TuxpaintSource()]
    logged = []
    ready, err = demo.resolve(srcs, tmp_path, explicit=False, log=logged.append)
    assert [s.name for s in ready] == ["espeak"] and err is None
    assert any(
        "sudo apt-get install -y tuxpaint-stamps-default" in m and m.startswith("warning") for m in logged
    )
    # named explicitly, a missing source is an error
    ready, err = demo.resolve(srcs, tmp_path, explicit=True, log=logged.append)
    assert (
        err and "source tuxpaint: missing" in err and "sudo apt-get install -y tuxpaint-stamps-default" in err
    )


def test_cli_rejects_bad_arguments(capsys):
    assert data_cli.main(["demo", "--sources", "espeak,nope", "--out", "x"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert data_cli.main(["nodemo"]) == 2
    assert demo.parse_sources("ufoai, espeak,ufoai") == ["ufoai", "espeak"]
    with pytest.raises(ValueError, match="--minutes"):
        demo.build("unused", [], minutes=0)


def test_tuxpaint_transcript(tmp_path):
    txt = tmp_path / "penny.txt"
    txt.write_text("A US 1 cent piece.\nes.utf8=Una moneda.\nfr.utf8=Une pièce.\n", encoding="utf-8")
    assert demo.tuxpaint_transcript(txt, "en") == "A US 1 cent piece."
    assert demo.tuxpaint_transcript(txt, "fr") == "Une pièce."
    assert demo.tuxpaint_transcript(txt, "ru") is None


def test_espeak_source_if_installed(tmp_path):
    if demo.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    res = _build(tmp_path, [demo.EspeakSource()], minutes=0.1, speech_fraction=1.0)
    assert res.files and all(f["text"] and f["seconds"] > 0.5 for f in res.files)


def test_always_failing_unlimited_source_stops(tmp_path):
    class Broken(FakeSource):
        def candidates(self, rng, cache):
            i = 0
            while True:
                yield demo.Item(f"{i:05d}", f"fake:{i}", i)
                i += 1

        def render(self, item, tmp, cache):
            raise RuntimeError("tool crashed")

    res = _build(tmp_path, [Broken()], minutes=0.2, speech_fraction=0.0)
    assert res.files == [] and len(res.skipped) == demo.MAX_CONSECUTIVE_FAILURES


def test_espeak_voices_default_is_english_and_others_read_numbers(monkeypatch, capsys):
    first = next(demo.EspeakSource().candidates(random.Random("0:espeak"), None))
    # the default (the quickstart's corpus) is unchanged by --espeak-voices existing
    assert first.origin == "espeak-ng -v en+f2 -s 150 -p 49" and first.text.startswith("My neighbour")
    monkeypatch.setattr(demo.sources_speech, "espeak_voice_names", lambda: {"de", "it", "en-us"})
    monkeypatch.setattr(demo.system, "which", lambda name: f"/usr/bin/{name}")
    src = demo.EspeakSource()
    src.set_voices(["de", "it", "en-us"])
    items = [it for it, _ in zip(src.candidates(random.Random("0:espeak"), None), range(30))]
    voices = {it.payload[0].split("+")[0] for it in items}
    assert voices == {"de", "it", "en-us"} and "numbers" in src.description
    for it in items:
        english = it.payload[0].startswith("en-us")
        assert english == any(c.isalpha() for c in it.text), it.text  # numbers outside English
    assert demo.number_text(random.Random(1)) == demo.number_text(random.Random(1))
    with pytest.raises(ValueError, match=r"no voice \['xx'\]"):
        src.set_voices(["de", "xx"])
    args = ["demo", "--out", "unused", "--sources", "espeak", "--espeak-voices", "de,xx"]
    assert data_cli.main(args) == 2 and "no voice ['xx']" in capsys.readouterr().err


def test_rebuild_with_other_content_for_a_key_renders_it_again(tmp_path):
    class Voiced(FakeSource):
        def __init__(self, voice, **kw):
            super().__init__(**kw)
            self.voice = voice

        def candidates(self, rng, cache):
            for it in super().candidates(rng, cache):
                yield demo.Item(it.key, f"{it.origin} {self.voice}", it.payload, f"{it.text} {self.voice}")

    first = _build(tmp_path, [Voiced("a", seconds=2.0)], minutes=0.1, speech_fraction=0.0)
    src = Voiced("b", seconds=2.0)
    again = _build(tmp_path, [src], minutes=0.1, speech_fraction=0.0)
    assert again.reused == 0 and src.rendered == [f["key"] for f in first.files]
    assert all(
        f["origin"].endswith(" b") for f in json.loads((tmp_path / "SOURCES.json").read_text())["files"]
    )
