"""``sample --semantic-lm``: the three-stage sampler (semantic LM -> acoustic model conditioned on its
tokens -> fine stage) to WAV + generation.json, and exit 2 naming both sides for every stage mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.cli.sample import main
from whispergpt.data import read_manifest
from whispergpt.models import (
    FineConfig,
    FineModel,
    SemanticLM,
    SemanticLMConfig,
    WhisperGPT,
    WhisperGPTConfig,
)
from whispergpt.training.record import write_training_record


def acoustic_model(semantic="aligned", vocab=6, rate=25, pattern="coarse") -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=80, pattern=pattern, fusion="concat", d_model=32, n_layers=1,
        n_heads=2, context=48, mel_dim=8, mel_layers=1, mel_heads=2, semantic=semantic,
        semantic_vocab=vocab if semantic != "none" else None, semantic_rate=rate,
    )  # fmt: skip
    return WhisperGPT(cfg)


def semantic_lm(clusters=6, rate=25, context=16) -> SemanticLM:
    torch.manual_seed(1)
    return SemanticLM(
        SemanticLMConfig(clusters=clusters, rate=rate, d_model=32, n_layers=1, n_heads=2, context=context)
    )


def save(model, d, manifest, **changes):
    model.save_pretrained(d)
    m = dict(manifest)
    tok = changes.pop("tokenizer", None)
    if tok is not None:  # the manifest keeps the tokenizer folder under "semantic", the rest apart
        m["semantic"] = tok.pop("dir", m["semantic"])
        m["semantic_tokenizer"] = dict(m["semantic_tokenizer"], **tok)
    m.update(changes)
    write_training_record(d, m, "truth", ["data"], 1)
    return d


@pytest.fixture(scope="module")
def stages(tmp_path_factory, semantic_dataset):
    root = tmp_path_factory.mktemp("stages")
    manifest = read_manifest(semantic_dataset)
    torch.manual_seed(2)
    fine = FineModel(
        FineConfig(num_codebooks=2, codebook_size=1024, d_model=32, n_layers=1, n_heads=2, context=16)
    )
    return dict(
        root=root,
        manifest=manifest,
        acoustic=save(acoustic_model(), root / "acoustic", manifest),
        prefix=save(acoustic_model("prefix"), root / "acoustic-prefix", manifest),
        semantic=save(semantic_lm(), root / "semantic", manifest),
        fine=save(fine, root / "fine", manifest),
        plain=save(acoustic_model("none"), root / "plain", manifest),
    )


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    p = tmp_path_factory.mktemp("wav") / "prompt.wav"
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(p, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), SAMPLE_RATE)
    return p


def test_three_stages_to_wav_and_record(tmp_path, stages, prompt_wav, semantic_tokenizer):
    out = tmp_path / "out"
    argv = ["--semantic-lm", str(stages["semantic"]), "--checkpoint", str(stages["acoustic"]), "--fine",
            str(stages["fine"]), "--prompt", str(prompt_wav), "--prompt-seconds", "0.2", "--seconds", "1.2",
            "--num-samples", "2", "--seed", "5", "--semantic-temperature", "0.8", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "generation.json").read_text())
    Tp, N = 15, 90  # 0.2 s = 15 frames, a whole number of 3-frame semantic tokens; 1.2 s = 90 frames
    assert rec["prompt_frames"] == Tp and rec["generated_frames"] == N
    wav, sr = sf.read(out / "sample_1.wav")
    assert sr == SAMPLE_RATE and len(wav) == (Tp + N) * HOP_LENGTH
    sem = rec["semantic"]
    assert sem["checkpoint"] == str(stages["semantic"]) and sem["tokenizer"] == str(
        semantic_tokenizer.resolve()
    )
    assert (sem["prompt_tokens"], sem["generated_tokens"]) == (5, 30) and sem[
        "reprefills"
    ] >= 1  # past context 16
    assert sem["temperature"] == 0.8 and sem["seed"] == 5
    assert [s["stage"] for s in rec["stages"]] == ["semantic", "acoustic", "fine"]
    assert [s["checkpoint"] for s in rec["stages"]] == [
        str(stages[k]) for k in ("semantic", "acoustic", "fine")
    ]
    assert all(s["seed"] == 5 for s in rec["stages"]) and rec["stages"][1]["semantic"] == "aligned"
    for key in ("tokenize_s", "semantic_s", "generate_s", "end_to_end_real_time_factor"):
        assert rec["timing"][key] > 0, key
    # the same seed gives the same audio; the semantic stage's settings move it
    again = tmp_path / "again"
    assert main([*argv[:-3], "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(sf.read(again / "sample_1.wav")[0], wav)
    other = tmp_path / "other"
    assert main([*argv[:-3], "--out", str(other), "--no-progress", "--semantic-temperature", "0"]) == 0
    assert not np.array_equal(sf.read(other / "sample_1.wav")[0], wav)


def test_unconditional_and_prefix_models(tmp_path, stages, prompt_wav):
    out = tmp_path / "uncond"
    assert main(["--semantic-lm", str(stages["semantic"]), "--checkpoint", str(stages["prefix"]), "--seconds", "0.4",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    rec = json.loads((out / "generation.json").read_text())
    assert rec["prompt_frames"] == 0 and rec["semantic"]["prompt_tokens"] == 0
    assert rec["semantic"]["generated_tokens"] == 10 and rec["timing"]["tokenize_s"] == 0
    # a prompt of 0.21 s (15.75 frames) is cut to 15 frames: whole semantic tokens
    out = tmp_path / "cut"
    assert main(["--semantic-lm", str(stages["semantic"]), "--checkpoint", str(stages["prefix"]), "--seconds", "0.2",
                 "--prompt", str(prompt_wav), "--prompt-seconds", "0.22", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((out / "generation.json").read_text())["prompt_frames"] == 15


@pytest.mark.parametrize(
    "kind, words",
    [
        ("clusters", ["clusters", "7 clusters", "6 clusters"]),
        ("rate", ["(rate)", "at 15 Hz", "at 25 Hz"]),
        ("tokenizer", ["tokenizer folder", "/elsewhere/tok"]),
        ("codec", ["codecs differ", "@ 3.0 kbps", "@ 1.5 kbps"]),
        ("frame_rate", ["frame rates differ", "50 frames/s", "75 frames/s"]),
        ("not_lm", ["expects a 'semantic-lm' model", "'whispergpt' model"]),
        ("plain", ["model.semantic: none", "--semantic-lm"]),
        ("missing", ["needs a semantic LM", "model.semantic: aligned", "--semantic-lm"]),
    ],
)
def test_stage_mismatches_exit_2_naming_both_sides(tmp_path, stages, capsys, kind, words):
    m, acoustic, bad = stages["manifest"], stages["acoustic"], tmp_path / f"bad-{kind}"
    if kind == "clusters":
        save(semantic_lm(clusters=7), bad, m, tokenizer=dict(clusters=7))
    elif kind == "rate":
        save(semantic_lm(rate=15), bad, m, tokenizer=dict(rate=15))
    elif kind == "tokenizer":
        save(semantic_lm(), bad, m, tokenizer=dict(dir="/elsewhere/tok"))
    elif kind == "codec":
        save(semantic_lm(), bad, m, bandwidth=3.0)
    elif kind == "frame_rate":
        save(semantic_lm(), bad, m, frame_rate=50)
    elif kind == "not_lm":
        save(acoustic_model("none"), bad, m)
    else:
        bad = stages["semantic"]
    if kind == "plain":
        acoustic = stages["plain"]
    out = tmp_path / "out"
    argv = ["--checkpoint", str(acoustic), "--seconds", "0.1", "--out", str(out)]
    if kind != "missing":
        argv += ["--semantic-lm", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    if kind not in ("not_lm", "missing"):  # both checkpoints named
        assert str(acoustic) in err and str(bad) in err, err
    assert not out.exists()


def test_the_prompt_tokenizer_is_found_or_named(tmp_path, stages, prompt_wav, semantic_tokenizer, capsys):
    m = stages["manifest"]
    gone = tmp_path / "gone"
    lm = save(semantic_lm(), tmp_path / "lm", m, tokenizer=dict(dir=str(gone)))
    acoustic = save(acoustic_model(), tmp_path / "ac", m, tokenizer=dict(dir=str(gone)))
    argv = ["--semantic-lm", str(lm), "--checkpoint", str(acoustic), "--prompt", str(prompt_wav), "--seconds", "0.1",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "tokenizer folder the training record names is gone" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--semantic-tokenizer", str(semantic_tokenizer)]) == 0
    assert "is not the folder" in capsys.readouterr().err
    rec = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert rec["semantic"]["tokenizer"] == str(semantic_tokenizer)


def test_heldout_prompts_through_the_three_stages(tmp_path, stages, semantic_dataset):
    out = tmp_path / "heldout"
    argv = ["--semantic-lm", str(stages["semantic"]), "--checkpoint", str(stages["acoustic"]), "--fine",
            str(stages["fine"]), "--data", str(semantic_dataset), "--num-prompts", "3", "--batch-size", "2",
            "--prompt-seconds", "0.5", "--seconds", "0.4", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert rec["prompt_frames"] == 36 and rec["generated_frames"] == 30  # round(37.5) = 38 -> 12 whole tokens
    assert [s["stage"] for s in rec["stages"]] == ["semantic", "acoustic", "fine"]
    sem = rec["semantic"]
    assert sem["calls"] == 2 and sem["tokens_generated_total"] == 3 * 10 and sem["prompt_tokens"] == 12
    wav, _ = sf.read(out / "prompt_002.wav")
    assert len(wav) == (36 + 30) * HOP_LENGTH and (out / "prompt_002_reference.wav").is_file()
