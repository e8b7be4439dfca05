"""LLM-Codec on a tiny offline Llama + BPE tokenizer: tables, token rate, gradients, ids, save/load,
the encode/decode round trip, training through the codec trainer, and the bad-input exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from whispergpt.audio import save_audio
from whispergpt.errors import InputError
from whispergpt.llm_codec import LLMCodec, LLMCodecConfig
from whispergpt.llm_codec.tables import load_input_embeddings, load_tables, standardise_table, word_entries
from whispergpt.llm_codec.train import LLMCodecTrainable, TeacherConfig, build_codec, held_tables

REPO = Path(__file__).resolve().parents[2]
TINY = dict(channels=[4, 8, 8, 16, 16], dim=16, layers=1, heads=2)


@pytest.fixture(scope="module")
def tables(tiny_llm):
    return load_tables(tiny_llm)


def tiny_codec(tables, **kw) -> LLMCodec:
    torch.manual_seed(0)
    return build_codec(LLMCodecConfig(**{**TINY, **kw}), tables)


def tone(seconds: float, f: float = 220.0) -> torch.Tensor:
    t = torch.arange(int(seconds * 24_000)) / 24_000
    return (0.3 * torch.sin(2 * torch.pi * f * t)).float()


def test_word_table_holds_whole_words_only(tiny_llm, tables):
    tok = tables.tokenizer
    special = set(tok.all_special_ids)
    assert tables.words, "the tiny BPE has whole words"
    for word, ids in tables.words:
        assert 1 <= len(ids) <= 2 and not special.intersection(ids), word
        assert word.isalpha() and len(word) >= 2
        assert tok.decode(ids).strip() == word
    # a word list adds words of two pieces (means of their rows)
    two = [w for w in ("catmat", "sunmoon") if len(tok.encode(" " + w, add_special_tokens=False)) == 2]
    extra = dict(word_entries(tok, two))
    assert all(len(extra[w]) == 2 for w in two)
    # a word's row is the mean of its pieces' rows as read; the word table is then standardised
    raw = load_input_embeddings(tiny_llm)
    means = torch.stack([raw[ids].mean(0) for _, ids in tables.words])
    assert torch.equal(tables.word_table, standardise_table(means))


def test_tables_are_standardised_once_as_loaded_and_the_file_is_untouched(tiny_llm, tables):
    files = sorted(Path(tiny_llm).glob("*.safetensors"))
    before = [f.read_bytes() for f in files]
    raw = load_input_embeddings(tiny_llm)
    t = raw.float()
    expect = (t - t.mean(0, keepdim=True)) / (t - t.mean(0, keepdim=True)).std()  # the math, out of place
    again = load_tables(tiny_llm)
    assert torch.equal(again.embeddings, expect) and torch.equal(tables.embeddings, expect)
    assert [f.read_bytes() for f in files] == before  # standardised in memory, not in the LLM's file
    for table in (tables.embeddings, tables.word_table):
        assert table.mean(0).abs().max() < 1e-5 and float(table.std()) == pytest.approx(1.0, abs=1e-5)
    # bf16: the fp32 arithmetic, rounded once
    bf16 = load_tables(tiny_llm, dtype=torch.bfloat16).embeddings
    b = load_input_embeddings(tiny_llm, torch.bfloat16).float()
    b = b - b.mean(0, keepdim=True)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, (b / b.std()).to(torch.bfloat16))


def test_training_holds_each_table_once(tables):
    """The trainable holds the loaded (standardised) tables themselves: one word table, one
    embedding table shared by layers 2 and 3, no raw or second copy anywhere in it."""
    gen = LLMCodecTrainable(tiny_codec(tables), TeacherConfig(semantic="random", consistency="random"))
    layers = gen.codec.quantizer.layers
    assert layers[0].table is tables.word_table
    assert layers[1].table is tables.embeddings and layers[2].table is tables.embeddings
    held = held_tables(gen)
    ptr = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    assert set(held) == {ptr(tables.word_table), ptr(tables.embeddings)}
    nbytes = sum(t.numel() * t.element_size() for t in held.values())
    assert nbytes == sum(t.numel() * t.element_size() for t in (tables.word_table, tables.embeddings))
    gen.to(torch.float64)  # moving keeps one tensor for layers 2 and 3
    assert len(held_tables(gen)) == 2 and layers[1].table is layers[2].table
    assert layers[1].table.dtype == torch.float64
    with pytest.raises(ValueError, match="tables of"):
        LLMCodec(gen.codec.config).attach_tables(load_tables(tables.name, max_words=3))


def test_token_rate_and_code_shapes(tables):
    codec = tiny_codec(tables)
    assert codec.config.frame_rate == pytest.approx(24_000 / 720)
    assert codec.config.tokens_per_second() == pytest.approx(58.33, abs=0.01)  # the paper: ~57
    assert codec.config.tokens_per_second(1) == pytest.approx(8.33, abs=0.01)
    codes = codec.encode(tone(1.2)[None])  # 1.2 s = 10 frames of the slowest layer
    assert [tuple(c.shape) for c in codes] == [(1, 10), (1, 20), (1, 40)]
    assert sum(c.numel() for c in codes) == pytest.approx(1.2 * codec.config.tokens_per_second())


def test_ids_stay_inside_the_vocabulary(tables):
    codec = tiny_codec(tables)
    g = torch.Generator().manual_seed(0)
    codes = codec.encode(0.3 * torch.randn(2, 24_000, generator=g))
    vocab = tables.embeddings.shape[0]
    assert int(codes[0].max()) < len(tables.words)
    for layer in (1, 2):
        assert 0 <= int(codes[layer].min()) and int(codes[layer].max()) < vocab
    for layer, c in enumerate(codes):
        for frame in codec.llm_ids(layer, c[0]):
            assert frame and all(0 <= i < vocab for i in frame)
            assert not set(frame) & set(tables.tokenizer.all_special_ids)


def test_tables_stay_frozen_and_gradients_reach_the_encoder_and_projections(tables):
    codec = tiny_codec(tables)
    gen = LLMCodecTrainable(codec, TeacherConfig(semantic="random", consistency="random"))
    before = [layer.table.clone() for layer in codec.quantizer.layers]
    assert codec.quantizer.layers[1].table is codec.quantizer.layers[2].table  # held once
    assert not any(layer.table.requires_grad for layer in codec.quantizer.layers)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-2)
    wave = tone(0.48)[None].repeat(2, 1)
    recon, out = gen(wave)
    extra = gen.extra_losses(wave, recon, out)
    assert set(extra) == {"semantic", "consistency"}
    ((recon - wave).abs().mean() + out.commit_loss + sum(extra.values())).backward()
    grads = {n: p.grad for n, p in gen.named_parameters()}
    for name in ("codec.encoder.convs.0.weight", "codec.quantizer.layers.0.proj.weight",
                 "codec.quantizer.layers.2.proj.weight", "heads.semantic.weight", "heads.consistency.weight"):  # fmt: skip
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    opt.step()
    for b, layer in zip(before, codec.quantizer.layers):
        assert torch.equal(b, layer.table)
    assert not any("table" in n for n, _ in gen.named_parameters())
    assert not any(k.endswith(".table") for k in codec.state_dict())


def test_save_load_encodes_the_same_without_the_llm(tables, tmp_path):
    codec = tiny_codec(tables)
    wave = tone(0.96, 330.0)[None]
    codes = codec.encode(wave)
    codec.save_pretrained(tmp_path / "c")
    loaded = LLMCodec.from_pretrained(tmp_path / "c")
    assert all(layer.table is None for layer in loaded.quantizer.layers)  # the saved codebooks serve
    for a, b in zip(codes, loaded.encode(wave)):
        assert torch.equal(a, b)
    torch.testing.assert_close(loaded.decode(codes), codec.decode(codes))
    assert json.loads((tmp_path / "c" / "config.json").read_text())["llm"] == str(tables.name)


def test_learned_codebooks_ablation_has_the_same_sizes(tables):
    codec = tiny_codec(tables, codebooks="learned")
    sizes = [layer.codebook().shape[0] for layer in codec.quantizer.layers]
    assert sizes == [len(tables.words), tables.embeddings.shape[0], tables.embeddings.shape[0]]
    assert all(layer.proj is None for layer in codec.quantizer.layers)


def whispergpt(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "whispergpt", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("llm-codec-audio")
    rng = np.random.default_rng(0)
    for i in range(3):
        t = np.arange(24_000) / 24_000
        save_audio(
            d / f"a{i}.wav",
            (0.3 * np.sin(2 * np.pi * (200 + 80 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(
                np.float32
            ),
        )
    (d / "broken.wav").write_bytes(b"not audio")
    return d


@pytest.fixture(scope="module")
def trained(audio_dir, tiny_llm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llm-codec-run") / "codec"
    r = whispergpt("llm-codec", "train", str(audio_dir), "--llm", str(tiny_llm), "--out", str(out), "--config",
                   "llm_codec_tiny.yaml", "teachers.semantic=random", "teachers.consistency=random")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping" in r.stderr and "broken.wav" in r.stderr
    return out


@pytest.mark.slow
def test_trains_through_the_codec_trainer_and_resumes_exactly(trained, audio_dir, tiny_llm, tmp_path):
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(
        "semantic" in r and "consistency" in r for r in rows
    )
    assert (trained / "tokenizer").is_dir() and (
        trained / "checkpoints" / "step-0000004" / "files.json"
    ).is_file()
    cfg = LLMCodec.read_config(trained)
    assert cfg.teachers == {"semantic": "random", "consistency": "random"}
    # the same run in two halves: the weights equal the uninterrupted run's
    out = tmp_path / "halves"
    common = ["llm-codec", "train", str(audio_dir), "--llm", str(tiny_llm), "--out", str(out), "--config",
              "llm_codec_tiny.yaml", "teachers.semantic=random", "teachers.consistency=random"]  # fmt: skip
    assert whispergpt(*common, "train.max_steps=2").returncode == 0
    r = whispergpt(*common)
    assert r.returncode == 0 and "(step 2)" in r.stdout, r.stderr[-2000:]
    from safetensors.torch import load_file

    a, b = load_file(trained / "model.safetensors"), load_file(out / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_encode_decode_round_trip_through_the_cli(trained, audio_dir, tmp_path):
    jsonl = tmp_path / "enc.jsonl"
    r = whispergpt("llm-codec", "encode", str(audio_dir), "--codec", str(trained), "--out", str(jsonl))
    assert r.returncode == 0 and "3 files" in r.stdout and "1 skipped" in r.stdout, r.stderr[-2000:]
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    first = lines[0]
    assert first["tokens_per_second"] == pytest.approx(58.333, abs=1e-3)
    assert [(x["layer"], len(x["ids"])) for x in first["layers"]] == [
        (1, 9),
        (2, 18),
        (3, 36),
    ]  # 1 s, padded to 1.08 s
    assert isinstance(first["layers"][0]["text"], str) and first["layers"][0]["text"].strip()
    r = whispergpt("llm-codec", "decode", str(jsonl), "--codec", str(trained), "--out", str(tmp_path / "dec"))
    assert r.returncode == 0, r.stderr[-2000:]
    import soundfile as sf

    from whispergpt.audio import load_audio

    codec = LLMCodec.from_pretrained(trained)
    wave = load_audio(first["file"])
    expect = codec.decode(codec.encode(wave[None]), wave.shape[-1])[0]
    got, sr = sf.read(tmp_path / "dec" / f"{Path(first['file']).stem}.wav", dtype="float32")
    assert sr == 24_000 and got.shape == (wave.shape[-1],)
    # 16-bit WAV: one quantisation step, plus float32 rounding at the step's edge (seen: 1.005 steps)
    np.testing.assert_allclose(got, expect.clamp(-1, 1).numpy(), atol=1.1 / 32767)
    # layers=1 alone: only layer 1's words, the rate of layer 1
    r = whispergpt("llm-codec", "encode", str(audio_dir / "a0.wav"), "--codec", str(trained), "--layers", "1",
                   "--out", str(tmp_path / "l1.jsonl"))  # fmt: skip
    one = json.loads((tmp_path / "l1.jsonl").read_text())
    assert [x["layer"] for x in one["layers"]] == [1] and one["tokens_per_second"] == pytest.approx(
        8.333, abs=1e-3
    )


@pytest.mark.slow
def test_bad_llms_exit_2_naming_them(trained, audio_dir, other_llm, byte_llm, tmp_path):
    import shutil

    copy = tmp_path / "codec"
    shutil.copytree(trained, copy)
    r = whispergpt("llm-codec", "train", str(audio_dir), "--llm", str(other_llm), "--out", str(copy), "--config",
                   "llm_codec_tiny.yaml", "train.max_steps=6")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert LLMCodec.read_config(trained).llm in line
    assert "the codec's codebooks come from" in line and str(other_llm) in line, line
    r = whispergpt("llm-codec", "train", str(audio_dir), "--llm", str(byte_llm), "--out", str(tmp_path / "b"),
                   "--config", "llm_codec_tiny.yaml")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "no whole-word entries" in line and str(byte_llm) in line, line


def test_an_llm_path_that_is_not_a_causal_lm_is_one_line(tiny_llm, tiny_codec_dir, tmp_path):
    import shutil

    not_lm = tmp_path / "codec-with-tokenizer"  # a codec folder passed as --llm, tokenizer and all
    shutil.copytree(tiny_codec_dir, not_lm)
    for f in tiny_llm.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, not_lm / f.name)
    with pytest.raises(InputError, match="'encodec' model is not a causal LM"):
        load_tables(not_lm)
    with pytest.raises(InputError, match="no tokenizer could be loaded"):
        load_tables(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    "recipe", ["llm_codec_tiny.yaml", "llm_codec_quickstart.yaml", "llm_codec_paper.yaml"]
)
def test_shipped_recipes_resolve(recipe):
    from whispergpt.config_io import load_config
    from whispergpt.llm_codec.train import LLMCodecTrainConfig

    cfg = load_config(LLMCodecTrainConfig, recipe)
    assert cfg.model.hop == 720 and cfg.model.pools == [4, 2, 1]
    assert round(cfg.data.segment_seconds * 24_000) % cfg.model.align == 0  # whole frames of layer 1


def _mean_cosine(x: torch.Tensor) -> float:
    """Mean pairwise cosine of the rows of ``x (M, D)``."""
    n = torch.nn.functional.normalize(x, dim=-1)
    return float((n @ n.T).mean())


def test_data_init_spreads_the_latent_so_layer_1_uses_many_words(tables):
    """A fresh encoder maps every frame to nearly one direction (its conv biases), so cosine lookup
    picks one word for the whole clip; after the trainer's data-dependent init the frames differ
    and layer 1 uses many words. The projected tables are standardised: rows do not share a
    direction either."""
    g = torch.Generator().manual_seed(0)
    clips = torch.stack([tone(0.96, f) * torch.linspace(0.2, 1.0, 23_040) for f in (110, 330, 990, 2970)])
    wave = torch.cat([clips, 0.2 * torch.randn(4, 23_040, generator=g)])  # (8, S)
    trainable = LLMCodecTrainable(tiny_codec(tables), TeacherConfig())
    codec = trainable.codec

    def spread() -> tuple[float, int]:
        with torch.no_grad():
            z = codec.encoder(codec.pad(wave))  # (B, D, T)
        words = codec.encode(wave)[0].unique().numel()
        return _mean_cosine(z.transpose(1, 2).reshape(-1, z.shape[1])), words

    cos0, words0 = spread()
    assert cos0 > 0.9 and words0 <= 2, (cos0, words0)
    with torch.no_grad():
        said = trainable.data_init(wave)
    assert "data-dependent init" in said
    cos1, words1 = spread()
    assert cos1 < 0.3 and words1 >= 8, (cos1, words1)
    for layer in codec.quantizer.layers:
        assert abs(_mean_cosine(layer.codebook()[:200].detach())) < 0.1
