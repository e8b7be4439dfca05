"""Named streams on real ``prepare`` output: order, shapes and dtypes; the latent and the coarse-decoded
mel against the codec; float16 mel precision; missing-stream errors; ``data.mel_source: auto`` per
pattern (with the old-dataset fallback); the training record; the coarse sampler's fed mel equals
what prepare stores. (Both shard layouts on hand-built values: tests/data/test_data.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_data import make_dataset  # a sibling module: pytest puts tests/data on sys.path

from whispergpt.audio import load_audio, log_mel
from whispergpt.config import ConfigError, load_run_config
from whispergpt.data import PreparedDataset
from whispergpt.data.dataset import verify_dataset
from whispergpt.data.prepare import prepare
from whispergpt.data.streams import STREAMS, FileWork
from whispergpt.data.summary import summarize
from whispergpt.errors import InputError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SR, M = 24000, 16
FP16_ATOL = 2.0**-11 * 2  # float16 rounding of |x| < 2 (the normalised log-mel lies in about [-1.5, 2])


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # batched vs one-by-one codec calls agree to the last bit on one thread (see test_prepare)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream-src")
    rng = np.random.default_rng(0)
    for i in range(3):
        t = np.arange(int((0.5 + 0.2 * i) * SR)) / SR
        wave = 0.3 * np.sin(2 * math.pi * (180 + 60 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(str(root / f"s{i}.wav"), wave.astype(np.float32), SR)
    return root


def run(sources: Path, out: Path, codec_dir: Path, **kw) -> dict:
    kw = dict(dict(bandwidth=1.5, n_mels=M, val_fraction=0.0, device="cpu", progress=False), **kw)
    return prepare([str(sources)], out, str(codec_dir), **kw)


@pytest.fixture(scope="module")
def full(tmp_path_factory, sources, tiny_codec_dir) -> Path:
    """Every built-in stream, mel in float32 (exact comparisons)."""
    out = tmp_path_factory.mktemp("streams") / "ds"
    run(sources, out, tiny_codec_dir, latent=True, mel_dtype="float32")
    return out


def test_manifest_lists_streams_and_items_follow_the_requested_order(full, tiny_codec):
    m = json.loads((full / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["mel_dtype"] == "float32"
    assert m["streams"] == ["codes", "mel", "mel_decoded", "mel_decoded_coarse", "latent"]
    C = m["latent_dim"]
    assert C == tiny_codec.latent(torch.zeros(1, 320)).shape[1]
    ds = PreparedDataset(full, "train", frames=20, streams=("latent", "codes", "mel"))
    lat, codes, mel = ds.random_crop(torch.Generator().manual_seed(0))
    assert (lat.shape, lat.dtype) == ((C, 20), torch.float32)
    assert (codes.shape, codes.dtype) == ((2, 20), torch.int64)
    assert (mel.shape, mel.dtype) == ((M, 20), torch.float32)
    assert lat.stride() == (1, C) and codes.stride() == (1, 2)  # views of time-major memory
    # the default is today's pair, and any order returns the same arrays
    c2, m2 = PreparedDataset(full, "train").file_arrays(1)
    m3, c3 = PreparedDataset(full, "train", streams=("mel", "codes")).file_arrays(1)
    assert torch.equal(c2, c3) and torch.equal(m2, m3)
    # time-major on disk: (N, K), (N, M), (N, C)
    sdir = full / "shards" / m["shards"][0]["name"]
    N = m["shards"][0]["frames"]
    assert np.load(sdir / "codes.npy", mmap_mode="r").shape == (N, 2)
    assert np.load(sdir / "latent.npy", mmap_mode="r").shape == (N, C)


def test_latent_equals_codec_latent_and_quantizes_to_the_codes(full, tiny_codec):
    ds = PreparedDataset(full, "train", streams=("codes", "latent"))
    for i, f in enumerate(ds.files):
        codes, lat = ds.file_arrays(i)
        ref = tiny_codec.latent(load_audio(f["path"])[None])[0]  # (C, T)
        torch.testing.assert_close(lat, ref, rtol=0, atol=1e-4)  # batched (padded) vs alone
        assert torch.equal(tiny_codec.quantize(lat[None])[0], codes)


def test_coarse_decoded_mel_is_the_mel_of_codebook_0_alone(full, tiny_codec):
    coarse = PreparedDataset(full, "train", mel_source="decoded_coarse")
    decoded = PreparedDataset(full, "train", mel_source="decoded")
    for i in range(len(coarse.files)):
        codes, mel_c = coarse.file_arrays(i)
        _, mel_d = decoded.file_arrays(i)
        want = log_mel(tiny_codec.decode(codes[None, :1]), n_mels=M)[0]  # (M, T)
        torch.testing.assert_close(mel_c, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            mel_d, log_mel(tiny_codec.decode(codes[None]), n_mels=M)[0], rtol=0, atol=1e-5
        )
        assert (mel_c - mel_d).abs().max() > 100 * 1e-5  # codebook 1 matters: a different mel


def test_float16_mel_round_trip(full, sources, tiny_codec_dir, tmp_path):
    half = tmp_path / "half"
    m = run(sources, half, tiny_codec_dir)  # the default
    assert m["mel_dtype"] == "float16" and "latent" not in m["streams"]
    name = m["shards"][0]["name"]
    for stream in ("mel", "mel_decoded", "mel_decoded_coarse"):
        f16 = np.load(half / "shards" / name / f"{stream}.npy", mmap_mode="r")
        f32 = np.load(full / "shards" / name / f"{stream}.npy", mmap_mode="r")
        assert f16.dtype == np.float16 and f32.dtype == np.float32
        assert (half / "shards" / name / f"{stream}.npy").stat().st_size < 0.55 * (
            full / "shards" / name / f"{stream}.npy"
        ).stat().st_size
        assert np.abs(f32).max() < 2  # the bound below assumes it
        err = np.abs(f16.astype(np.float32) - f32).max()
        assert 0 < err <= FP16_ATOL, err  # really rounded, and within half a float16 step
    for src in ("truth", "decoded", "decoded_coarse"):
        a = PreparedDataset(half, "train", mel_source=src).file_arrays(0)[1]
        b = PreparedDataset(full, "train", mel_source=src).file_arrays(0)[1]
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=FP16_ATOL)
    with pytest.raises(ValueError, match="mel_dtype"):
        run(sources, tmp_path / "bad", tiny_codec_dir, mel_dtype="bfloat16")


def test_missing_streams_name_the_prepare_flag(sources, tiny_codec_dir, tmp_path):
    plain = tmp_path / "plain"
    m = run(sources, plain, tiny_codec_dir, decoded_mel=False)
    assert m["streams"] == ["codes", "mel"]
    with pytest.raises(InputError, match=r"no 'latent' stream.*prepare --latent"):
        PreparedDataset(plain, "train", streams=("codes", "latent"))
    with pytest.raises(InputError, match=r"no 'semantic' stream.*prepare --semantic"):
        PreparedDataset(plain, "train", streams=("semantic",))
    with pytest.raises(InputError, match=r"no 'mel_decoded_coarse' stream \(mel_source decoded_coarse\)"):
        PreparedDataset(plain, "train", mel_source="decoded_coarse")
    with pytest.raises(ValueError, match=r"unknown streams \['pitch'\]"):
        PreparedDataset(plain, "train", streams=("codes", "pitch"))
    with pytest.raises(ValueError, match="mel_source"):
        PreparedDataset(plain, "train", mel_source="coarse")


def test_cli_flags_choose_the_streams(sources, tiny_codec_dir, tmp_path, capsys):
    from whispergpt.cli import main as cli

    out = tmp_path / "ds"
    args = ["prepare", str(sources), "--out", str(out), "--codec", str(tiny_codec_dir), "--bandwidth", "1.5",
            "--n-mels", str(M), "--val-fraction", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli([*args, "--no-coarse-mel", "--latent", "--mel-dtype", "float32"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["streams"] == ["codes", "mel", "mel_decoded", "latent"] and m["mel_dtype"] == "float32"
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all codebooks stored, codebook 0 alone not stored" in text and "latent" in text
    assert cli([*args, "--latent", "--mel-dtype", "float32"]) == 2  # resuming with other streams
    assert "decoded_coarse_mel: False there, True now" in capsys.readouterr().err


def test_semantic_stream_is_read_per_frame(tmp_path):
    ds_dir = make_dataset(tmp_path / "ds", fmt=2)  # stores semantic (N,) int16 = codes[0] % 7
    ds = PreparedDataset(ds_dir, "train", frames=5, streams=("semantic", "codes"))
    sem, codes = ds[2]
    assert sem.shape == (5,) and sem.dtype == torch.int64
    assert torch.equal(sem, codes[0] % 7)


def test_format1_dataset_is_read_but_not_extended(sources, tiny_codec_dir, tmp_path):
    old = make_dataset(tmp_path / "old", fmt=1)
    codes, mel = PreparedDataset(old, "train").crop(2, 3, 4)
    assert codes.shape == (3, 4) and mel.dtype == torch.float32
    with pytest.raises(InputError, match="no 'latent' stream"):
        PreparedDataset(old, "train", streams=("latent",))
    with pytest.raises(ValueError, match="format-1 dataset.*new --out"):
        run(sources, old, tiny_codec_dir)
    # inspect and verify read it too
    assert verify_dataset(old) == ([], 3)
    text = summarize(old)
    assert "format       1 (channel-major" in text and "streams codes, mel;" in text
    np.save(old / "shards" / "val-00000" / "mel.npy", np.zeros((4, 7), np.float16))
    assert verify_dataset(old)[0] == [("val-00000", "mel.npy has dtype float16, expected float32")]


# -- data.mel_source ----------------------------------------------------------------------------
def resolve(data_dir: Path, tmp_path: Path, *extra: str):
    return load_run_config(
        TINY, [f"data.dir={data_dir}", f"out_dir={tmp_path / 'run'}", *extra]
    ).data.mel_source


@pytest.mark.parametrize(
    "extra, expected",
    [
        ((), "decoded"),  # delay (tiny.yaml) samples every codebook
        (("model.pattern=parallel",), "decoded"),
        (("model.pattern=coarse",), "decoded_coarse"),  # coarse samples codebook 0: its decoded mel
        (("model.pattern=coarse", "model.fusion=none"), "truth"),  # token-only: no mel read
        (("model.pattern=coarse", "data.mel_source=truth"), "truth"),
    ],
)
def test_auto_mel_source_per_pattern(tiny_dataset, tmp_path, extra, expected, capsys):
    assert resolve(tiny_dataset, tmp_path, *extra) == expected
    assert "warning" not in capsys.readouterr().err


def test_auto_mel_source_on_an_old_dataset_warns_for_coarse(tmp_path, capsys):
    old = make_dataset(tmp_path / "old", fmt=1)
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(dict(m, decoded_mel=True)))  # format 1: no coarse mel
    assert resolve(old, tmp_path, "model.pattern=delay") == "decoded"
    assert capsys.readouterr().err == ""
    assert resolve(old, tmp_path, "model.pattern=coarse") == "truth"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoded from codebook 0" in err[0] and "prepare the data again" in err[0]


def test_mismatched_decoded_mel_sources_are_errors(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="decoded_coarse is the mel of codebook 0 alone"):
        resolve(tiny_dataset, tmp_path, "model.pattern=delay", "data.mel_source=decoded_coarse")
    with pytest.raises(ConfigError, match="use decoded_coarse"):
        resolve(tiny_dataset, tmp_path, "model.pattern=coarse", "data.mel_source=decoded")


def test_coarse_training_records_the_coarse_decoded_mel(tiny_dataset, tmp_path):
    from whispergpt.cli.train import main

    out = tmp_path / "run"
    args = [f"data.dir={tiny_dataset}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false",
            "model.pattern=coarse", "train.max_steps=1", "train.save_every=1", "train.eval_batches=1"]  # fmt: skip
    assert main([str(TINY), *args]) == 0
    rec = json.loads((out / "final" / "training_data.json").read_text())
    assert rec["mel_source"] == "decoded_coarse"


# -- the sampler feeds back what prepare stores ---------------------------------------------------
def test_coarse_sampler_feeds_the_stored_coarse_mel(tiny_codec):
    """A coarse model's fed mel (the feedback loop, codebook 0 decoded incrementally) equals what
    prepare's ``mel_decoded_coarse`` writer computes from the same codes, whatever codebook 1 holds."""
    from whispergpt.inference.generate import generate
    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=80, pattern="coarse", fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=64, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    model = WhisperGPT(cfg).eval()
    t = torch.arange(4 * 320) / SR
    prompt = tiny_codec.encode((0.3 * torch.sin(2 * math.pi * 220 * t))[None])  # (1, 2, 4)
    r = generate(
        model, tiny_codec, frames=36, prompt_codes=prompt, generator=torch.Generator().manual_seed(3)
    )
    assert r.codes.shape == (1, 1, 40)  # codebook 0 only
    junk = torch.randint(0, 1024, (1, 40), generator=torch.Generator().manual_seed(1))
    codes = torch.cat([r.codes[0], junk])  # (2, T): what a dataset would hold
    settings = dict(n_mels=80)
    work = FileWork("x", torch.zeros(40 * 320), codes, None, tiny_codec, settings, 1500, 150)
    stored = torch.from_numpy(STREAMS["mel_decoded_coarse"].writer(work)).T  # (M, T)
    torch.testing.assert_close(r.fed_mel[0], stored, rtol=0, atol=1e-3)  # MEL_ATOL of test_generate
    full = torch.from_numpy(STREAMS["mel_decoded"].writer(work)).T
    assert (r.fed_mel[0] - full).abs().max() > 10 * 1e-3  # not the all-codebook mel


