"""``PreparedDataset``: crops, alignment, random crops, tiling, pickling and validation.

The datasets here are written by hand in the documented layout with values that encode
``(file, frame)``, so every alignment check is exact; ``tests/test_prepare.py`` checks the
reader against real ``prepare`` output.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from whispergpt.data import PreparedDataset
from whispergpt.errors import InputError

K, M, V = 3, 4, 1024
# (split, shard, file lengths in frames)
LAYOUT = [("train", "train-00000", [10, 3]), ("train", "train-00001", [25]), ("val", "val-00000", [7])]


def code_value(file_id: int, t: int, k: int) -> int:
    return (file_id * 100 + t * 3 + k) % V


def mel_value(file_id: int, t: int, m: int) -> float:
    return file_id * 64.0 + t + m / 8  # < 256 in steps of 1/8: exact in float16 too


def make_dataset(root: Path, fmt: int = 1) -> Path:
    """The LAYOUT in format ``fmt``: 1 = channel-major (K, N) / (M, N) float32 (what older versions
    wrote), 2 = time-major (N, K) / (N, M) with a float16 mel (values chosen to be exact in float16)
    and a ``semantic`` (N,) stream."""
    shards, splits, file_id = [], {"train": [0, 0], "val": [0, 0]}, 0
    for split, name, lengths in LAYOUT:
        d = root / "shards" / name
        d.mkdir(parents=True)
        codes, mels, index, offset = [], [], [], 0
        for n in lengths:
            t = np.arange(n)
            codes.append(np.stack([code_value(file_id, t, k) for k in range(K)]).astype(np.int16))  # (K, n)
            mels.append(np.stack([mel_value(file_id, t, m) for m in range(M)]).astype(np.float32))  # (M, n)
            index.append(
                dict(path=f"/audio/f{file_id}.wav", frames=n, offset=offset, seconds=n / 75, split=split)
            )
            offset += n
            file_id += 1
        codes, mel = np.concatenate(codes, axis=1), np.concatenate(mels, axis=1)
        if fmt == 1:
            np.save(d / "codes.npy", codes)
            np.save(d / "mel.npy", mel)
        else:
            np.save(d / "codes.npy", np.ascontiguousarray(codes.T))  # (N, K)
            np.save(d / "mel.npy", np.ascontiguousarray(mel.T).astype(np.float16))  # (N, M)
            np.save(d / "semantic.npy", codes[0] % 7)  # (N,)
        (d / "index.json").write_text(json.dumps(index))
        shards.append(dict(name=name, split=split, files=len(lengths), frames=offset))
        splits[split][0] += len(lengths)
        splits[split][1] += offset
    manifest = dict(
        format_version=fmt, sample_rate=24000, frame_rate=75, hop_length=320, num_codebooks=K, codebook_size=V,
        n_mels=M, codec="tiny", bandwidth=1.5, skipped=[], shards=shards,
        splits={s: dict(files=f, frames=n, seconds=n / 75) for s, (f, n) in splits.items()},
    )  # fmt: skip
    if fmt == 2:
        manifest.update(streams=["codes", "mel", "semantic"], mel_dtype="float16")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(params=[1, 2], ids=["format1", "format2"])
def ds_dir(tmp_path, request) -> Path:
    """Every reader test runs on both layouts: the same values must come back."""
    return make_dataset(tmp_path / "ds", request.param)


def expected(file_id: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = np.arange(start, start + n)
    codes = torch.tensor(np.stack([code_value(file_id, t, k) for k in range(K)]), dtype=torch.int64)
    mel = torch.tensor(np.stack([mel_value(file_id, t, m) for m in range(M)]), dtype=torch.float32)
    return codes, mel


def test_files_and_properties(ds_dir):
    ds = PreparedDataset(ds_dir, "train")
    assert (ds.num_codebooks, ds.codebook_size, ds.n_mels, ds.frame_rate, ds.sample_rate) == (
        K,
        V,
        M,
        75,
        24000,
    )
    assert [f["frames"] for f in ds.files] == [10, 3, 25]
    assert [(f["shard"], f["offset"]) for f in ds.files] == [
        ("train-00000", 0),
        ("train-00000", 10),
        ("train-00001", 0),
    ]
    assert [f["path"] for f in ds.files] == ["/audio/f0.wav", "/audio/f1.wav", "/audio/f2.wav"]
    assert ds.total_frames == 38
    val = PreparedDataset(ds_dir, "val")
    assert [f["path"] for f in val.files] == ["/audio/f3.wav"] and val.total_frames == 7


def test_crop_and_file_arrays_are_aligned(ds_dir):
    ds = PreparedDataset(ds_dir, "train")
    codes, mel = ds.crop(1, 1, 2)  # crosses nothing, second file of a shard: offset must be applied
    assert codes.dtype == torch.int64 and mel.dtype == torch.float32
    assert codes.shape == (K, 2) and mel.shape == (M, 2)
    exp_c, exp_m = expected(1, 1, 2)
    assert torch.equal(codes, exp_c) and torch.equal(mel, exp_m)
    for i, fid in enumerate((0, 1, 2)):
        c, m = ds.file_arrays(i)
        exp_c, exp_m = expected(fid, 0, ds.files[i]["frames"])
        assert torch.equal(c, exp_c) and torch.equal(m, exp_m)
    c, m = ds.crop(2, 20, 5)
    assert torch.equal(c, expected(2, 20, 5)[0]) and torch.equal(m, expected(2, 20, 5)[1])
    c.add_(1)  # returned tensors are private copies, the memmapped file is untouched
    assert torch.equal(ds.crop(2, 20, 5)[0], expected(2, 20, 5)[0])


def test_crop_bounds(ds_dir):
    ds = PreparedDataset(ds_dir, "train")
    with pytest.raises(ValueError, match="outside file"):
        ds.crop(1, 2, 2)  # file 1 has 3 frames
    with pytest.raises(ValueError, match="outside file"):
        ds.crop(0, -1, 2)
    with pytest.raises(IndexError):
        ds.crop(3, 0, 1)


def test_random_crop(ds_dir):
    ds = PreparedDataset(ds_dir, "train", frames=8)
    draws = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        codes, mel = ds.random_crop(gen)
        assert codes.shape == (K, 8) and mel.shape == (M, 8)
        # recover (file, start) from the values; codes and mel must agree
        fid, start = int(mel[0, 0]) // 64, int(mel[0, 0]) % 64
        assert torch.equal(codes, expected(fid, start, 8)[0]) and torch.equal(mel, expected(fid, start, 8)[1])
        draws.append((fid, start))
    files = [f for f, _ in draws]
    assert 1 not in files  # 3 frames < 8: never picked
    # valid starts: file 0 has 3, file 2 has 18 -> P(file 0) = 3/21
    assert 0.08 < files.count(0) / len(files) < 0.22
    assert {s for f, s in draws if f == 0} == {0, 1, 2}
    assert {s for f, s in draws if f == 2} == set(range(18))  # uniform start, every start reachable
    # deterministic given the generator
    a = ds.random_crop(torch.Generator().manual_seed(5))
    b = ds.random_crop(torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_random_crop_errors(ds_dir):
    with pytest.raises(ValueError, match="longest has 25"):
        PreparedDataset(ds_dir, "train", frames=26).random_crop(torch.Generator())
    with pytest.raises(ValueError, match="frames=N"):
        PreparedDataset(ds_dir, "train").random_crop(torch.Generator())
    with pytest.raises(ValueError, match="frames"):
        PreparedDataset(ds_dir, "train", frames=0)


def test_map_style_tiling(ds_dir):
    ds = PreparedDataset(ds_dir, "train", frames=4)
    # file 0 (10 frames): starts 0, 4; file 1 (3): none; file 2 (25): 0, 4, ..., 20
    want = [(0, 0), (0, 4)] + [(2, s) for s in range(0, 21, 4)]
    assert len(ds) == len(want)
    for j, (fid, start) in enumerate(want):
        codes, mel = ds[j]
        assert torch.equal(codes, expected(fid, start, 4)[0]) and torch.equal(mel, expected(fid, start, 4)[1])
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    whole = PreparedDataset(ds_dir, "train")  # frames=None: an item is a whole file
    assert len(whole) == 3 and whole[1][0].shape == (K, 3)


def test_pickle_and_dataloader(ds_dir):
    ds = PreparedDataset(ds_dir, "train", frames=4)
    ds[0]  # opens memmaps in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {}  # memmaps are reopened lazily, not pickled
    assert torch.equal(clone[3][1], ds[3][1])
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False))
    assert batches[0][0].shape == (3, K, 4) and batches[0][1].shape == (3, M, 4)
    assert sum(b[0].shape[0] for b in batches) == len(ds)


def test_validation_errors(tmp_path, ds_dir):
    with pytest.raises(ValueError, match="not a prepared dataset"):
        PreparedDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        PreparedDataset(ds_dir, "test")
    manifest = json.loads((ds_dir / "manifest.json").read_text())

    bad = tmp_path / "v2"
    shutil.copytree(ds_dir, bad)
    (bad / "manifest.json").write_text(json.dumps(dict(manifest, format_version=3)))
    with pytest.raises(ValueError, match="format_version 3"):
        PreparedDataset(bad)

    short = tmp_path / "short"
    shutil.copytree(ds_dir, short)
    if manifest["format_version"] == 1:
        np.save(short / "shards" / "train-00001" / "mel.npy", np.zeros((M, 24), np.float32))
        shapes = r"\(4, 24\), expected \(4, 25\)"
    else:
        np.save(short / "shards" / "train-00001" / "mel.npy", np.zeros((24, M), np.float16))
        shapes = r"\(24, 4\), expected \(25, 4\)"
    with pytest.raises(ValueError, match=rf"broken shard train-00001: mel.npy has shape {shapes}"):
        PreparedDataset(short)

    gone = tmp_path / "gone"
    shutil.copytree(ds_dir, gone)
    shutil.rmtree(gone / "shards" / "val-00000")
    with pytest.raises(ValueError, match="broken shard val-00000: index.json is missing"):
        PreparedDataset(gone, "val")
    PreparedDataset(gone, "train")  # the other split is still readable

    broken = tmp_path / "broken"
    shutil.copytree(ds_dir, broken)
    (broken / "shards" / "val-00000" / "codes.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(ValueError, match="broken shard val-00000: codes.npy has no valid .npy header"):
        PreparedDataset(broken, "val")


def test_code_ids_out_of_range_are_rejected_at_open(tmp_path, ds_dir):
    # the model's forward no longer checks the range (a host sync per step): the dataset does
    for value, shown in ((V, rf"min \d+, max {V}\)"), (-1, r"min -1, max ")):
        bad = tmp_path / f"bad{value}"
        shutil.copytree(ds_dir, bad)
        path = bad / "shards" / "train-00001" / "codes.npy"
        codes = np.load(path)
        codes[(1, 7) if codes.shape[0] == K else (7, 1)] = value  # format 1 (K, N), format 2 (N, K)
        np.save(path, codes)
        with pytest.raises(
            ValueError, match=rf"train-00001: codes.npy holds codes outside \[0, {V}\) \({shown}"
        ):
            PreparedDataset(bad, "train")
        PreparedDataset(bad, "val")  # other shards open as before


def test_unlisted_and_tmp_shards_are_ignored(ds_dir):
    # a shard dir renamed into place but not yet in the manifest, and a .tmp- dir, are invisible
    shutil.copytree(ds_dir / "shards" / "train-00001", ds_dir / "shards" / "train-00002")
    shutil.copytree(ds_dir / "shards" / "train-00001", ds_dir / "shards" / ".tmp-train-00003-1")
    (ds_dir / "shards" / ".tmp-train-00003-1" / "mel.npy").write_bytes(b"half")
    assert PreparedDataset(ds_dir, "train").total_frames == 38


def test_several_directories_read_as_one(tmp_path, tiny_codec_dir):
    import soundfile as sf

    from whispergpt.data.prepare import prepare

    dirs = []
    for name, freq in (("speech", 220.0), ("music", 330.0)):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        for i in range(3):
            t = np.arange(24000 + 320 * i) / 24000
            sf.write(
                src / f"{i}.wav", (0.3 * np.sin(2 * np.pi * freq * (i + 1) * t)).astype(np.float32), 24000
            )
        out = tmp_path / name
        prepare([src], out, codec=str(tiny_codec_dir), bandwidth=1.5, val_fraction=0.0, progress=False)
        dirs.append(out)
    a, b = (PreparedDataset(d, "train", frames=20) for d in dirs)
    both = PreparedDataset(dirs, "train", frames=20)
    assert len(both.files) == len(a.files) + len(b.files)
    assert both.total_frames == a.total_frames + b.total_frames
    assert len(both) == len(a) + len(b)
    for j in range(len(b.files)):  # files of the second folder read from that folder's shards
        for x, y in zip(both.file_arrays(len(a.files) + j), b.file_arrays(j)):
            assert torch.equal(x, y)
    other = tmp_path / "other"
    prepare(
        [tmp_path / "src-music"],
        other,
        codec=str(tiny_codec_dir),
        bandwidth=3.0,
        val_fraction=0.0,
        progress=False,
    )
    with pytest.raises(ValueError, match="num_codebooks"):
        PreparedDataset([dirs[0], other], "train")
    with pytest.raises(ValueError, match="at least one"):
        PreparedDataset([], "train")


def test_decoded_mel_is_log_mel_of_decoded_codes(tmp_path, tiny_codec, tiny_codec_dir):
    import soundfile as sf

    from whispergpt.audio import log_mel
    from whispergpt.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    t = np.arange(30 * 320) / 24000
    sf.write(src / "a.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 24000)
    out = tmp_path / "ds"
    prepare([src], out, codec=str(tiny_codec_dir), bandwidth=1.5, val_fraction=0.0, progress=False)
    truth = PreparedDataset(out, "train")
    decoded = PreparedDataset(out, "train", mel_source="decoded")
    codes, mel_t = truth.file_arrays(0)
    codes_d, mel_d = decoded.file_arrays(0)
    assert torch.equal(codes, codes_d)
    # float16 on disk: rounding error <= 4.9e-4 for |mel| < 2
    torch.testing.assert_close(mel_d, log_mel(tiny_codec.decode(codes[None]))[0], rtol=0, atol=1e-3)
    assert (mel_d - mel_t).abs().mean() > 1e-2  # the random codec is lossy: a different mel
    with pytest.raises(ValueError, match="mel_source"):
        PreparedDataset(out, "train", mel_source="oracle")
    plain = tmp_path / "plain"
    prepare(
        [src],
        plain,
        codec=str(tiny_codec_dir),
        bandwidth=1.5,
        val_fraction=0.0,
        progress=False,
        decoded_mel=False,
    )
    with pytest.raises(InputError, match=r"no 'mel_decoded' stream \(mel_source decoded\).*--no-decoded-mel"):
        PreparedDataset(plain, "train", mel_source="decoded")
