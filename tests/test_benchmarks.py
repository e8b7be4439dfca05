"""Benchmark harness smoke test (quick mode, no timing assertions) and the perf pass's invariants."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_train  # noqa: E402
import run as bench_run  # noqa: E402

from whispergpt.models import WhisperGPT, WhisperGPTConfig, nll_per_codebook  # noqa: E402
from whispergpt.models import patterns as pt  # noqa: E402


@pytest.mark.slow
def test_quick_mode_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_run.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["meta"]["mode"] == "quick" and res["errors"] == {}
    train = res["sections"]["train"]
    assert [r["model"] for r in train] == ["musicgen", "ours-token", "ours-hybrid"]
    for r in train:
        assert r["tokens_per_s"] > 0 and r["vs_musicgen"] > 0 and len(r["step_s_all"]) == r["repeats"]
        assert r["mfu"] is None and r["peak_mem_MiB"] is None  # CPU: not measured, not guessed
    assert train[0]["vs_musicgen"] == 1.0
    assert train[1]["params_M"] > 0 and train[2]["positions"] == train[2]["frames"] + 4 - 1  # delay, K=4
    prep = res["sections"]["prepare"]
    assert {r["model"] for r in prep} >= {"tiny-1.5kbps", "log-mel (80 bins)"}
    assert all(r["x_real_time"] > 0 for r in prep)
    md = out.with_suffix(".md").read_text()
    for text in (printed, md):
        assert "### train" in text and "### prepare" in text and "| ours-hybrid |" in text
    sampling = res["sections"]["sampling"]
    assert "### sampling" in md
    assert [(r["model"], r["batch"]) for r in sampling] == [
        (m, b) for b in (1, 8) for m in ("musicgen", "ours-token", "ours-hybrid")
    ]
    for r in sampling:
        assert r["frames_per_s"] > 0 and r["vs_musicgen"] > 0 and len(r["times_s"]) == r["repeats"]
        assert (r["overhead_pct"] is None) == (r["model"] != "ours-hybrid")
        assert r["rtf"] == pytest.approx(r["frames"] * r["batch"] / 75 / r["seconds"], rel=1e-2)
    assert [r["vs_musicgen"] for r in sampling if r["model"] == "musicgen"] == [1.0, 1.0]
    assert sampling[2]["codec"] == "Codec.random(tiny=True)" and sampling[2]["extra_ms_per_frame"] is not None


def test_bad_arguments_are_rejected(tmp_path, capsys):
    assert bench_run.main(["--quick", "--only", "train,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "--only" in capsys.readouterr().err
    assert bench_run.main(["--quick", "--repeats", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match="unknown models"):
        bench_train.run_train_benchmark(bench_train.TRAIN_SIZES["quick"], models=("gpt5",))


def test_markdown_table_cells():
    rows = [dict(bench="x", model="a", n=3, r=1.23456, big=123456.7, mem=None, ok=True, all=[1, 2])]
    rows.append(dict(bench="x", model="b", n=4, extra="e"))
    lines = bench_run.markdown_table(rows).splitlines()
    assert lines[0] == "| model | n | r | big | mem | ok | extra |"  # lists and `bench` are left out
    assert lines[2] == "| a | 3 | 1.235 | 123,457 | – | yes | – |"
    assert lines[3] == "| b | 4 | – | – | – | – | e |"


def test_flop_formula_and_matmul_params():
    m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
    assert bench_train.matmul_params(m) == 4 * 8 + 8 * 2  # embeddings, biases and norms excluded
    # 6 N per position + 12 L W P per position for each stack, times B * P positions
    got = bench_train.train_flops_per_step(100, [(2, 16), (1, 4)], batch=3, positions=5)
    assert got == 3 * 5 * (6 * 100 + 12 * 2 * 16 * 5 + 12 * 1 * 4 * 5)
    # causal halving: only the attention term is halved
    causal = bench_train.train_flops_per_step(100, [(2, 16), (1, 4)], batch=3, positions=5, causal=True)
    assert causal == 3 * 5 * (6 * 100 + 6 * 2 * 16 * 5 + 6 * 1 * 4 * 5)


def test_gpu_preset_is_gpt_100m():
    from whispergpt.config import load_recipe

    size = bench_train.TRAIN_SIZES["gpu"]
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs" / "gpt_100m.yaml")
    m, t = recipe["model"], recipe["train"]
    assert (size.d_model, size.n_layers, size.n_heads, size.frames) == (
        m["d_model"], m["n_layers"], m["n_heads"], m["context"]
    )  # fmt: skip
    assert (size.mel_dim, size.mel_heads, size.batch) == (m["mel_dim"], m["mel_heads"], t["batch_size"])


def test_musicgen_inputs_follow_the_delay_pattern():
    K, T, V = 3, 4, 10
    codes = torch.arange(K * T).view(1, K, T) % V
    ids, labels = bench_train.musicgen_inputs(codes, pad_id=V)
    placed = pt.build_step_tokens(codes, "delay", V)  # (1, K, T + K - 1)
    assert ids.shape == (K, T + K - 1) and labels.shape == (1, T + K - 1, K)
    assert torch.equal(labels[0].T, placed[0])
    assert torch.equal(ids[:, 0], torch.full((K,), V)) and torch.equal(ids[:, 1:], placed[0, :, :-1])


# -- perf pass: the cheaper paths compute exactly what the plain ones did --------------------------
@pytest.mark.parametrize("storage", [(0, 1, 2, 3), (0, 2, 1, 3), (1, 0, 2, 3)])
def test_nll_per_codebook_is_layout_independent(storage):
    """Logits whose memory is (B, T, Ks, V) or (Ks, B, T, V) give the same sums and gradients."""
    g = torch.Generator().manual_seed(0)
    B, Ks, T, V = 2, 3, 5, 7
    ref = torch.randn(B, Ks, T, V, generator=g, dtype=torch.float64).float().requires_grad_()
    codes = torch.randint(0, V, (B, Ks + 1, T), generator=g)
    inv = [storage.index(i) for i in range(4)]
    other = ref.detach().permute(*storage).contiguous().permute(*inv).requires_grad_()
    assert other.is_contiguous() == (storage == (0, 1, 2, 3))
    mask = torch.rand(B, T, generator=g) > 0.3
    for m in (None, mask):
        s1, c1 = nll_per_codebook(ref, codes, m)
        s2, c2 = nll_per_codebook(other, codes, m)
        torch.testing.assert_close(s1, s2)
        assert torch.equal(c1, c2)
        (g1,) = torch.autograd.grad(s1.sum(), ref)
        (g2,) = torch.autograd.grad(s2.sum(), other)
        torch.testing.assert_close(g1, g2)
    # and it still is the plain per-codebook cross entropy
    plain = torch.nn.functional.cross_entropy(
        ref.detach().reshape(-1, V), codes[:, :Ks].reshape(-1), reduction="none"
    )
    torch.testing.assert_close(
        s1.float(), plain.view(B, Ks, T).masked_fill(~mask[:, None], 0).sum(dim=(0, 2))
    )


# depth has no frame head: its step path is checked in tests/models/test_depth.py
@pytest.mark.parametrize("pattern", [p for p in pt.PATTERNS if p != "depth"])
def test_frame_head_matches_reverted_step_logits_and_grads(pattern):
    cfg = WhisperGPTConfig(
        num_codebooks=3, codebook_size=16, n_mels=8, pattern=pattern, fusion="concat",
        d_model=32, n_layers=1, n_heads=2, context=6, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperGPT(cfg)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (2, 3, 6), generator=g)
    mel = torch.randn(2, 8, 6, generator=g)
    fast = model(codes, mel).logits
    tokens, step_mel = pt.build_inputs(codes, mel, pattern, model.pad_id)
    slow = pt.revert_logits(model.forward_steps(tokens, step_mel), pattern, 6)
    torch.testing.assert_close(fast, slow)
    w = torch.randn(fast.shape, generator=g)
    grads_fast = torch.autograd.grad((fast * w).sum(), list(model.parameters()))
    grads_slow = torch.autograd.grad((slow * w).sum(), list(model.parameters()))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b)


# -- sampling perf pass: the fast feedback-loop paths equal the plain ones ---------------------------
@pytest.mark.parametrize("S", [320, 640, 960, 1280, 3200])
def test_mel_frame_equals_last_log_mel_frame(S):
    from whispergpt.audio import log_mel, log_mel_frame

    wave = torch.randn(3, S, generator=torch.Generator().manual_seed(S))
    torch.testing.assert_close(log_mel_frame(wave, 80), log_mel(wave, 80)[..., -1], atol=1e-5, rtol=0)


def test_streaming_decoder_frame_by_frame_equals_full_decode():
    """2 LSTM layers (explicit-cell path), dilated residual convs, transposed convs: every op kind."""
    from whispergpt.codec import Codec
    from whispergpt.inference.generate import StreamingDecoder

    codec = Codec.random(seed=1, config_overrides=dict(num_lstm_layers=2, num_residual_layers=2))
    codes = torch.randint(0, 1024, (2, 2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = codec.decode(codes)
        sd = StreamingDecoder(codec, batch=2, num_codebooks=2)
        ops, todo = [], list(sd.ops)
        while todo:
            op = todo.pop()
            ops.append(op)
            if op[0] == "res":
                todo += op[1] + ([op[2]] if op[2] else [])
            elif op[0] == "res1":  # k=1 last conv and shortcut fused into one addmm
                todo += op[1]
        kinds = {op[0] for op in ops}
        assert kinds >= {"conv", "convT2", "lstm", "elu"} and kinds & {"res", "res1"}
        assert any(op[0] == "conv" and op[4] > 1 for op in ops)  # a dilated conv
        assert any(op[0] == "lstm" and len(op[2]) == 2 for op in ops)
        parts = [sd.push(codes[:, :, :3])] + [sd.push(codes[:, :, f : f + 1]) for f in range(3, 12)]
    assert full.abs().max() > 0.1
    torch.testing.assert_close(torch.cat(parts, -1), full, atol=1e-5, rtol=0)


def test_top_k_fast_path_draws_the_filtered_distribution():
    """sample_tokens' top-k-only path: frequencies match softmax over the top-k (fixed seed)."""
    from whispergpt.inference.generate import filter_logits, sample_tokens

    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 1.0, 0.0, 1.2, -0.5]).expand(20000, 8)
    draws = sample_tokens(logits, 0.7, top_k=3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=8).float() / draws.numel()
    want = filter_logits(logits[:1] / 0.7, top_k=3).softmax(-1)[0]
    assert set(draws.unique().tolist()) == {1, 3, 6}
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


