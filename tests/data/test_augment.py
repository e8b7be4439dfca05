"""Augmentation: recipes, determinism, ``prepare --augment`` (manifest, val untouched, stream
consistency, silent copies, resume) and ``augment-preview``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("audiomentations")

import whispergpt.data.prepare as prep  # noqa: E402
from whispergpt.audio import SAMPLE_RATE, load_audio, log_mel  # noqa: E402
from whispergpt.cli import main as cli_main  # noqa: E402
from whispergpt.data.augment import (  # noqa: E402
    TRANSFORMS,
    AugmentedClipError,
    AugmentRecipe,
    apply_chain,
    augment,
    copy_seed,
    load_recipe,
    sample_chain,
)

SR = SAMPLE_RATE
REPO = Path(__file__).resolve().parents[2]


def tone(seconds: float, freq: float = 220.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.shape[0])
    return (amp * np.sin(2 * math.pi * freq * t) + amp / 6 * noise).astype(np.float32)


def recipe(*transforms: dict) -> AugmentRecipe:
    return AugmentRecipe.from_dict({"transforms": list(transforms)})


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Codes are compared bit for bit (see tests/data/test_prepare.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("aug-folders")
    rng = np.random.default_rng(1)
    for i in range(2):  # noise files at another rate, shorter than the clips: resampled and looped
        (root / "noise").mkdir(exist_ok=True)
        sf.write(
            str(root / "noise" / f"n{i}.wav"), (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000
        )
    for i in range(2):
        ir = np.zeros(2400, np.float32)
        ir[0] = 1.0
        ir[50:] = 0.02 * rng.standard_normal(2350) * np.exp(-np.arange(2350) / 400)
        (root / "ir").mkdir(exist_ok=True)
        sf.write(str(root / "ir" / f"ir{i}.wav"), ir, SR)
    (root / "noise" / "notes.txt").write_text("not audio")
    return root / "noise", root / "ir"


# -- transforms and determinism ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_each_transform_is_seeded_and_changes_the_audio(name):
    x = tone(1.0)
    r = recipe({"name": name, "p": 1.0})
    y1, chain = augment(x, r, seed=3)
    y2, _ = augment(x, r, seed=3)
    assert [s["name"] for s in chain] == [name]
    assert y1.dtype == np.float32 and np.isfinite(y1).all() and np.abs(y1).max() <= 1.0
    np.testing.assert_array_equal(y1, y2)
    assert y1.shape != x.shape or not np.allclose(y1, x, atol=1e-4)
    if name == "polarity":
        np.testing.assert_array_equal(y1, -x)
    if name == "time_stretch":
        assert abs(y1.shape[0] - x.shape[0] / chain[0]["params"]["rate"]) < 0.01 * SR


def test_whole_chain_same_seed_same_audio_other_seed_differs_globals_untouched(folders):
    noise, ir = folders
    r = recipe(
        {"name": "pitch_shift", "p": 1.0},
        {"name": "noise", "p": 1.0, "kind": "folder", "folder": str(noise)},
        {"name": "reverb", "p": 1.0, "folder": str(ir)},
        {"name": "noise", "p": 1.0, "kind": "pink"},
        {"name": "reverb", "p": 1.0},
        {"name": "bandpass", "p": 1.0},
    )
    x = tone(1.0)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    a, chain_a = augment(x, r, seed=7)
    assert (random.random(), np.random.random()) == expected  # the caller's RNG streams are restored
    b, chain_b = augment(x, r, seed=7)
    c, chain_c = augment(x, r, seed=8)
    np.testing.assert_array_equal(a, b)
    assert chain_a == chain_b and chain_a != chain_c
    assert a.shape != c.shape or not np.allclose(a, c)
    assert Path(chain_a[1]["params"]["file"]).parent == noise.resolve()
    assert Path(chain_a[2]["params"]["ir"]).parent == ir.resolve()
    np.testing.assert_array_equal(apply_chain(x, json.loads(json.dumps(chain_a)), 7), a)  # rebuilt from JSON


def test_probability_decides_and_chain_follows_recipe_order():
    r = recipe({"name": "gain", "p": 0.0}, {"name": "polarity", "p": 1.0}, {"name": "time_shift", "p": 1.0})
    for seed in range(5):
        assert [s["name"] for s in sample_chain(r, seed)] == ["polarity", "time_shift"]
    half = recipe({"name": "gain", "p": 0.5})
    applied = sum(bool(sample_chain(half, s)) for s in range(200))
    assert 70 < applied < 130


def test_silent_or_non_finite_copy_raises():
    with pytest.raises(AugmentedClipError, match="silent"):
        apply_chain(tone(1.0, amp=0.001), [{"name": "gain", "params": {"db": -40.0}}], 0)
    with pytest.raises(AugmentedClipError, match="non-finite"):
        apply_chain(np.full(SR, np.nan, np.float32), [], 0)
    loud = apply_chain(tone(1.0), [{"name": "gain", "params": {"db": 20.0}}], 0)
    assert abs(np.abs(loud).max() - 0.99) < 1e-6  # scaled back under full scale, not clipped


# -- recipe validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "item, match",
    [
        ({"name": "chorus"}, "unknown transform 'chorus'; valid transforms: pitch_shift, time_stretch"),
        ({"name": "pitch_shift", "semitone": 1}, r"unknown parameter\(s\) semitone; valid: p, semitones"),
        ({"name": "pitch_shift", "semitones": [-20, 2]}, r"outside the supported range \[-12, 12\]"),
        ({"name": "time_stretch", "rate": [0.1, 1.0]}, r"\[0.5, 2\]"),
        ({"name": "highpass", "cutoff_hz": [10, 100]}, "supported range"),
        ({"name": "gain", "db": [3, -3]}, "lo <= hi"),
        ({"name": "gain", "db": "loud"}, r"expected a number or \[lo, hi\]"),
        ({"name": "gain", "p": 1.5}, r"probability must be in \[0, 1\]"),
        ({"name": "noise", "kind": "purple"}, "white, pink, folder"),
        ({"name": "noise", "kind": "folder"}, "needs folder"),
    ],
)
def test_bad_transform_raises_clear_error(item, match):
    with pytest.raises(ValueError, match=match):
        recipe(item)


def test_bad_recipe_shapes_and_folders(tmp_path):
    with pytest.raises(ValueError, match="valid: transforms"):
        AugmentRecipe.from_dict({"transforms": [{"name": "gain"}], "copies": 2})
    with pytest.raises(ValueError, match="non-empty list"):
        AugmentRecipe.from_dict({"transforms": []})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable audio"):
        recipe({"name": "reverb", "folder": str(tmp_path / "empty")})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "fake.wav").write_bytes(b"RIFF not really")
    with pytest.raises(ValueError, match="holds no readable audio"):
        recipe({"name": "noise", "kind": "folder", "folder": str(tmp_path / "broken")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("transforms:\n  - {name: pitch_shift, semitones: [-30, 0]}\n")
    with pytest.raises(ValueError, match=f"{bad}.*pitch_shift.semitones"):
        load_recipe(bad)


def test_shipped_recipes_load():
    for name in ("speech-light", "music-light"):
        r = load_recipe(REPO / "configs" / "augment" / f"{name}.yaml")
        assert {"pitch_shift", "time_stretch", "reverb", "noise", "gain", "time_shift"} <= {
            t.NAME for t in r.transforms
        }


def test_cli_bad_recipe_exits_2(tmp_path, capsys, tiny_codec_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("transforms:\n  - {name: flanger}\n")
    wav = tmp_path / "a.wav"
    sf.write(str(wav), tone(0.5), SR)
    for argv in (
        [
            "prepare",
            str(wav),
            "--out",
            str(tmp_path / "ds"),
            "--codec",
            str(tiny_codec_dir),
            "--augment",
            str(bad),
        ],
        ["augment-preview", str(bad), str(wav), "--out", str(tmp_path / "pv")],
    ):
        assert cli_main(argv) == 2
        assert "unknown transform 'flanger'; valid transforms: pitch_shift" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "pv").exists()


# -- prepare --augment ---------------------------------------------------------------------------
AUG = {
    "transforms": [
        {"name": "pitch_shift", "p": 0.7, "semitones": [-2, 2]},
        {"name": "time_stretch", "p": 0.7, "rate": [0.9, 1.1]},
        {"name": "noise", "p": 0.5, "kind": "pink", "snr_db": [20, 30]},
        {"name": "reverb", "p": 0.5},
        {"name": "gain", "p": 1.0, "db": [-40, -30]},  # silences the one quiet file's copies
        {"name": "time_shift", "p": 0.5, "seconds": [-0.01, 0.01]},
    ]
}


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_codec_dir):
    root = tmp_path_factory.mktemp("aug-corpus")
    for i in range(5):
        sf.write(str(root / f"f{i}.wav"), tone(0.6 + 0.1 * i, 150 + 50 * i, seed=i), SR)
    sf.write(str(root / "quiet.wav"), tone(0.8, 300, amp=0.001), SR)  # -63 dBFS: kept; its copies are not
    (root / "recipe.yaml").write_text(json.dumps(AUG))  # JSON is YAML
    out = tmp_path_factory.mktemp("aug-ds") / "ds"
    kw = dict(bandwidth=1.5, n_mels=16, device="cpu", progress=False, val_fraction=0.34, seed=5)
    m = prep.prepare([str(root)], out, str(tiny_codec_dir), augment=root / "recipe.yaml", copies=2,
                     shard_seconds=3.0, **kw)  # fmt: skip
    return root, out, m, kw


def _entries(out: Path) -> list[tuple[dict, dict]]:
    """``(shard, entry)`` for every file in the dataset."""
    m = json.loads((out / "manifest.json").read_text())
    return [(sh, e) for sh in m["shards"] for e in json.loads((out / "shards" / sh["name"] / "index.json").read_text())]  # fmt: skip


def test_manifest_records_recipe_copies_and_every_chain(augmented):
    root, out, m, kw = augmented
    assert m["augment"] == {**load_recipe(root / "recipe.yaml").to_dict(), "copies": 2}
    entries = [e for _, e in _entries(out)]
    train = sorted(e["path"] for e in entries if e["split"] == "train" and "#aug" not in e["path"])
    quiet = str((root / "quiet.wav").resolve())
    assert quiet in train, "the split must put quiet.wav in train for this test"
    for src in train:
        for n in (1, 2):
            name = f"{src}#aug{n}"
            if src == quiet:
                assert name in {s["path"] for s in m["skipped"]}
                assert name not in {e["path"] for e in entries}
                continue
            (e,) = [e for e in entries if e["path"] == name]
            a = e["augment"]
            assert set(a) == {"copy", "seed", "source", "chain"}
            assert (a["copy"], a["source"], a["seed"]) == (n, src, copy_seed(kw["seed"], src, n))
            assert a["chain"] and all(
                set(s) == {"name", "params"} and s["name"] in TRANSFORMS for s in a["chain"]
            )
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {f"{quiet}#aug1", f"{quiet}#aug2"} and "silent" in skipped[f"{quiet}#aug1"]
    assert m["splits"]["train"]["files"] == 3 * len(train) - 2


def test_val_is_never_augmented(augmented):
    _, out, m, _ = augmented
    val = [e for sh, e in _entries(out) if sh["split"] == "val"]
    assert val and m["splits"]["val"]["files"] == len(val) == 2
    assert all("#aug" not in e["path"] and "augment" not in e for e in val)


def test_streams_are_those_of_the_rebuilt_augmented_audio(augmented, tiny_codec):
    _, out, _, _ = augmented
    checked = 0
    for sh, e in _entries(out):
        if "augment" not in e:
            continue
        a = e["augment"]
        audio = torch.from_numpy(apply_chain(load_audio(a["source"]).numpy(), a["chain"], a["seed"]))
        sl = slice(e["offset"], e["offset"] + e["frames"])
        d = out / "shards" / sh["name"]
        codes = np.load(d / "codes.npy")[sl].T  # time-major (N, K) on disk
        assert e["frames"] == audio.shape[-1] // 320 and abs(e["seconds"] - audio.shape[-1] / SR) < 1e-9
        np.testing.assert_array_equal(codes, tiny_codec.encode(audio[None])[0].numpy())
        # float16 mel on disk: rounding error <= 4.9e-4 in [-2, 2]
        np.testing.assert_allclose(np.load(d / "mel.npy")[sl].T, log_mel(audio, n_mels=16).numpy(), atol=1e-3)
        decoded = tiny_codec.decode(torch.from_numpy(codes.astype(np.int64))[None])[0]
        np.testing.assert_allclose(np.load(d / "mel_decoded.npy")[sl].T, log_mel(decoded, n_mels=16).numpy(),
                                   atol=1e-3)  # fmt: skip
        checked += 1
    assert checked == 6  # 4 train files x 2 copies, minus the quiet file's 2


def test_rerun_resumes_and_a_changed_recipe_is_refused(augmented, tiny_codec_dir, monkeypatch):
    root, out, m, kw = augmented
    encoded = []
    real = prep.encode_batch
    monkeypatch.setattr(prep, "encode_batch", lambda c, w, **k: encoded.extend(w) or real(c, w, **k))
    again = prep.prepare([str(root)], out, str(tiny_codec_dir), augment=root / "recipe.yaml", copies=2,
                         shard_seconds=3.0, **kw)  # fmt: skip
    assert not encoded and again["shards"] == m["shards"]
    with pytest.raises(ValueError, match="augment"):
        prep.prepare([str(root)], out, str(tiny_codec_dir), augment=root / "recipe.yaml", copies=3, **kw)
    with pytest.raises(ValueError, match="augment"):
        prep.prepare([str(root)], out, str(tiny_codec_dir), **kw)
    with pytest.raises(ValueError, match="needs an augment recipe"):
        prep.prepare([str(root)], out, str(tiny_codec_dir), copies=2, **kw)
    with pytest.raises(ValueError, match="copies must be an integer >= 1"):
        prep.prepare([str(root)], out, str(tiny_codec_dir), augment=root / "recipe.yaml", copies=0, **kw)


# -- augment-preview -----------------------------------------------------------------------------
def test_preview_writes_wavs_chains_and_grid_matching_prepare(tmp_path, capsys):
    wav = tmp_path / "in.wav"
    sf.write(str(wav), tone(1.0), SR)
    rc = cli_main(["augment-preview", str(REPO / "configs/augment/speech-light.yaml"), str(wav), "--out",
                   str(tmp_path / "pv"), "--n", "3", "--seed", "4"])  # fmt: skip
    assert rc == 0
    pv = tmp_path / "pv"
    records = json.loads((pv / "chains.json").read_text())
    assert [r["copy"] for r in records] == [1, 2, 3]
    assert (pv / "grid.png").read_bytes()[:4] == b"\x89PNG" and (pv / "original.wav").is_file()
    r = load_recipe(REPO / "configs/augment/speech-light.yaml")
    for rec in records:
        seed = copy_seed(4, str(wav.resolve()), rec["copy"])  # what prepare --seed 4 would use
        assert rec["seed"] == seed and rec["chain"] == sample_chain(r, seed)
        expected = apply_chain(load_audio(wav).numpy(), rec["chain"], seed)
        np.testing.assert_allclose(
            load_audio(pv / f"copy-{rec['copy']}.wav").numpy(), expected, atol=1 / 16384
        )
    assert "copy 3 (seed" in capsys.readouterr().out
