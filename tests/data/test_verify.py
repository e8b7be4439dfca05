"""Datasets that verify themselves: a truncated or corrupted shard is named in one line by
``train`` (cheap check) and ``inspect --verify`` (full check), and ``prepare`` re-encodes it; a
full disk while writing a shard leaves the finished shards usable. Faults are injected here."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from whispergpt.cli import main as cli
from whispergpt.data import PreparedDataset
from whispergpt.data import prepare as prepare_mod
from whispergpt.data.dataset import verify_dataset
from whispergpt.data.verify import check_shard
from whispergpt.errors import InputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ds(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset (its manifest names the original audio files)."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "prepared"))


def shard_dir(ds: Path, split: str = "train") -> Path:
    name = next(
        s["name"] for s in json.loads((ds / "manifest.json").read_text())["shards"] if s["split"] == split
    )
    return ds / "shards" / name


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_clean_dataset_verifies(ds, capsys):
    assert verify_dataset(ds) == ([], 2)
    assert cli(["inspect", "--verify", str(ds)]) == 0
    assert "all 2 shards ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, damage, expect",
    [
        ("codes.npy", "truncate", "codes.npy is truncated"),
        ("mel.npy", "truncate", "mel.npy is truncated"),
        ("mel_decoded.npy", "truncate", "mel_decoded.npy is truncated"),
        ("mel_decoded_coarse.npy", "truncate", "mel_decoded_coarse.npy is truncated"),
        ("codes.npy", "append", "codes.npy is too long"),
        ("mel.npy", "header", "mel.npy has no valid .npy header"),
        ("index.json", "truncate", "index.json is unreadable"),
        ("codes.npy", "delete", "codes.npy is missing"),
        ("mel.npy", "dtype", "mel.npy has dtype float64, expected float16"),
        ("codes.npy", "shape", "codes.npy has shape"),
    ],
)
def test_cheap_check_names_each_damage(ds, name, damage, expect):
    sdir = shard_dir(ds)
    path = sdir / name
    if damage == "truncate":
        truncate(path)
    elif damage == "append":
        path.write_bytes(path.read_bytes() + b"\0" * 8)
    elif damage == "header":
        path.write_bytes(b"garbage" + path.read_bytes()[7:])
    elif damage == "delete":
        path.unlink()
    elif damage == "dtype":
        np.save(path, np.load(path).astype(np.float64))
    elif damage == "shape":
        np.save(path, np.load(path)[:-1])  # one frame short of index.json
    m = json.loads((ds / "manifest.json").read_text())
    problem = check_shard(sdir, m)
    assert problem is not None and expect in problem
    broken, total = verify_dataset(ds)
    assert total == 2 and [b[0] for b in broken] == [sdir.name] and expect in broken[0][1]


def test_full_check_reads_values(ds, capsys):
    sdir = shard_dir(ds, "val")
    mel = np.load(sdir / "mel.npy", mmap_mode="r+")
    mel[17, 3] = np.nan  # time-major (N, M)
    mel.flush()
    del mel
    codes = np.load(shard_dir(ds) / "codes.npy", mmap_mode="r+")
    codes[5, 1] = 4000  # V = 1024
    codes.flush()
    del codes
    assert verify_dataset(ds, full=False) == ([], 2)  # sizes and headers are fine
    broken = dict(verify_dataset(ds)[0])
    assert "non-finite values (first at frame 17)" in broken[sdir.name]
    assert "outside [0, 1024)" in broken[shard_dir(ds).name]
    assert cli(["inspect", "--verify", str(ds)]) == 2
    out, err = capsys.readouterr()
    assert sum(line.startswith("broken shard") for line in out.splitlines()) == 2
    assert len(err.strip().splitlines()) == 1 and "2 of 2 shards are broken" in err


def test_truncated_shard_train_and_inspect_one_line_exit_2(ds, tmp_path, capsys):
    sdir = shard_dir(ds)
    truncate(sdir / "codes.npy")
    with pytest.raises(InputError, match=f"broken shard {sdir.name}: codes.npy is truncated"):
        PreparedDataset(ds, "train", frames=32)
    args = [str(REPO / "configs" / "tiny.yaml"), f"data.dir={ds}", f"out_dir={tmp_path / 'run'}"]
    assert cli(["train", *args, "logging.wandb=false", "logging.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = last_line(err)
    assert line.startswith("whispergpt train: error: broken shard") and str(sdir) in line
    assert "whispergpt prepare" in line
    assert not (tmp_path / "run" / "checkpoints").exists()

    assert cli(["inspect", "--verify", str(ds)]) == 2
    out, err = capsys.readouterr()
    assert f"broken shard {sdir}: codes.npy is truncated" in out
    assert "Traceback" not in err and last_line(err).startswith("whispergpt inspect: error: 1 of 2 shards")


@pytest.mark.slow
def test_prepare_reencodes_only_the_broken_shard(ds, tiny_dataset, tiny_codec_dir, capsys):
    sdir = shard_dir(ds)
    val = shard_dir(ds, "val")
    val_before = (val / "codes.npy").read_bytes()
    original = np.load(sdir / "codes.npy").T  # time-major (N, K) on disk -> (K, N)
    truncate(sdir / "mel.npy", 0.9)
    wav = tiny_dataset.parent / "wav"
    kw = dict(bandwidth=1.5, n_mels=80, val_fraction=0.34, seed=0, device="cpu", progress=False)
    manifest = prepare_mod.prepare([wav], ds, tiny_codec_dir, **kw)
    out = capsys.readouterr().out
    assert f"shard {sdir.name} is broken (mel.npy is truncated" in out
    assert "(4 already done, 2 to encode)" not in out and "2 already done, 4 to encode" in out
    assert (ds / "shards" / f".bad-{sdir.name}").is_dir()  # moved aside, not deleted
    assert verify_dataset(ds) == ([], 2)
    assert (val / "codes.npy").read_bytes() == val_before  # the good shard is untouched
    assert manifest["splits"]["train"]["files"] == 4
    new = PreparedDataset(ds, "train")
    codes = np.concatenate([new.file_arrays(i)[0].numpy() for i in range(len(new))], axis=1)
    # encoded again with the same codec: same codes (up to near-tie flips across thread counts)
    assert codes.shape == original.shape and (codes == original).mean() > 0.95


@pytest.mark.slow
def test_enospc_while_writing_a_shard(tiny_dataset, tiny_codec_dir, tmp_path, monkeypatch, capsys):
    wav = tiny_dataset.parent / "wav"
    out = tmp_path / "ds"
    real_save, calls = np.save, [0]

    def full_disk(path, arr, *a, **k):
        calls[0] += 1
        if calls[0] == 4:  # mel.npy of the second shard
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, arr, *a, **k)

    # shard_seconds=2: one 2 s clip per shard; no decoded mel: two arrays per shard
    argv = ["prepare", str(wav), "--out", str(out), "--codec", str(tiny_codec_dir), "--bandwidth", "1.5",
            "--val-fraction", "0.34", "--device", "cpu", "--shard-seconds", "2", "--no-decoded-mel",
            "--no-progress"]  # fmt: skip
    monkeypatch.setattr(prepare_mod.np, "save", full_disk)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # (stderr also holds the codec's loading bar)
    line = last_line(err)
    assert line.startswith("whispergpt prepare: error: could not write shard train-00001 (No space left")
    assert "rerun" in line
    monkeypatch.undo()
    assert not list((out / "shards").glob(".tmp-*"))  # no debris
    assert verify_dataset(out) == ([], 1)  # the last good state loads
    assert len(PreparedDataset(out, "train")) == 1
    assert cli(argv) == 0
    assert verify_dataset(out) == ([], 6)


@pytest.mark.parametrize(
    "name, bad, expect",
    [("mel.npy", np.nan, "mel.npy holds non-finite values"), ("codes.npy", 4000, "outside [0, 1024)")],
)
def test_cheap_check_samples_values(ds, name, bad, expect):
    """A shard bad throughout (a writer's NaNs, garbage codes) fails the cheap check too."""
    sdir = shard_dir(ds)
    arr = np.load(sdir / name)
    np.save(sdir / name, np.full_like(arr, bad))
    problem = check_shard(sdir, json.loads((ds / "manifest.json").read_text()))
    assert problem is not None and expect in problem


def test_a_wav_holding_nan_is_skipped_with_its_reason(tiny_dataset, tiny_codec_dir, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "wav"
    shutil.copytree(tiny_dataset.parent / "wav", wav)
    bad = sorted(wav.rglob("*.wav"))[0]
    x, sr = sf.read(bad, dtype="float32")
    x[100:200] = np.nan  # a float WAV can hold NaN samples
    sf.write(bad, x, sr, subtype="FLOAT")
    out = tmp_path / "ds"
    argv = ["prepare", str(wav), "--out", str(out), "--codec", str(tiny_codec_dir), "--bandwidth", "1.5",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert list(reasons) == [bad.name] and ("non-finite" in reasons[bad.name] or "NaN" in reasons[bad.name])
    assert verify_dataset(out) == ([], len(m["shards"]))


def test_values_are_checked_before_a_shard_is_written(tiny_dataset, tiny_codec_dir, tmp_path, monkeypatch):
    """A stream writer that yields NaN for one file (a broken codec, a bad mel) skips that file."""
    import dataclasses

    from whispergpt.data import streams

    real = streams.STREAMS["mel_decoded"]
    victim = sorted((tiny_dataset.parent / "wav").rglob("*.wav"))[0]

    def nan_for_victim(work):
        out = real.writer(work)
        return np.full_like(out, np.nan) if Path(work.path).name == victim.name else out

    monkeypatch.setitem(streams.STREAMS, "mel_decoded", dataclasses.replace(real, writer=nan_for_victim))
    out = tmp_path / "ds"
    argv = ["prepare", str(tiny_dataset.parent / "wav"), "--out", str(out), "--codec", str(tiny_codec_dir),
            "--bandwidth", "1.5", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    (entry,) = m["skipped"]
    assert Path(entry["path"]).name == victim.name
    assert "encoded to bad values (mel_decoded.npy holds non-finite values" in entry["reason"]
    assert verify_dataset(out) == ([], len(m["shards"]))