@pytest.mark.slow  # imports a second copy of the package and its codecs
def test_sampling_baseline_rows_over_two_batches(tmp_path):
    """``--baseline``: an archived copy of the package runs beside ours, paired, at every batch size
    (a name clash once broke the second batch)."""
    import shutil

    import bench_sampling

    import whispergpt

    shutil.copytree(Path(whispergpt.__file__).parent, tmp_path / "old" / "whispergpt")
    rows = bench_sampling.run_sampling_benchmark(
        quick=True,
        device="cpu",
        repeats=1,
        batches=(1, 2),
        frames=4,
        musicgen=False,
        baseline=str(tmp_path / "old"),
    )
    names = [(r["model"], r["batch"], r.get("variant")) for r in rows]
    for b in (1, 2):
        assert ("ours-token", b, "baseline") in names and ("ours-hybrid", b, "baseline") in names


def test_profile_sampling_quick_times_every_part_and_profiles_two(tmp_path):
    import profile_sampling

    assert profile_sampling.main(["--quick", "--batches", "1", "--frames", "3", "--repeats", "1",
                                  "--out", str(tmp_path / "p.json")]) == 0  # fmt: skip
    res = json.loads((tmp_path / "p.json").read_text())
    assert [r["part"] for r in res["rows"]] == ["step/token", "step/hybrid", "sample", "decode/tiny", "mel"]
    assert all(r["ms_per_frame"] > 0 for r in res["rows"])
    assert set(res["profiles"]) == {"step/token", "decode/tiny"}
    for p in res["profiles"].values():
        assert 0 < p["matmul_share"] <= 1 and p["ops_per_call"] > 1 and p["top"]


def test_gpu_check_dry_run_prints_a_plan_within_10_minutes():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    r = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    head, *parts = r.stdout.strip().splitlines()
    total = int(head.split(" s allowed")[0].rsplit(" ", 1)[1])
    assert total <= 600 and len(parts) == 8
    assert sum(int(p.split()[1].rstrip("s")) for p in parts) == total
    sampling = next(p for p in parts if "bench_sampling.py" in p)
    assert "--device cuda" in sampling and "--batches 1,8" in sampling
    assert all(v in sampling for v in ("compile", "lag1", "overlap", "codec_latent"))


def test_llm_codec_benchmark_quick_writes_its_table(tmp_path):
    import subprocess

    out = tmp_path / "llm_codec.json"
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_llm_codec.py"),
                        "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["row"] for r in rows} == {"encode", "decode", "tables", "icl episode"}
    held = [r for r in rows if r["row"] == "tables"]
    assert all(r["tensors"] == 2 for r in held)  # the word table + one embedding table for layers 2-3
    assert "| tables held (float32) |" in out.with_suffix(".md").read_text()
