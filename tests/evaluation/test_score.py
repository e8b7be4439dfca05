import json

import numpy as np
import pytest

from whispergpt.audio import save_audio
from whispergpt.cli.score import main
from whispergpt.evaluation import clips
from whispergpt.evaluation.score import score

SR = 24000


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Many small ops: one thread is several times faster than two on a shared, loaded CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tone(f: float, seconds: float, seed: int, noise: float = 0.02) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * f * t) + noise * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    """10 continuation/reference pairs (a semitone apart), an unreadable file, a 16 kHz reference."""
    d = tmp_path_factory.mktemp("gen")
    for i in range(10):
        save_audio(d / f"p{i:02d}_continuation.wav", _tone(200 + 25 * i, 1.2, i))
        save_audio(d / f"p{i:02d}_reference.wav", _tone(200 + 25 * i * 1.06, 1.2, 100 + i))
    (d / "broken.wav").write_bytes(b"RIFF not really")
    save_audio(d / "x16k_reference.wav", _tone(300, 1.2, 7)[: int(1.2 * 16000)], sample_rate=16000)
    return d


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import torch

    from whispergpt.models import WhisperGPT, WhisperGPTConfig

    torch.manual_seed(0)
    cfg = WhisperGPTConfig(num_codebooks=2, codebook_size=1024, pattern="delay", fusion="concat", d_model=32,
                           n_layers=1, n_heads=2, context=48, mel_dim=8, mel_layers=1, mel_heads=2)  # fmt: skip
    d = tmp_path_factory.mktemp("ckpt") / "final"
    WhisperGPT(cfg).save_pretrained(d)
    return d


def test_score_is_deterministic_and_writes_outputs(gen_dir, tiny_codec_dir, tiny_ckpt, tmp_path, capsys):
    args = [str(gen_dir), "--codec", str(tiny_codec_dir), "--bootstrap", "50", "--seed", "1"]
    args += ["--checkpoint", str(tiny_ckpt), "--judge", str(tiny_ckpt)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "score.json").read_text()
    assert a == (tmp_path / "b" / "score.json").read_text()
    assert (tmp_path / "a" / "score.png").stat().st_size > 0
    assert "How to read this" in (tmp_path / "a" / "score.md").read_text()
    r = json.loads(a)
    assert r["counts"] == dict(generated=10, reference=11, pairs=10)
    assert [s["file"].endswith("broken.wav") for s in r["skipped"]] == [True]
    assert r["resampled"][0]["sample_rate"] == 16000
    assert r["distribution"]["fd"]["value"] is None and "needs >=" in r["distribution"]["fd"]["reason"]
    assert r["distribution"]["mmd"]["value"] is not None
    assert r["paired"]["mel_distance"]["n"] == 10 and len(r["paired"]["mel_distance_curve"]["value"]) == 2
    assert 0 < r["paired"]["f0_median_diff_semitones"]["value"] < 2  # ~1 semitone apart
    nll = r["nll"]["checkpoint"]
    assert nll["reason"] is None and np.log(1024) * 0.8 < nll["generated"]["value"] < np.log(1024) * 1.3
    assert nll["generated"]["tokens"] == 10 * 90 * 2  # 1.2 s = 90 frames, K=2, all continuation
    judge = r["nll"]["judge"]["generated"]  # the same model as judge (its own bootstrap stream)
    assert (judge["value"], judge["per_codebook"]) == (
        nll["generated"]["value"],
        nll["generated"]["per_codebook"],
    )
    assert r["tokens"]["num_codebooks"] == 8  # the codec at its default 6 kbps


def test_identical_folders_score_perfectly(tmp_path, tiny_codec_dir):
    for i in range(3):
        w = _tone(220 + 40 * i, 1.0, i)
        save_audio(tmp_path / "gen" / f"c{i}.wav", w)
        save_audio(tmp_path / "ref" / f"c{i}.wav", w)
    r = score(tmp_path / "gen", tmp_path / "ref", codec=str(tiny_codec_dir), n_boot=20)
    assert r["paired"]["mel_distance"]["value"] == 0.0
    assert r["paired"]["chroma_similarity"]["value"] == pytest.approx(1.0)
    assert r["paired"]["loudness_correlation"]["value"] == pytest.approx(1.0)
    assert r["distribution"]["mmd"]["value"] is None  # 3 < MIN_N, with a reason
    assert r["distribution"]["mmd"]["reason"]


def test_empty_or_unreadable_folders_are_errors(tmp_path, tiny_codec_dir, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        score(tmp_path / "empty", codec=str(tiny_codec_dir))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.wav").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable generated audio"):
        score(tmp_path / "bad", codec=str(tiny_codec_dir))
    from whispergpt.cli import main as cli_main

    assert cli_main(["score", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_pairing_rule_and_prompt_boundaries(tmp_path):
    g, ref = tmp_path / "g", tmp_path / "r"
    # the sampler's layout: full clip + its continuation; the prompt is 0.4 s = 30 frames
    full = _tone(300, 1.4, 0)
    save_audio(g / "sample_0.wav", full)
    save_audio(g / "sample_0_continuation.wav", full[int(0.4 * SR) :])
    # continuation + reference in one folder
    save_audio(g / "sub" / "q_continuation.wav", _tone(300, 1.0, 1))
    save_audio(g / "sub" / "q_reference.wav", _tone(300, 1.0, 2))
    # a plain file with a generation.json boundary, paired through --reference
    save_audio(g / "h" / "y.wav", _tone(300, 1.0, 3))
    (g / "h" / "generation.json").write_text(json.dumps({"prompt_frames": 15}))
    save_audio(ref / "h" / "y.wav", _tone(300, 1.0, 4))
    save_audio(ref / "other.wav", _tone(300, 1.0, 5))
    sets = clips.discover(g, ref)
    by_key = {c.key: c for c in sets.generated}
    assert sorted(by_key) == ["h/y", "sample_0", "sub/q"]
    assert by_key["sample_0"].start == 30 and by_key["sample_0"].reference is None
    assert by_key["sub/q"].start == 0 and by_key["sub/q"].reference.path.name == "q_reference.wav"
    assert by_key["h/y"].start == 15 and by_key["h/y"].reference.start == 15
    assert sorted(r.key for r in sets.references) == ["h/y", "other", "sub/q"]


def test_checkpoint_and_judge_take_hub_ids(gen_dir, tiny_codec_dir, tiny_ckpt, tmp_path, local_hub):
    """--checkpoint / --judge org/name: read from the (offline) Hub cache, the same NLL as the folder."""
    local_hub.publish(tiny_ckpt, "org/judge")
    args = [str(gen_dir), "--codec", str(tiny_codec_dir), "--bootstrap", "20", "--seed", "1"]
    assert (
        main([*args, "--checkpoint", str(tiny_ckpt), "--judge", "org/judge", "--out", str(tmp_path / "s")])
        == 0
    )
    r = json.loads((tmp_path / "s" / "score.json").read_text())
    assert "models--org--judge" in r["nll"]["judge"]["checkpoint"] and r["nll"]["judge"]["reason"] is None
    assert r["nll"]["judge"]["generated"]["value"] == r["nll"]["checkpoint"]["generated"]["value"]
