"""``whispergpt eval``: tiling, hand-computed metrics, whole-split counts, mel sources, 2 processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from whispergpt.audio import SAMPLE_RATE, load_audio
from whispergpt.cli.eval import main as eval_main
from whispergpt.data import PreparedDataset
from whispergpt.evaluation import teacher_forced as ev
from whispergpt.models import WhisperGPT, WhisperGPTConfig, nll_per_codebook

REPO = Path(__file__).resolve().parents[2]
FILE_SECONDS = (0.61, 0.43, 0.29)  # 45, 32, 21 frames: distinct lengths, several windows each at context 16


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_codec_dir) -> Path:
    """A prepared set (tiny random codec, K=2) of three tone+noise files, all in split 'train'."""
    from whispergpt.data.prepare import prepare

    root = tmp_path_factory.mktemp("evalset")
    src = root / "src"
    src.mkdir()
    g = np.random.default_rng(0)
    for i, sec in enumerate(FILE_SECONDS):
        t = np.arange(int(sec * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t * (1 + t)) + 0.05 * g.standard_normal(t.size)
        sf.write(src / f"f{i}.wav", wave.astype(np.float32), SAMPLE_RATE)
    # float32 mel: the lossless-codec test compares the stored truth mel with a recomputed one exactly
    prepare([str(src)], root / "ds", str(tiny_codec_dir), bandwidth=1.5, val_fraction=0.0, progress=False,
            mel_dtype="float32")  # fmt: skip
    return root / "ds"


def make_model(root: Path, name: str, **kw) -> Path:
    cfg = dict(num_codebooks=2, codebook_size=1024, n_mels=80, d_model=32, n_layers=1, n_heads=2, context=16,
               mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(len(name))
    model = WhisperGPT(WhisperGPTConfig(**cfg))
    with torch.no_grad():  # a sharper random model, so that mel and token changes move the NLL visibly
        model.head.weight.mul_(20.0)
    d = root / name / "final"
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {
        "hybrid": make_model(root, "hybrid", pattern="coarse", fusion="concat"),
        "delay": make_model(root, "delay", pattern="delay", fusion="sum"),
        "tokens": make_model(root, "tokens", pattern="parallel", fusion="none"),
    }
    # a training curve next to one of them, as training.py writes it
    lines = [{"step": 1, "loss": 7.0}, {"step": 10, "val_nll": 6.5}, {"step": 20, "val_nll": 6.1}]
    (root / "hybrid" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


class _SingleProcess:
    """The bits of an Accelerator that ``evaluate`` uses, for one process (no accelerate state)."""

    device = torch.device("cpu")
    process_index, num_processes, is_main_process = 0, 1, True


def run_eval(checkpoints, data, **kw) -> dict:
    return ev.evaluate(
        [str(c) for c in checkpoints], str(data), split="train", accelerator=_SingleProcess(), **kw
    )


def metrics_of(report: dict) -> dict:
    return {
        (e["name"], x["mel_source"]): x["metrics"] for e in report["checkpoints"] for x in e["evaluations"]
    }


# --- tiling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames,context,overlap",
    [
        (1, 4, 0),
        (4, 4, 2),
        (5, 4, 2),
        (17, 4, 0),
        (17, 4, 3),
        (100, 16, 8),
        (33, 16, 15),
        (16, 16, 1),
        (31, 7, 6),
    ],
)
def test_tiling_scores_each_frame_once_with_enough_context(frames, context, overlap):
    windows = ev.tile_file(frames, context, overlap)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert scored == list(range(frames))  # every frame once, in order
    assert windows[0].start == 0 and windows[0].score_from == 0
    for w in windows:
        assert 0 <= w.start <= w.score_from < w.end <= frames and w.end - w.start <= context
    for prev, w in zip(windows, windows[1:]):
        assert w.start - prev.start == context - overlap  # the stride
        assert w.score_from - w.start >= overlap  # every later scored frame sees >= overlap frames


@pytest.mark.parametrize("overlap", [-1, 4, 9])
def test_tiling_rejects_bad_overlap(overlap):
    with pytest.raises(ValueError, match="overlap"):
        ev.tile_file(10, 4, overlap)


# --- hand-computed metrics -----------------------------------------------------------------------------


class KnownLogits(nn.Module):
    """Logits independent of the input: token 0 gets logit ``a``, the other V-1 tokens get 0."""

    def __init__(self, ks: int, vocab: int, a: float):
        super().__init__()
        self.ks, self.vocab, self.a = ks, vocab, a

    def forward(self, codes, mel=None):
        B, _, T = codes.shape
        logits = torch.zeros(B, self.ks, T, self.vocab)
        logits[..., 0] = self.a
        return type("Out", (), {"logits": logits})()


def test_hand_computed_nll_ppl_acc_bits():
    V, a, ks = 4, 2.0, 2
    # two files; codebook 0 is token 0 on even frames, codebook 1 is always token 3
    lengths = {0: 11, 1: 6}
    codes_of = {}
    for i, n in lengths.items():
        c = torch.full((2, n), 3, dtype=torch.long)
        c[0, ::2] = 0
        codes_of[i] = c
    windows = [w for i, n in lengths.items() for w in ev.tile_file(n, 4, 2, i)]
    totals = ev.Totals(ks)
    ev.evaluate_windows(KnownLogits(ks, V, a), codes_of, None, windows, totals, 3, torch.device("cpu"))
    m = ev.summarize_totals(totals.t, frame_rate=75)

    z = math.exp(a) + V - 1
    nll_hit, nll_miss = -math.log(math.exp(a) / z), -math.log(1 / z)
    hits = sum((n + 1) // 2 for n in lengths.values())  # token-0 frames of codebook 0: 6 + 3
    frames = sum(lengths.values())
    cb0 = (hits * nll_hit + (frames - hits) * nll_miss) / frames
    cb1 = nll_miss
    per = m["per_codebook"]
    assert per[0]["tokens"] == per[1]["tokens"] == frames and m["tokens"] == 2 * frames
    assert per[0]["nll"] == pytest.approx(cb0, rel=1e-6) and per[1]["nll"] == pytest.approx(cb1, rel=1e-6)
    assert m["nll"] == pytest.approx((cb0 + cb1) / 2, rel=1e-6)
    assert m["ppl"] == pytest.approx(math.exp(m["nll"]), rel=1e-12)
    assert per[0]["ppl"] == pytest.approx(math.exp(per[0]["nll"]), rel=1e-12)
    # argmax is always token 0: right exactly on codebook 0's token-0 frames
    assert per[0]["acc"] == pytest.approx(hits / frames) and per[1]["acc"] == 0.0
    assert m["acc"] == pytest.approx(hits / (2 * frames))
    seconds = frames / 75
    assert m["seconds"] == pytest.approx(seconds)
    assert per[1]["bits_per_second"] == pytest.approx(cb1 * frames / math.log(2) / seconds)
    assert m["bits_per_second"] == pytest.approx((cb0 + cb1) * frames / math.log(2) / seconds)


# --- the whole pipeline on a prepared set -------------------------------------------------------------


@torch.no_grad()
def brute_force_nll(model: WhisperGPT, ds: PreparedDataset) -> tuple[float, int]:
    """Stride-1 sliding windows written out by hand: frame t sits at position t of the first
    window ``[0, context)`` while t < context, else is the last frame of ``[t - context + 1, t + 1)``."""
    ctx, total, count = model.config.context, 0.0, 0
    for i in range(len(ds.files)):
        codes, mel = ds.file_arrays(i)  # (K, N), (M, N)
        n = codes.shape[1]
        first = model(codes[None, :, :ctx], mel[None, :, :ctx]).logits  # (1, Ks, min(ctx, n), V)
        s, c = nll_per_codebook(first, codes[None, :, :ctx])
        total, count = total + float(s.sum()), count + int(c.sum())
        if n > ctx:  # one window per later frame, batched: (n - ctx, K, ctx)
            wc = torch.stack([codes[:, t - ctx + 1 : t + 1] for t in range(ctx, n)])
            wm = torch.stack([mel[:, t - ctx + 1 : t + 1] for t in range(ctx, n)])
            logits = model(wc, wm).logits[:, :, -1:]  # (n - ctx, Ks, 1, V): the last frame only
            s, c = nll_per_codebook(logits, wc[:, :, -1:])
            total, count = total + float(s.sum()), count + int(c.sum())
    return total / count, count


def test_whole_split_counts_and_brute_force(dataset, checkpoints):
    ds = PreparedDataset(dataset, "train")
    frames = sum(f["frames"] for f in ds.files)
    assert frames == 45 + 32 + 21
    report = run_eval(checkpoints.values(), dataset, mel="truth", overlap=15, batch_size=5)
    m = metrics_of(report)
    assert set(m) == {("hybrid", "truth"), ("delay", "truth"), ("tokens", "n/a")}
    scored = {"hybrid": 1, "delay": 2, "tokens": 2}  # coarse scores codebook 0 only
    for (name, _), x in m.items():
        assert x["tokens"] == frames * scored[name]
        assert [p["tokens"] for p in x["per_codebook"]] == [frames] * scored[name]
        assert x["ppl"] == pytest.approx(math.exp(x["nll"]), rel=1e-12)
        assert x["seconds"] == pytest.approx(frames / 75)
    # stride 1 (overlap = context - 1) equals the hand-written sliding window
    for name in ("hybrid", "delay"):
        model = WhisperGPT.from_pretrained(checkpoints[name]).eval()
        nll, count = brute_force_nll(model, ds)
        assert count == m[(name, "truth")]["tokens"]
        assert m[(name, "truth")]["nll"] == pytest.approx(nll, rel=1e-5)
    # the report carries config, tiling, manifest, training curve
    e = report["checkpoints"][0]
    assert e["config"]["fusion"] == "concat" and e["config"]["pattern"] == "coarse"
    assert e["config"]["num_parameters"] == WhisperGPT.from_pretrained(checkpoints["hybrid"]).num_parameters()
    assert e["tiling"] == dict(context=16, overlap=15, stride=1)
    assert e["val_curve"] == [[10, 6.5], [20, 6.1]] or e["val_curve"] == [(10, 6.5), (20, 6.1)]
    assert report["data"]["frames"] == frames and report["data"]["manifest"]["num_codebooks"] == 2


def test_overlap_changes_context_not_counts(dataset, checkpoints):
    a = metrics_of(run_eval([checkpoints["delay"]], dataset, mel="truth", overlap=0))
    b = metrics_of(run_eval([checkpoints["delay"]], dataset, mel="truth", overlap=8))
    assert a[("delay", "truth")]["tokens"] == b[("delay", "truth")]["tokens"]
    assert a[("delay", "truth")]["nll"] != pytest.approx(b[("delay", "truth")]["nll"], rel=1e-6)


# --- mel sources -----------------------------------------------------------------------------------------


def test_decoded_equals_truth_for_a_lossless_codec(dataset, checkpoints, monkeypatch):
    from whispergpt.codec import Codec

    ds = PreparedDataset(dataset, "train")
    originals = {f["frames"]: load_audio(f["path"]) for f in ds.files}  # lengths are distinct
    calls = []

    def lossless_decode(self, codes):
        calls.append(tuple(codes.shape))
        wave = originals[codes.shape[-1]]
        return wave[None, : codes.shape[-1] * 320]

    monkeypatch.setattr(Codec, "decode", lossless_decode)
    report = run_eval([checkpoints["hybrid"], checkpoints["delay"]], dataset, mel="both")
    m = metrics_of(report)
    for name in ("hybrid", "delay"):
        assert m[(name, "decoded")]["tokens"] == m[(name, "truth")]["tokens"]
        assert m[(name, "decoded")]["nll"] == pytest.approx(m[(name, "truth")]["nll"], rel=1e-6)
    # coarse decodes codebook 0 only, delay all K; each file decoded once per codebook count
    assert sorted(calls) == sorted([(1, 1, n) for n in originals] + [(1, 2, n) for n in originals])
    labels = {x["mel_label"] for e in report["checkpoints"] for x in e["evaluations"]}
    assert labels == {"mel=truth (ground-truth audio)", "mel=decoded (codec-decoded tokens)"}


def test_decoded_mel_differs_for_a_lossy_codec(dataset, tiny_codec):
    ds = PreparedDataset(dataset, "train")
    codes, truth = ds.file_arrays(0)
    dec = ev.decoded_mel(tiny_codec, codes[:1], ds.n_mels)
    assert dec.shape == truth.shape
    # the random codec reconstructs poorly: its mel is far from the original's
    assert (dec - truth).abs().mean() > 0.1
    # ... and the NLL with it differs (the whole-pipeline check is in test_cli_writes_json_md_png)


@pytest.mark.parametrize("window", [1, 7, 16])
def test_decoded_mel_in_windows_equals_the_whole_file_decode(tiny_codec, window):
    # long files are decoded a window at a time (bounded memory); a 1-frame window also checks the
    # mel's left context being rebuilt across several short chunks
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (2, 40), generator=g)  # (K, T), T > window
    whole = ev.decoded_mel(tiny_codec, codes, 80, window=40)
    parts = ev.decoded_mel(tiny_codec, codes, 80, window=window)
    torch.testing.assert_close(parts, whole, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="decode window"):
        ev.decoded_mel(tiny_codec, codes, 80, window=0)


def test_decoded_needs_a_codec(dataset, checkpoints, tmp_path):
    with pytest.raises(ValueError, match="--codec"):
        run_eval([checkpoints["hybrid"]], dataset, mel="decoded", codec=str(tmp_path / "missing"))


def test_incompatible_checkpoint_is_a_clear_error(dataset, tmp_path):
    ck = make_model(tmp_path, "k4", num_codebooks=4, pattern="parallel", fusion="none")
    with pytest.raises(ValueError, match="num_codebooks=4"):
        run_eval([ck], dataset)


# --- CLI, outputs, 2 processes ----------------------------------------------------------------------------


def test_cli_writes_json_md_png(dataset, checkpoints, tmp_path, capsys):
    out = tmp_path / "rep" / "report.json"
    argv = ["--checkpoint", str(checkpoints["hybrid"]), "--checkpoint", str(checkpoints["tokens"]),
            "--data", str(dataset), "--split", "train", "--out", str(out)]  # fmt: skip
    assert eval_main(argv) == 0
    printed = capsys.readouterr().out
    assert "mel=truth (ground-truth audio)" in printed and "mel=decoded (codec-decoded tokens)" in printed
    assert "mel=n/a (token-only)" in printed
    report = json.loads(out.read_text())
    assert [len(e["evaluations"]) for e in report["checkpoints"]] == [2, 1]
    # the tiny random codec is lossy: decoded mel gives another NLL over the same tokens
    m = metrics_of(report)
    assert m[("hybrid", "decoded")]["tokens"] == m[("hybrid", "truth")]["tokens"]
    assert abs(m[("hybrid", "decoded")]["nll"] - m[("hybrid", "truth")]["nll"]) > 1e-3
    assert out.with_suffix(".md").read_text().count("| hybrid |") == 4  # 2 mel sources x (metrics, bits/s)
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert eval_main(["--checkpoint", str(tmp_path / "nope"), "--data", str(dataset)]) == 2


@pytest.mark.slow
def test_two_processes_match_one(dataset, checkpoints, tmp_path):
    ck = [checkpoints["hybrid"], checkpoints["delay"]]
    a = run_eval(ck, dataset, mel="both", batch_size=2)  # one process, in this interpreter
    out = tmp_path / "two.json"
    args = [a for c in ck for a in ("--checkpoint", str(c))] + ["--data", str(dataset), "--split", "train",
                                                                  "--batch-size", "2", "--out", str(out)]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs/accelerate/ddp_cpu.yaml"), "--num_processes", "2", "--main_process_port", "0",
              "-m", "whispergpt", "eval", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(out.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    ma, mb = metrics_of(a), metrics_of(b)
    assert set(ma) == set(mb) and len(ma) == 4
    for key in ma:
        assert ma[key]["tokens"] == mb[key]["tokens"]
        for field in ("nll", "ppl", "acc", "bits_per_second"):
            assert ma[key][field] == pytest.approx(mb[key][field], rel=1e-6), (key, field)
        for pa, pb in zip(ma[key]["per_codebook"], mb[key]["per_codebook"]):
            assert pa["nll"] == pytest.approx(pb["nll"], rel=1e-6) and pa["tokens"] == pb["tokens"]


# --- compare ---------------------------------------------------------------------------------------------


def test_compare_runs_get_the_same_tokens(dataset):
    from whispergpt.config import resolve_config
    from whispergpt.experiments.compare import RECIPES, run_config

    for scale in ("tiny", "paper"):
        used = set()
        for _, recipe in RECIPES:
            raw = run_config(recipe, str(dataset), Path("/tmp/x"), scale, 100_000, 2, ["train.lr=1e-3"])
            cfg = resolve_config(raw)
            t = cfg.train
            used.add(t.max_steps * t.batch_size * 2 * cfg.data.frames)
            assert cfg.model.num_codebooks == 2 and t.lr == 1e-3 and t.grad_accum == 1
            assert t.max_steps * t.batch_size * 2 * cfg.data.frames >= 100_000
        assert len(used) == 1, (scale, used)
    gpt_l = resolve_config(run_config("paper_gpt_l", str(dataset), Path("/tmp/x"), "paper", None, 1, []))
    assert (gpt_l.model.d_model, gpt_l.model.n_layers, gpt_l.model.context) == (512, 12, 512)
    tiny = resolve_config(run_config("paper_hybrid", str(dataset), Path("/tmp/x"), "tiny", None, 1, []))
    assert (tiny.model.d_model, tiny.model.mel_dim, tiny.model.context, tiny.model.fusion) == (
        64,
        16,
        64,
        "concat",
    )


@pytest.mark.slow
def test_compare_end_to_end_tiny(tmp_path, tiny_codec_dir, capsys):
    """Two steps per run on a 4-file set (used as both 'speech' and 'music'), then resumed."""
    from whispergpt.cli.compare import main as compare_main
    from whispergpt.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        t = np.arange(int((0.3 + 0.05 * i) * SAMPLE_RATE)) / SAMPLE_RATE
        sf.write(
            src / f"f{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), SAMPLE_RATE
        )
    prepare([str(src)], tmp_path / "ds", str(tiny_codec_dir), bandwidth=1.5, val_fraction=0.5, progress=False)
    argv = ["--speech", str(tmp_path / "ds"), "--music", str(tmp_path / "ds"), "--out", str(tmp_path / "cmp"),
            "--tokens", str(2 * 8 * 16), "--prompts", "2", "--prompt-seconds", "0.1", "--seconds", "0.1",
            "model.context=16", "train.batch_size=4", "train.eval_every=0", "train.save_every=4"]  # fmt: skip
    assert compare_main(argv) == 0
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {(r["model"], r["mel_source"]): r for r in summary["rows"]}
    assert set(rows) == {("GPT-S", "n/a"), ("GPT-L", "n/a"), ("hybrid", "truth"), ("hybrid", "decoded")}
    for r in rows.values():
        assert r["speech"]["nll"] == pytest.approx(r["music"]["nll"])  # same data, same seed
    cfgs = [
        yaml_load(tmp_path / "cmp" / "speech" / rec / "config.yaml")
        for rec in ("paper_gpt_s", "paper_hybrid")
    ]
    assert [(c["train"]["max_steps"], c["train"]["batch_size"], c["data"]["frames"]) for c in cfgs] == [
        (4, 4, 16)
    ] * 2
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "mel=decoded (codec-decoded tokens)" in table and "| GPT-L |" in table
    # every model continued the same held-out prompts, scored under one judge (GPT-L)
    assert "| metric | GPT-S | GPT-L | hybrid | differs |" in table and "NLL under the judge" in table
    prompts = {
        rec: [(p["file"], p["start"]) for p in json.loads(
            (tmp_path / "cmp" / "speech" / "heldout" / rec / "generation.json").read_text())["prompts"]]
        for rec in ("paper_gpt_s", "paper_gpt_l", "paper_hybrid")
    }  # fmt: skip
    assert len(set(map(tuple, prompts.values()))) == 1 and len(prompts["paper_gpt_s"]) == 2
    scored = json.loads((tmp_path / "cmp" / "speech" / "score" / "paper_hybrid" / "score.json").read_text())
    assert scored["counts"]["pairs"] == 2 and scored["nll"]["judge"]["checkpoint"].endswith(
        "paper_gpt_l/final"
    )
    capsys.readouterr()
    assert compare_main(argv) == 0  # resumed: nothing trained or evaluated again
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["timings_s"] == {}


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
