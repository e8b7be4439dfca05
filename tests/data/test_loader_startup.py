"""A dataset of many shards (a merged corpus): the reader starts from the manifest alone.

File opens and mmap calls are counted with an audit hook (``sys.addaudithook``), so the test
says what start-up touches, not how long it takes."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_prepare import run_prepare, tone, write

from whispergpt.data import PreparedDataset
from whispergpt.data.dataset import CHECK_EAGER_SHARDS
from whispergpt.errors import InputError

N_SHARDS = 200
_RECORD: list | None = None


def _hook(event: str, args: tuple) -> None:
    if _RECORD is not None and event in ("open", "mmap.__new__"):
        _RECORD.append(str(args[0]) if event == "open" else "mmap")


sys.addaudithook(_hook)  # cannot be removed; it records only inside `recording`


@contextlib.contextmanager
def recording():
    global _RECORD
    _RECORD = got = []
    try:
        yield got
    finally:
        _RECORD = None


@pytest.fixture(scope="module")
def many(tmp_path_factory, tiny_codec_dir) -> Path:
    """One prepared shard (2 files) copied to 200 train shards, listed in one manifest."""
    root = tmp_path_factory.mktemp("many")
    write(root / "src" / "a.wav", tone(0.3, seed=1))
    write(root / "src" / "b.wav", tone(0.4, seed=2))
    out = root / "ds"
    m = run_prepare([root / "src"], out, tiny_codec_dir, val_fraction=0.0, decoded_mel=False)
    (one,) = m["shards"]
    assert one["file_frames"] == [22, 30]
    shards = []
    for i in range(N_SHARDS):
        name = f"train-{i:05d}"
        if name != one["name"]:
            shutil.copytree(out / "shards" / one["name"], out / "shards" / name)
        shards.append(dict(one, name=name))
    frames = N_SHARDS * one["frames"]
    m.update(shards=shards)
    m["splits"]["train"].update(files=2 * N_SHARDS, frames=frames, seconds=frames / 75)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_start_up_reads_only_the_manifest(many):
    assert N_SHARDS > CHECK_EAGER_SHARDS
    with recording() as opened:
        ds = PreparedDataset(many, "train", frames=16)
    assert opened == [str(many / "manifest.json")]  # no shard file opened, nothing memory-mapped
    assert len(ds.files) == 2 * N_SHARDS and ds.total_frames == N_SHARDS * 52
    assert [f["offset"] for f in ds.files[:2]] == [0, 22] and ds.files[399]["shard"] == "train-00199"
    with recording() as opened:
        ds.crop(301, 3, 16)  # the first use of a shard checks and opens that shard only
    assert opened and all(p == "mmap" or "/train-00150/" in p for p in opened), opened  # its codes are mapped
    with recording() as opened:
        ds.crop(300, 0, 16)  # already checked in this process: the read alone
    assert [Path(p).name for p in opened] == ["codes.npy", "mel.npy"]
    with recording() as opened:
        assert ds.files[17]["path"].endswith("b.wav")  # a path is read from its shard's index when asked
    assert opened == [str(many / "shards" / "train-00008" / "index.json")]
    assert ds.files[19].get("path").endswith("b.wav") and ds.files[19].get("nope") is None


def test_a_broken_shard_is_named_when_first_opened(many, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(many, out)
    codes = out / "shards" / "train-00007" / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-10])
    ds = PreparedDataset(out, "train", frames=16)  # start-up does not see it ...
    ds.crop(0, 0, 16)
    with pytest.raises(InputError, match="broken shard train-00007: codes.npy is truncated"):
        ds.crop(14, 0, 16)  # ... its first use does, in one line
    with pytest.raises(InputError, match="broken shard train-00007"):
        PreparedDataset(out, "train", frames=16, check="eager")
    # the dataset pickles for DataLoader workers with its lazy state
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.files[3]["path"].endswith("b.wav") and len(clone.files) == 2 * N_SHARDS


def test_a_broken_shard_found_in_a_worker_exits_2_not_1(many, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(many, out)
    codes = out / "shards" / "train-00000" / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-10])
    ds = PreparedDataset(out, "train", frames=16)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [0]), num_workers=1)
    with pytest.raises(ValueError, match="broken shard train-00000: codes.npy is truncated"):
        next(iter(loader))  # a ValueError (exit 2), not the TypeError torch makes of an InputError
