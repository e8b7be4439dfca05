"""``whispergpt sample`` (whispergpt.inference.pipeline): outputs, codec choice, errors before any work,
--help, and the old import paths of the names that left whispergpt.inference.generate."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.cli.sample import build_parser, main
from whispergpt.models import WhisperGPT, WhisperGPTConfig


def tiny_model(pattern="coarse", context=32, K=2, V=1024) -> WhisperGPT:
    torch.manual_seed(0)
    cfg = WhisperGPTConfig(
        num_codebooks=K, codebook_size=V, n_mels=80, pattern=pattern, fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2,
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "model"
    tiny_model("delay", context=32).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    p = tmp_path_factory.mktemp("wav") / "prompt.wav"
    t = np.arange(int(0.2 * 16000)) / 16000  # 0.2 s at 16 kHz: resampled on load
    sf.write(p, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)
    return p


def test_cli_writes_wavs_png_json(tmp_path, ckpt_dir, tiny_codec_dir, prompt_wav):
    out = tmp_path / "out"
    rc = main([
        "--checkpoint", str(ckpt_dir), "--codec", str(tiny_codec_dir), "--prompt", str(prompt_wav),
        "--prompt-seconds", "0.1", "--seconds", "0.1", "--out", str(out), "--num-samples", "2",
        "--seed", "7", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    rec = json.loads((out / "generation.json").read_text())
    Tp, N = 7, 8  # 0.1 s -> 2400 samples -> 7 whole frames; 0.1 s -> round(7.5) = 8 frames
    assert rec["prompt_frames"] == Tp and rec["generated_frames"] == N and rec["seed"] == 7
    assert rec["codec"]["num_codebooks"] == 2 and rec["mel_source"]["prompt"] == "decoded"
    assert rec["timing"]["frames_per_s"] > 0 and rec["timing"]["real_time_factor"] > 0
    for i in range(2):
        full, sr = sf.read(out / f"sample_{i}.wav")
        cont, _ = sf.read(out / f"sample_{i}_continuation.wav")
        assert sr == SAMPLE_RATE and len(full) == (Tp + N) * HOP_LENGTH and len(cont) == N * HOP_LENGTH
        np.testing.assert_allclose(full[Tp * HOP_LENGTH :], cont)
        assert (out / f"sample_{i}.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_codec_from_training_manifest(tmp_path, tiny_codec_dir):
    """No --codec: the codec + bandwidth recorded by `prepare` (via out_dir/config.yaml -> data.dir)."""
    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"codec": str(tiny_codec_dir), "bandwidth": 1.5}))
    (run).mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": [str(data), str(data)]}}))
    tiny_model("coarse", context=16).save_pretrained(run / "final")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(run), "--seconds", "0.05", "--out", str(out), "--no-progress"]) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert rec["codec"]["source"] == "training data manifest" and rec["codec"]["bandwidth"] == 1.5
    assert rec["checkpoint"].endswith("final") and rec["prompt_frames"] == 0


def test_cli_picks_codec_bandwidth_for_model_k(tmp_path, tiny_codec_dir, capsys):
    ckpt = tmp_path / "k4"
    tiny_model("parallel", K=4, context=16).save_pretrained(ckpt)
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--codec", str(tiny_codec_dir), "--seconds", "0.03", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "3.0 kbps" in capsys.readouterr().err
    assert json.loads((out / "generation.json").read_text())["codec"]["bandwidth"] == 3.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-1"], "top_k"),
        (["--top-p", "2"], "top_p"),
        (["--num-samples", "0"], "num-samples"),
        (["--seconds", "0"], "seconds"),
        (["--prompt", "MISSING.wav"], "no such audio file"),
        (["--prompt", "BAD.wav"], "cannot decode"),
        (["--prompt", "LONG.wav"], "context"),
        (["--prompt-seconds", "1"], "needs --prompt"),
        (["--checkpoint", "NOPE"], "no such directory"),
        (["--checkpoint", "V512"], "codebook_size"),
        (["--checkpoint", "K3"], "K=3"),
    ],
)
def test_cli_errors_before_any_work(tmp_path, ckpt_dir, tiny_codec_dir, capsys, extra, message):
    (tmp_path / "BAD.wav").write_text("not audio")
    sf.write(tmp_path / "LONG.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)  # 75 > 32 frames
    if "V512" in extra:
        tiny_model("coarse", V=512, context=16).save_pretrained(tmp_path / "V512")
    if "K3" in extra:
        tiny_model("coarse", K=3, context=16).save_pretrained(tmp_path / "K3")
    local = ("MISSING.wav", "BAD.wav", "LONG.wav", "NOPE", "V512", "K3")
    extra = [str(tmp_path / a) if a in local else a for a in extra]
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt_dir), "--codec", str(tiny_codec_dir), "--seconds", "0.1", "--out", str(out)]  # fmt: skip
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err
    assert not out.exists()  # nothing written


def test_cli_codec_from_the_step_checkpoint_record(tmp_path, tiny_codec_dir):
    """A run with step checkpoints only: the record in checkpoints/step-* names the codec."""
    from whispergpt.checkpoint import TRAINER_STATE
    from whispergpt.training.record import write_training_record

    step = tmp_path / "run" / "checkpoints" / "step-0000004"
    tiny_model("coarse", context=16).save_pretrained(step)
    (step / TRAINER_STATE).write_text(json.dumps({"step": 4}))
    manifest = dict(codec=str(tiny_codec_dir), bandwidth=1.5, num_codebooks=2, codebook_size=1024,
                    n_mels=80, sample_rate=SAMPLE_RATE)  # fmt: skip
    write_training_record(step, manifest, "decoded", ["data"], 4)
    out = tmp_path / "out"
    assert (
        main(["--checkpoint", str(tmp_path / "run"), "--seconds", "0.03", "--out", str(out), "--no-progress"])
        == 0
    )
    rec = json.loads((out / "generation.json").read_text())
    assert rec["checkpoint"] == str(step) and rec["codec"]["source"] == "training data manifest"


def test_generation_json_keys_are_stable(tmp_path, ckpt_dir, tiny_codec_dir):
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(ckpt_dir),
        "--codec",
        str(tiny_codec_dir),
        "--seconds",
        "0.03",
        "--out",
        str(out),
    ]
    assert main([*argv, "--no-progress"]) == 0
    rec = json.loads((out / "generation.json").read_text())
    assert list(rec) == [
        "args", "seed", "device", "checkpoint", "model", "codec", "mel_source", "prompt_frames",
        "generated_frames", "num_samples", "reprefills", "timing", "files",
    ]  # fmt: skip
    assert set(rec["args"]) == set(vars(build_parser().parse_args(argv)))
    assert list(rec["codec"]) == ["name", "bandwidth", "num_codebooks", "source", "note"]


def test_help_has_a_usage_example(capsys):
    assert main(["--help"]) == 0  # the CLI convention: --help returns 0, never raises
    text = capsys.readouterr().out
    assert "examples:" in text and "whispergpt sample --checkpoint" in text and "--context-keep" in text


def test_cli_dispatches_to_this_module():
    from whispergpt.cli import COMMANDS

    assert COMMANDS["sample"][:2] == ("whispergpt.cli.sample", "main")


def test_cli_precision_bf16_casts_the_model(tmp_path, ckpt_dir, tiny_codec_dir):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt_dir), "--codec", str(tiny_codec_dir), "--seconds", "0.05", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--precision", "bf16", "--no-progress"]) == 0
    assert json.loads((out / "generation.json").read_text())["model"]["dtype"] == "bfloat16"
    assert main([*argv, "--no-progress"]) == 0  # auto on CPU: fp32
    assert json.loads((out / "generation.json").read_text())["model"]["dtype"] == "float32"


def test_cli_decode_dtype_and_compile_reach_generate(tmp_path, ckpt_dir, tiny_codec_dir, monkeypatch):
    import whispergpt.inference.generate as sample_mod  # what inference.api.Pipeline calls

    seen = []
    real = sample_mod.generate

    def spy(*a, **k):  # compiling is tested in tests/inference/test_framestep.py; here only the wiring
        seen.append((k["decode_dtype"], k.pop("compile")))
        return real(*a, **k)

    monkeypatch.setattr(sample_mod, "generate", spy)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt_dir), "--codec", str(tiny_codec_dir), "--seconds", "0.05", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--decode-dtype", "int8", "--compile", "--no-progress"]) == 0
    assert main([*argv, "--no-progress"]) == 0
    assert seen == [("int8", True), ("auto", False)]
    assert json.loads((out / "generation.json").read_text())["args"]["decode_dtype"] == "auto"
