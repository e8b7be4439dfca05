"""``prepare`` sources beyond files: Hugging Face datasets (save_to_disk, a hub id from the local
cache, streaming) and JSON-lines / CSV manifests. Everything is built here from generated WAVs."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_prepare import by_key, run_prepare, tone, write

from whispergpt.cli import main as cli_main
from whispergpt.data import PreparedDataset
from whispergpt.data.sources import HFOptions

try:
    import datasets
except ImportError:  # the `hf` extra: manifests are tested without it
    datasets = None
needs_hf = pytest.mark.skipif(datasets is None, reason="needs `pip install 'whispergpt[hf]'`")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # codes are compared bit for bit (see test_prepare.single_thread)
    yield
    torch.set_num_threads(n)


def entries(out: Path) -> dict[str, dict]:
    return {e["path"]: e for d in sorted((out / "shards").iterdir()) for e in json.loads((d / "index.json").read_text())}  # fmt: skip


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("wavs")
    return [write(root / f"w{i}.wav", tone(0.4 + 0.1 * i, 150 + 30 * i, seed=i)) for i in range(5)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, wavs) -> Path:
    """A save_to_disk dataset: an Audio column (bytes embedded by save_to_disk), an id and a text column."""
    table = {"audio": [str(p) for p in wavs], "id": [f"utt{i}" for i in range(5)], "text": list("abcde")}
    ds = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    out = tmp_path_factory.mktemp("hf") / "ds"
    ds.save_to_disk(str(out))
    return out


@needs_hf
def test_dataset_folder_prepares_the_codes_of_its_files(tmp_path, hf_folder, wavs, tiny_codec_dir):
    ref = by_key(
        run_prepare(wavs, tmp_path / "files", tiny_codec_dir, val_fraction=0.0) and tmp_path / "files"
    )
    run_prepare([hf_folder], tmp_path / "hf", tiny_codec_dir, val_fraction=0.0, hf=HFOptions(id_column="id"))
    got = by_key(tmp_path / "hf")
    assert sorted(got) == [f"utt{i}" for i in range(5)]
    for i, p in enumerate(wavs):  # decoded from the embedded bytes by our loader: the same audio
        np.testing.assert_array_equal(got[f"utt{i}"][1], ref[str(p.resolve())][1])
        np.testing.assert_array_equal(got[f"utt{i}"][2], ref[str(p.resolve())][2])
    assert entries(tmp_path / "hf")["utt2"]["meta"] == {"text": "c"}


@needs_hf
def test_rows_without_id_column_are_keyed_by_fingerprint_and_resume(
    tmp_path, hf_folder, tiny_codec_dir, capsys
):
    fp = json.loads((hf_folder / "state.json").read_text())["_fingerprint"]
    m = run_prepare([hf_folder], tmp_path / "ds", tiny_codec_dir, val_fraction=0.4)
    got = by_key(tmp_path / "ds")
    assert sorted(got) == sorted(f"{fp}:{i}" for i in range(5))
    assert sorted(s for s, _, _ in got.values()) == ["train"] * 3 + ["val"] * 2
    capsys.readouterr()
    m2 = run_prepare([hf_folder], tmp_path / "ds", tiny_codec_dir, val_fraction=0.4)
    assert "(5 already done, 0 to encode)" in capsys.readouterr().out and m2["shards"] == m["shards"]


@needs_hf
def test_undecodable_row_is_skipped_with_its_id(tmp_path, wavs, tiny_codec_dir):
    rows = [{"bytes": Path(p).read_bytes(), "path": None} for p in wavs[:2]] + [
        {"bytes": b"not audio", "path": None}
    ]
    ds = datasets.Dataset.from_dict({"audio": rows, "key": ["a", "b", "bad"]}).cast_column(
        "audio", datasets.Audio()
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    m = run_prepare(
        [tmp_path / "hf"], tmp_path / "ds", tiny_codec_dir, val_fraction=0.0, hf=HFOptions(id_column="key")
    )
    assert m["splits"]["train"]["files"] == 2
    assert [s["path"] for s in m["skipped"]] == ["bad"] and "cannot decode audio" in m["skipped"][0]["reason"]


@needs_hf
def test_array_column_rows_are_resampled_and_bad_ones_skipped(tmp_path, wavs, tiny_codec_dir):
    import soundfile as sf

    from whispergpt.audio import resample

    data, sr = sf.read(str(wavs[2]), dtype="float32")
    data16 = resample(data, sr, 16000)  # a 16 kHz column: resampled to 24 kHz on the way in
    rows = [
        dict(array=data16, sampling_rate=16000),
        dict(array=np.full(800, np.nan, np.float32), sampling_rate=16000),
    ]
    datasets.Dataset.from_dict({"audio": rows, "id": ["ok", "nan"]}).save_to_disk(str(tmp_path / "hf"))
    m = run_prepare(
        [tmp_path / "hf"], tmp_path / "ds", tiny_codec_dir, val_fraction=0.0, hf=HFOptions(id_column="id")
    )
    assert [s["path"] for s in m["skipped"]] == ["nan"] and "non-finite" in m["skipped"][0]["reason"]
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.files[0]["frames"] == resample(data16, 16000, sr).shape[-1] // 320 == data.shape[-1] // 320


@needs_hf
def test_dataset_without_audio_column_exits_2_naming_its_columns(tmp_path, tiny_codec_dir, capsys):
    datasets.Dataset.from_dict({"sound": ["x.wav"], "id": ["a"]}).save_to_disk(str(tmp_path / "hf"))
    args = ["prepare", str(tmp_path / "hf"), "--out", str(tmp_path / "ds"), "--codec", str(tiny_codec_dir)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "no audio column 'audio'" in err and "['sound', 'id']" in err
    assert cli_main([*args, "--audio-column", "sound", "--id-column", "nope"]) == 2
    assert "no id column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()  # refused before any work


def hub_cache(tmp_path: Path, hf_folder: Path, repo: str) -> Path:
    """Put ``hf_folder`` into a datasets cache as ``load_dataset(repo)`` leaves it after a download."""
    parquet = tmp_path / "train.parquet"
    datasets.load_from_disk(str(hf_folder)).to_parquet(str(parquet))
    datasets.load_dataset(
        "parquet", data_files={"train": str(parquet)}, split="train", cache_dir=str(tmp_path / "pq")
    )
    built = Path(
        glob.glob(str(tmp_path / "pq" / "parquet" / "*" / "*" / "*" / "dataset_info.json"))[0]
    ).parent
    owner, name = repo.split("/")
    dst = tmp_path / "cache" / f"{owner}___{name}" / "default" / built.parts[-2] / built.parts[-1]
    shutil.copytree(built, dst)
    (dst / "parquet-train.arrow").rename(dst / f"{name}-train.arrow")
    info = json.loads((dst / "dataset_info.json").read_text())
    (dst / "dataset_info.json").write_text(
        json.dumps({**info, "config_name": "default", "dataset_name": name})
    )
    return tmp_path / "cache"


@needs_hf
def test_hub_id_from_the_local_cache_and_streaming(tmp_path, hf_folder, tiny_codec_dir, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub_cache(tmp_path, hf_folder, "tester/tiny"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    opts = HFOptions(id_column="id", split="train")
    run_prepare([hf_folder], tmp_path / "disk", tiny_codec_dir, val_fraction=0.4, hf=opts)
    run_prepare(["tester/tiny"], tmp_path / "hub", tiny_codec_dir, val_fraction=0.4, hf=opts)
    streamed = HFOptions(id_column="id", split="train", streaming=True)
    run_prepare(["tester/tiny"], tmp_path / "stream", tiny_codec_dir, val_fraction=0.4, hf=streamed)
    ref = by_key(tmp_path / "disk")
    for other in ("hub", "stream"):
        got = by_key(tmp_path / other)
        assert sorted(got) == sorted(ref)
        for k, (split, codes, mel) in ref.items():
            assert got[k][0] == split
            np.testing.assert_array_equal(got[k][1], codes)
            np.testing.assert_array_equal(got[k][2], mel)
    with pytest.raises(ValueError, match="not a loadable Hugging Face dataset"):
        run_prepare(["tester/absent"], tmp_path / "x", tiny_codec_dir)


def test_jsonl_and_csv_manifests_with_metadata(tmp_path, wavs, tiny_codec_dir):
    jl = tmp_path / "m" / "train.jsonl"
    jl.parent.mkdir()
    rel = [os.path.relpath(p, jl.parent) for p in wavs]  # relative to the manifest's folder
    jl.write_text(
        "".join(
            json.dumps({"path": r, "speaker": i % 2, "duration": 0.4 + 0.1 * i}) + "\n"
            for i, r in enumerate(rel)
        )
    )
    jl.with_name("missing.jsonl").write_text(json.dumps({"path": "nope.wav"}) + "\n")
    m = run_prepare([jl, jl.with_name("missing.jsonl")], tmp_path / "ds", tiny_codec_dir, val_fraction=0.0)
    assert m["splits"]["train"]["files"] == 5 and "is not a file" in m["skipped"][0]["reason"]
    e = entries(tmp_path / "ds")
    assert e[str(Path(wavs[3]).resolve())]["meta"] == {"speaker": 1, "duration": pytest.approx(0.7)}
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utt", "audio_filepath", "text"])
        w.writerows([f"u{i}", str(p), f"t{i}"] for i, p in enumerate(wavs))
    run_prepare(
        [tmp_path / "m.csv"],
        tmp_path / "csv",
        tiny_codec_dir,
        val_fraction=0.0,
        hf=HFOptions(id_column="utt"),
    )
    e = entries(tmp_path / "csv")
    assert sorted(e) == [f"u{i}" for i in range(5)] and e["u4"]["meta"] == {"text": "t4"}
    ref = by_key(tmp_path / "ds")
    np.testing.assert_array_equal(by_key(tmp_path / "csv")["u4"][1], ref[str(Path(wavs[4]).resolve())][1])


def test_manifest_without_path_column_exits_2_naming_its_columns(tmp_path, tiny_codec_dir, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps({"wave": "a.wav", "text": "hi"}) + "\n")
    code = cli_main(
        ["prepare", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "ds"), "--codec", str(tiny_codec_dir)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no path column" in err and "['wave', 'text']" in err


@needs_hf
def test_a_dataset_folder_and_a_jsonl_manifest_each_prepare_and_train(
    tmp_path, hf_folder, wavs, tiny_codec_dir
):
    from whispergpt.cli.train import main as train_main

    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"path": str(p), "n": i}) + "\n" for i, p in enumerate(wavs))
    )
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    for name, src in (("hf", hf_folder), ("jsonl", tmp_path / "m.jsonl")):
        data = tmp_path / name
        run_prepare([src], data, tiny_codec_dir, val_fraction=0.4)
        args = [f"data.dir={data}", f"out_dir={tmp_path / f'run-{name}'}", "logging.wandb=false",
                "logging.progress=false", "train.max_steps=2", "train.save_every=2", "train.eval_every=2",
                "train.eval_batches=1", "train.batch_size=2", "model.context=16"]  # fmt: skip
        assert train_main([str(tiny), *args]) == 0
        assert (tmp_path / f"run-{name}" / "final" / "model.safetensors").is_file()


@needs_hf
def test_dataset_dict_folder_takes_the_hf_split(tmp_path, wavs, tiny_codec_dir, capsys):
    table = lambda ps: {"audio": [str(p) for p in ps], "id": [Path(p).stem for p in ps]}  # noqa: E731
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(table(wavs[:3])), test=datasets.Dataset.from_dict(table(wavs[3:]))
    ).cast_column("audio", datasets.Audio())
    dd.save_to_disk(str(tmp_path / "dd"))
    run_prepare(
        [tmp_path / "dd"],
        tmp_path / "ds",
        tiny_codec_dir,
        val_fraction=0.0,
        hf=HFOptions("test", id_column="id"),
    )
    assert sorted(by_key(tmp_path / "ds")) == ["w3", "w4"]
    args = [
        "prepare",
        str(tmp_path / "dd"),
        "--hf-split",
        "dev",
        "--out",
        str(tmp_path / "x"),
        "--codec",
        str(tiny_codec_dir),
    ]
    assert cli_main(args) == 2
    assert "no split 'dev' (--hf-split); it has splits ['test', 'train']" in capsys.readouterr().err
