"""``data.mel_source: codec_latent``: the codec's dequantised latent of each frame's tokens, read by
the mel branch. The dataset computes it from the stored codes, the sampler from the generated
tokens, with the same function (``codec.codec_latent``): both sides are equal, and it is causal."""

import pytest
import torch
from test_generate import prompt_codes

from whispergpt.codec import codec_latent
from whispergpt.config import ConfigError, load_run_config
from whispergpt.data import PreparedDataset
from whispergpt.inference.generate import generate
from whispergpt.models import WhisperGPT, WhisperGPTConfig


def latent_model(tiny_codec, pattern="delay", context=16, seed=0) -> WhisperGPT:
    torch.manual_seed(seed)
    C = tiny_codec.codebook_table().shape[-1]
    cfg = WhisperGPTConfig(
        num_codebooks=2, codebook_size=1024, n_mels=C, pattern=pattern, fusion="concat", d_model=32,
        n_layers=1, n_heads=2, context=context, mel_dim=8, mel_layers=1, mel_heads=2, mel_input="codec_latent",
    )  # fmt: skip
    return WhisperGPT(cfg).eval()


def test_codec_latent_is_the_quantizers_dequantisation(tiny_codec):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (3, 2, 9), generator=g)
    table = tiny_codec.codebook_table()
    lat = codec_latent(table, codes)  # (B, C, T)
    ref = tiny_codec.model.quantizer.decode(codes.transpose(0, 1))  # what the codec's decoder reads
    torch.testing.assert_close(lat, ref, rtol=0, atol=1e-6)
    assert torch.equal(codec_latent(table, codes[1]), lat[1])  # (K, T) -> (C, T), the dataset's shape
    # causal: frame t is a function of the tokens of frame t alone
    bumped = codes.clone()
    bumped[:, :, 5] = (bumped[:, :, 5] + 1) % 1024
    diff = (codec_latent(table, bumped) - lat).abs().amax(dim=(0, 1))
    assert diff[5] > 0 and diff[:5].eq(0).all() and diff[6:].eq(0).all()
    with pytest.raises(ValueError, match="K=2"):
        codec_latent(table, codes[:, :1])


def test_dataset_serves_the_latent_of_its_codes(tiny_dataset, tiny_codec):
    ds = PreparedDataset(tiny_dataset, "train", frames=20, mel_source="codec_latent")
    codes, lat = ds.crop(0, 3, 20)
    C = tiny_codec.codebook_table().shape[-1]
    assert lat.shape == (C, 20) and ds.n_mels == C and lat.dtype == torch.float32
    assert torch.equal(lat, codec_latent(tiny_codec.codebook_table(), codes))
    torch.testing.assert_close(
        lat, tiny_codec.model.quantizer.decode(codes[:, None]).squeeze(0), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("pattern", ["delay", "parallel", "depth"])
def test_sampler_feeds_what_training_reads(tiny_codec, tiny_dataset, pattern):
    """Train side == sample side: the fed stream is exactly codec_latent of the final tokens (the
    dataset's function), the prompt's equals the dataset crop's, and greedy tokens are the argmax of
    the training forward over (codes, latent)."""
    model = latent_model(tiny_codec, pattern, context=32)
    ds = PreparedDataset(tiny_dataset, "train", frames=6, mel_source="codec_latent")
    pc, plat = ds.crop(0, 0, 6)
    r = generate(model, tiny_codec, frames=10, prompt_codes=pc[None], temperature=0.0)
    assert r.stream_audio is None and r.timings["decoder"] == "none"
    assert torch.equal(r.fed_mel, codec_latent(tiny_codec.codebook_table(), r.codes))
    assert torch.equal(r.fed_mel[0, :, :6], plat)
    if pattern != "depth":  # depth's codebooks 1.. come from its depth transformer
        assert torch.equal(model(r.codes, r.fed_mel).logits.argmax(-1)[:, :, 6:], r.codes[:, :, 6:])
    torch.testing.assert_close(r.audio, tiny_codec.decode(r.codes))


def test_latent_sampling_long_form_and_static_agree(tiny_codec):
    """Past the context (re-prefills) and through the static step: the same tokens as the default."""
    model = latent_model(tiny_codec, "delay", context=8)
    pc = prompt_codes(tiny_codec, frames=3)
    kw = dict(frames=14, prompt_codes=pc, num_samples=2, decode_audio=False)
    a = generate(model, tiny_codec, generator=torch.Generator().manual_seed(2), **kw)
    b = generate(model, tiny_codec, generator=torch.Generator().manual_seed(2), static=True, **kw)
    assert a.reprefills > 0 and torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.fed_mel, codec_latent(tiny_codec.codebook_table(), a.codes), rtol=0, atol=0)


def test_latent_model_rejects_a_mismatched_codec_and_truth_prompt_mel(tiny_codec):
    from whispergpt.codec import Codec

    model = latent_model(tiny_codec)
    with pytest.raises(ValueError, match="codec_latent of width"):
        generate(model, Codec.random(bandwidth=1.5, tiny=False), frames=2)  # C = 128
    pc = prompt_codes(tiny_codec, frames=3)
    with pytest.raises(ValueError, match="prompt_mel"):
        generate(
            model, tiny_codec, frames=2, prompt_codes=pc, prompt_mel=torch.zeros(1, model.config.n_mels, 3)
        )


def test_config_takes_width_and_input_from_the_codec(tiny_dataset, tmp_path, tiny_codec):
    base = [f"data.dir={tiny_dataset}", f"out_dir={tmp_path}", "logging.wandb=false"]
    cfg = load_run_config("tiny.yaml", [*base, "data.mel_source=codec_latent"])
    assert cfg.model.mel_input == "codec_latent" and cfg.data.mel_source == "codec_latent"
    assert cfg.model.n_mels == tiny_codec.codebook_table().shape[-1]
    plain = load_run_config("tiny.yaml", base)
    assert plain.model.mel_input == "log_mel" and plain.model.n_mels == 80
    with pytest.raises(ConfigError, match="coarse"):
        load_run_config("tiny.yaml", [*base, "data.mel_source=codec_latent", "model.pattern=coarse"])
    with pytest.raises(ConfigError, match="mel_input"):
        load_run_config("tiny.yaml", [*base, "model.mel_input=codec_latent"])


def test_train_eval_sample_end_to_end(tiny_dataset, tmp_path):
    """A codec_latent run trains (val NLL from the computed latent), evaluates (source codec_latent)
    and samples through the Pipeline with the codec its data names."""
    from whispergpt.cli.train import main as train
    from whispergpt.evaluation.teacher_forced import evaluate
    from whispergpt.inference.api import Pipeline

    out = tmp_path / "run"
    args = [f"data.dir={tiny_dataset}", f"out_dir={out}", "logging.wandb=false", "logging.progress=false",
            "data.mel_source=codec_latent", "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1",
            "train.save_every=2", "model.context=16"]  # fmt: skip
    assert train(["tiny.yaml", *args]) == 0
    report = evaluate(
        [str(out / "final")], str(tiny_dataset), mel="codec_latent", batch_size=4
    )  # compare's call
    (entry,) = report["checkpoints"]
    assert [e["mel_source"] for e in entry["evaluations"]] == ["codec_latent"]
    assert entry["trained_mel_source"] == "codec_latent"
    pipe = Pipeline.from_pretrained(out / "final", progress=False)
    assert pipe.model.config.mel_input == "codec_latent"
    wav = pipe.generate(seconds=0.1, num_samples=1)
    assert wav.shape[-1] == 8 * 320 and torch.isfinite(wav).all()