# -- the benchmarks' datasets ---------------------------------------------------------------------
def _bench(name: str):
    import importlib
    import sys

    bench = str(REPO / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def test_loader_benchmark_layouts_hold_the_same_values(tmp_path):
    """bench_loader compares layouts: each must read back the same crops (fp16: to its rounding)."""
    bl = _bench("bench_loader")
    dss = {}
    for layout in bl.LAYOUTS:
        bl.write_dataset(tmp_path / layout, layout, hours=0.01, K=4, M=8, shard_seconds=20.0)
        dss[layout] = PreparedDataset(tmp_path / layout, "train", frames=30)
    ref = dss["format1-fp32"]
    assert len(ref.files) > 1 and len({f["shard"] for f in ref.files}) > 1
    for layout, ds in dss.items():
        for seed in range(5):
            (c, m), (rc, rm) = (d.random_crop(torch.Generator().manual_seed(seed)) for d in (ds, ref))
            assert torch.equal(c, rc), layout
            torch.testing.assert_close(m, rm, rtol=2.0**-11, atol=0)  # float16: relative rounding


@pytest.mark.slow
def test_trainer_loop_benchmark_runs(tmp_path):
    bt = _bench("bench_train")
    rows = bt.run_trainer_benchmark(bt.TRAIN_SIZES["quick"], steps=2, warmup=1, workdir=str(tmp_path))
    assert [r["what"].split()[0] for r in rows] == ["bare", "Trainer.run"]
    assert rows[1]["tokens_per_s"] > 0 and len(rows[1]["tokens_per_s_all"]) == 2 and rows[1]["steps"] == 3
