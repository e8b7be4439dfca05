"""Codec training (issue 7): trainable RVQ, export into EncodecModel, training loop, eval metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from whispergpt.audio import SAMPLE_RATE, save_audio
from whispergpt.codec import PRIME_FRAMES, Codec
from whispergpt.codec.checkpoint import latest_checkpoint
from whispergpt.codec.eval import SetMetrics, codebook_usage, mel_distance, mel_distance_sum, si_snr
from whispergpt.codec.lsuv import lsuv_init
from whispergpt.codec.rvq import ResidualVQ, export_to_encodec, nearest_code, rvq_for_encodec
from whispergpt.codec.train import train
from whispergpt.codec.trainable import CodecTrainConfig, TrainableCodec, build_encodec
from whispergpt.config import ConfigError
from whispergpt.config_io import load_config

TINY = [
    "model.num_filters=4",
    "model.hidden_size=16",
    "model.codebook_size=64",
    "model.target_bandwidths=[0.9, 1.8]",  # V=64 -> 6 bits x 75 Hz = 450 bps/codebook: K = 2 / 4
    "quantizer.kmeans_batches=2",
    "quantizer.kmeans_iters=3",
    "data.segment_seconds=0.2",
    "data.batch_size=2",
]


def tiny_cfg(*extra: str) -> CodecTrainConfig:
    return load_config(CodecTrainConfig, None, TINY + list(extra))


def tones(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f = 150.0 * 2 ** (torch.rand(n, 1, generator=g) * 3)
    return 0.4 * torch.sin(2 * math.pi * f * t) + 0.02 * torch.randn(n, t.numel(), generator=g)


def tiny_trainable(seed: int = 0) -> TrainableCodec:
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    model = build_encodec(cfg.model)
    return TrainableCodec(model, rvq_for_encodec(model, dead_threshold=0.0))


# -- RVQ -----------------------------------------------------------------------------------------


def test_straight_through_gradient_reaches_encoder():
    gen = tiny_trainable()
    gen.train()
    wave = tones(2, 0.2)
    recon, out = gen(wave, n_q=2)
    assert out.codes.shape == (2, 2, PRIME_FRAMES + 15)
    # forward value of the STE output is exactly the sum of the chosen codewords
    q = sum(gen.rvq.layers[k].embed[out.codes[:, k]] for k in range(2)).transpose(1, 2)
    torch.testing.assert_close(out.quantized.detach(), q, atol=1e-5, rtol=1e-5)
    ((recon - wave).abs().mean()).backward()
    first = gen.model.encoder.layers[0].conv
    grads = [p.grad for p in first.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the commitment loss alone also reaches the encoder
    gen.zero_grad()
    _, out = gen(wave, n_q=2)
    out.commit_loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in first.parameters() if p.grad is not None) > 0


def test_kmeans_init_and_ema_moves_codebooks_only_in_training():
    torch.manual_seed(0)
    rvq = ResidualVQ(1, 8, 2, decay=0.5, dead_threshold=0.0)
    x = torch.randn(400, 2)
    rvq.train()
    rvq(x.T[None], n_q=1)  # (1, D, T): first call runs k-means
    assert rvq.inited
    before = rvq.layers[0].embed.clone()
    shifted = (x + torch.tensor([3.0, -2.0])).T[None]
    rvq.eval()
    rvq(shifted)
    torch.testing.assert_close(rvq.layers[0].embed, before)  # eval: frozen
    err_before = (rvq.decode(rvq.encode(shifted)) - shifted).pow(2).mean()
    rvq.train()
    for _ in range(5):
        rvq(shifted)
    after = rvq.layers[0].embed
    used = rvq.layers[0].cluster_size > 0.1  # codes never hit decayed to 0.5**5 ~ 0.03
    assert int(used.sum()) > 0
    # used codes moved towards the shifted data (mean shift +3 / -2) ...
    delta = (after - before)[used].mean(0)
    assert delta[0] > 0.5 and delta[1] < -0.3, delta
    # ... so the shifted data is quantised much better than by the initial codebook
    err_after = (rvq.decode(rvq.encode(shifted)) - shifted).pow(2).mean()
    assert err_after < 0.5 * err_before, (err_before, err_after)


def test_mean_tracking_translates_all_codes_with_the_input_drift():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 512) * 0.1
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0])
    for mean_decay, expected in ((0.0, 0.0), (0.5, 0.5)):
        rvq = ResidualVQ(1, 32, 4, decay=0.99, dead_threshold=0.0, mean_decay=mean_decay)
        rvq.train()
        rvq.init_codebooks(x)
        before = rvq.layers[0].embed.clone()
        rvq(x + shift[None, :, None])
        moved = (rvq.layers[0].embed - before).median(dim=0).values  # typical code displacement
        # the batch mean moved by `shift`; tracked codes follow by (1 - mean_decay) of it
        torch.testing.assert_close(moved, expected * shift, atol=0.05, rtol=0.0)


def test_dead_codes_are_replaced_by_batch_vectors():
    torch.manual_seed(0)
    rvq = ResidualVQ(1, 16, 2, decay=0.5, dead_threshold=0.5)
    rvq.train()
    a = torch.randn(1, 2, 256) * 0.1  # cluster at the origin
    rvq.init_codebooks(a)
    # new data: two tight far clusters; the codes nearest to them are few, the rest starve and die
    b = torch.cat([torch.randn(128, 2) * 0.01 + 10.0, torch.randn(128, 2) * 0.01 - 10.0]).T[None]
    layer = rvq.layers[0]
    replaced = 0
    for _ in range(4):
        rvq(b)
        replaced += layer.last_replaced
    assert replaced > 0
    near_b = ((layer.embed.abs() - 10.0).abs() < 0.5).all(dim=1)
    assert int(near_b.sum()) >= 8, layer.embed  # dead codes now sit on current batch vectors
    # and their statistics were restarted above the threshold
    assert (layer.cluster_size[near_b] >= 0.5 * 0.5).all()


def test_export_round_trip_codes_match_encodec(tmp_path):
    gen = tiny_trainable(seed=1)
    gen.train()
    wave = tones(3, 0.4, seed=2)
    with torch.no_grad():
        gen.rvq.init_codebooks(gen.encode_latent(wave))
        for _ in range(3):  # a few EMA steps so the codebooks are not just the k-means result
            gen(wave, n_q=4)
    gen.eval()
    model = gen.export()
    for bw, K in ((0.9, 2), (1.8, 4)):
        with torch.no_grad():
            ours = gen.rvq.encode(gen.encode_latent(wave), n_q=K)[..., PRIME_FRAMES:]
        theirs = Codec(model, bandwidth=bw).encode(wave)
        assert theirs.shape == ours.shape == (3, K, 30)
        assert torch.equal(ours, theirs)
    # and through save_pretrained / Codec.from_pretrained
    model.save_pretrained(tmp_path / "c")
    loaded = Codec.from_pretrained(tmp_path / "c", bandwidth=1.8)
    assert torch.equal(loaded.encode(wave), theirs)
    assert len(set(theirs[:, 0].reshape(-1).tolist())) > 1  # codes actually vary


def test_rvq_for_encodec_copies_trained_codebooks(tiny_codec):
    rvq = rvq_for_encodec(tiny_codec.model)
    assert rvq.inited
    cb = tiny_codec.model.quantizer.layers[1].codebook
    torch.testing.assert_close(rvq.layers[1].embed, cb.embed)
    x = torch.randn(50, cb.embed.shape[1])
    assert torch.equal(nearest_code(x, rvq.layers[1].embed), cb.quantize(x))
    with pytest.raises(ValueError, match="quantizers"):
        export_to_encodec(ResidualVQ(3, 1024, 32), tiny_codec.model)


def test_lsuv_init_keeps_the_signal_alive_through_the_stack():
    """Default init: the latent is its biases plus a ~1e-3 signal; after lsuv_init every conv
    outputs unit std on real audio, the latent varies with the input and the reconstruction has
    the input's RMS."""

    def latent_signal_ratio(gen: TrainableCodec, x: torch.Tensor) -> float:
        z = gen.encode_latent(x)  # (B, D, T)
        return float(z.std(dim=-1).mean() / z.mean(dim=-1).abs().mean())

    x = tones(4, 0.4, seed=3) * 0.3
    with torch.no_grad():
        gen = tiny_trainable()
        assert latent_signal_ratio(gen, x) < 0.2
        before = lsuv_init(gen, x)
        assert min(before) < 0.3  # the default init shrinks the signal somewhere in the stack
        assert latent_signal_ratio(gen, x) > 0.5
        stds: list[float] = []
        convs = [m for m in gen.model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
        hooks = [c.register_forward_hook(lambda m, a, o: stds.append(float(o.std()))) for c in convs]
        recon, _ = gen(x, bypass=True)
        for h in hooks:
            h.remove()
    assert len(stds) == len(before)
    # the last conv targets the input RMS; the others unit std (the second pass corrects each
    # layer for the layers after it only approximately, hence the tolerance)
    rms = float(x.pow(2).mean().sqrt())
    assert stds[-1] == pytest.approx(rms, rel=0.05)
    assert all(0.7 < s < 1.4 for s in stds[:-1]), stds
    assert float(recon.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.3)


def test_lr_decay_is_linear_from_a_fixed_step():
    cfg = tiny_cfg(
        "train.max_steps=110", "train.lr=1e-3", "train.lr_decay_start=10", "train.min_lr_ratio=0.1"
    )
    lr = [cfg.train.lr_at(s) for s in (0, 9, 10, 60, 110, 500)]
    assert lr == pytest.approx([1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4])
    assert tiny_cfg("train.lr=1e-3").train.lr_at(10**6) == 1e-3  # default: constant
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        tiny_cfg("train.min_lr_ratio=2")


def test_config_rejects_wrong_hop():
    with pytest.raises(ConfigError, match="320"):
        load_config(CodecTrainConfig, None, ["model.upsampling_ratios=[8, 5, 4]"])
    with pytest.raises(ConfigError, match="segment_seconds"):
        load_config(CodecTrainConfig, None, ["data.segment_seconds=0.01"])


# -- training loop -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("codec_audio")
    for i, w in enumerate(tones(4, 1.0, seed=3)):
        save_audio(d / "music" / f"tone{i}.wav", w)
    (d / "music" / "broken.wav").write_bytes(b"not audio")  # reported and skipped
    return d


@pytest.mark.slow
def test_training_lowers_loss_checkpoints_resumes_and_exports(audio_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(
        "train.max_steps=20",
        "train.log_every=5",
        "train.ckpt_every=10",
        "train.lr=3e-3",
        "train.progress=false",
    )
    last = train(cfg, [audio_dir], out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    assert last["step"] == 20
    assert "skipping" in capsys.readouterr().err
    ck = latest_checkpoint(out)
    assert ck is not None and ck.name == "step-0000020"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    assert stored["quantizer.layers.0.codebook.embed_avg"].dtype == torch.float16  # compacted
    assert stored["quantizer.layers.0.codebook.embed"].dtype == torch.float32
    codec = Codec.from_pretrained(out, bandwidth=1.8)
    torch.testing.assert_close(
        codec.model.quantizer.layers[0].codebook.embed, stored["quantizer.layers.0.codebook.embed"]
    )
    codes = codec.encode(tones(1, 0.4))
    assert codes.shape == (1, 4, 30)
    assert codec.decode(codes).shape == (1, 30 * 320)
    # resume: continue to step 25 from the step-20 checkpoint (no repeat of earlier steps)
    cfg2 = tiny_cfg("train.max_steps=25", "train.log_every=5", "train.ckpt_every=10", "train.progress=false")
    train(cfg2, [audio_dir], out)
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [20, 25]
    assert latest_checkpoint(out).name == "step-0000025"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-0000020",
        "step-0000025",
    ]  # keep 2
    # a checkpoint whose generator was cut short (files.json says so) is moved aside: resume from 20
    gen = out / "checkpoints" / "step-0000025" / "generator.safetensors"
    gen.write_bytes(gen.read_bytes()[:-100])
    cfg3 = tiny_cfg("train.max_steps=30", "train.log_every=5", "train.ckpt_every=10", "train.progress=false")
    train(cfg3, [audio_dir], out)
    captured = capsys.readouterr()
    assert "step-0000025 failed verification: generator.safetensors has" in captured.err
    assert "resumed from" in captured.out and "(step 20)" in captured.out
    assert latest_checkpoint(out).name == "step-0000030"
    assert (out / "checkpoints" / ".bad-step-0000025").is_dir()  # kept for inspection


def test_warmup_then_frozen_encoder(audio_dir, tmp_path):
    """Warm-up trains a plain autoencoder (no codes); afterwards only decoder + codebooks move."""
    out = tmp_path / "run"
    common = ["quantizer.warmup_steps=2", "quantizer.freeze_encoder=true", "train.log_every=1"]
    train(tiny_cfg(*common, "train.max_steps=2", "train.progress=false"), [audio_dir], out)
    from safetensors.torch import load_file

    s2 = load_file(latest_checkpoint(out) / "generator.safetensors")
    assert float(s2["rvq.layers.0.inited"]) == 0.0  # no quantiser during warm-up
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("ppl_q0" not in r for r in rows)
    train(tiny_cfg(*common, "train.max_steps=4", "train.progress=false"), [audio_dir], out)
    s4 = load_file(latest_checkpoint(out) / "generator.safetensors")
    assert float(s4["rvq.layers.0.inited"]) == 1.0
    enc = [k for k in s2 if k.startswith("model.encoder.")]
    dec = [k for k in s2 if k.startswith("model.decoder.") and s2[k].is_floating_point()]
    assert enc and all(torch.equal(s2[k], s4[k]) for k in enc)
    assert any(not torch.equal(s2[k], s4[k]) for k in dec)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["ppl_q0"] > 1.0


# -- eval ----------------------------------------------------------------------------------------


def test_identity_metrics_and_known_si_snr():
    ref = tones(1, 0.5)[0]
    assert si_snr(ref, ref) == math.inf
    assert si_snr(ref, 3.0 * ref) == math.inf  # scale-invariant
    assert mel_distance(ref, ref) == 0.0
    # noise orthogonal to the (zero-mean) reference at 1/100 of its power -> exactly 20 dB
    r = ref.double() - ref.double().mean()
    n = torch.randn(r.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = n - n.mean()
    n = n - (n @ r) / (r @ r) * r
    n = n * torch.sqrt((r @ r) / (n @ n) / 100)
    assert si_snr(r, r + n) == pytest.approx(20.0, abs=1e-6)
    assert mel_distance(ref, ref + 0.1 * torch.randn(ref.numel())) > 0.01


def test_codebook_usage_entropy():
    uniform = torch.arange(64).repeat(3)[None]  # (1, N): every code equally often
    const = torch.zeros(1, 50, dtype=torch.long)
    ent, ppl = codebook_usage(torch.cat([uniform, uniform]), 64)
    assert ent == pytest.approx([6.0, 6.0]) and ppl == pytest.approx([64.0, 64.0])
    ent, ppl = codebook_usage(const, 64)
    assert ent == [0.0] and ppl == [1.0]


def test_set_metrics_pool_files_and_codebooks_of_different_lengths():
    """The one per-set accumulator of ``codec eval`` and ``scripts/measure_llm_codec.py``: mel cells
    pool over files, SI-SNR is a mean over files, each codebook's codes pool over files (codebooks
    may differ in frame count and size, as the LLM-Codec's layers do)."""
    refs = tones(2, 0.5, seed=3)
    ests = [
        r + 0.05 * torch.randn(r.numel(), generator=torch.Generator().manual_seed(i))
        for i, r in enumerate(refs)
    ]
    codes = [
        [torch.arange(10) % 4, torch.arange(20) % 16],
        [torch.zeros(5, dtype=torch.long), torch.arange(10) % 16],
    ]
    m = SetMetrics()
    for r, e, c in zip(refs, ests, codes):
        m.add(r, e, c)
    out = m.summary([4, 16])
    cells = [mel_distance_sum(r, e) for r, e in zip(refs, ests)]
    assert out["files"] == 2
    assert out["mel_distance"] == sum(s for s, _ in cells) / sum(n for _, n in cells)
    assert out["si_snr_db"] == pytest.approx(float(np.mean([si_snr(r, e) for r, e in zip(refs, ests)])))
    assert out["pesq_wb"] is None and out["stoi"] is None  # not a speech set
    for k, n in enumerate((4, 16)):
        ent, ppl = codebook_usage(torch.cat([c[k] for c in codes])[None], n)
        assert out["codebook_entropy_bits"][k] == ent[0] and out["codebook_perplexity"][k] == ppl[0]
    with pytest.raises(ValueError, match="codebooks"):
        m.add(refs[0], ests[0], codes[0][:1])
    assert SetMetrics().summary([])["files"] == 0


@pytest.mark.slow
def test_eval_cli_reports_trained_and_random_floor(tiny_codec_dir, tmp_path, capsys):
    from whispergpt.cli.codec import main

    for i, w in enumerate(tones(2, 1.0, seed=5)):
        save_audio(tmp_path / "speech" / f"s{i}.wav", w)
    save_audio(tmp_path / "music" / "m.wav", tones(1, 1.0, seed=6)[0])
    report = tmp_path / "report.json"
    rc = main(
        ["eval", str(tiny_codec_dir), str(tmp_path / "speech"), str(tmp_path / "music"), "--out", str(report)]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "| 1.5 | 2 | speech | trained |" in table and "| 1.5 | 2 | music | random |" in table
    data = json.loads(report.read_text())
    assert data["files"] == {"speech": 2, "music": 1}
    bws = [str(b) for b in data["bandwidths"]]
    assert bws[0] == "1.5"
    sp = data["results"]["trained"]["1.5"]["speech"]
    assert sp["files"] == 2 and len(sp["codebook_entropy_bits"]) == 2
    assert sp["stoi"] is not None and np.isfinite(sp["mel_distance"])
    assert data["results"]["random"]["1.5"]["music"]["pesq_wb"] is None  # PESQ/STOI only for speech


def test_eval_cli_rejects_bad_input(tiny_codec_dir, tmp_path, capsys):
    from whispergpt.cli.codec import main

    assert main(["eval", str(tiny_codec_dir), str(tmp_path / "missing.wav")]) == 2
    assert "neither a file nor a directory" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


# -- the offline default -------------------------------------------------------------------------


def test_default_codec_falls_back_offline(monkeypatch, tiny_codec_dir, capsys):
    import whispergpt.codec.codec as codec_mod

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(codec_mod, "SHIPPED_CODEC_DIR", tiny_codec_dir)
    c = Codec.from_pretrained("default", bandwidth=1.5)
    err = capsys.readouterr().err
    assert "hub unreachable: using the shipped offline codec at" in err and str(tiny_codec_dir) in err
    assert c.name == str(tiny_codec_dir) and c.num_codebooks == 2
    with pytest.raises(OSError):  # other names keep failing loudly
        Codec.from_pretrained("no-such-org/no-such-codec")


def test_shipped_offline_codec_loads_and_is_the_offline_default(monkeypatch, capsys):
    from whispergpt.codec import SHIPPED_CODEC_DIR

    assert (SHIPPED_CODEC_DIR / "config.json").is_file() and (SHIPPED_CODEC_DIR / "MODEL_CARD.md").is_file()
    size = sum(
        f.stat().st_size
        for f in SHIPPED_CODEC_DIR.iterdir()
        if f.name in ("config.json", "model.safetensors")
    )
    assert size <= 20_000_000
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = Codec.from_pretrained("default", bandwidth=3.0)
    assert "hub unreachable" in capsys.readouterr().err
    assert (c.sample_rate, c.frame_rate, c.codebook_size, c.num_codebooks) == (24000, 75, 1024, 4)
    assert [float(b) for b in c.model.config.target_bandwidths] == [1.5, 3.0, 6.0]
    assert c.model.config.use_causal_conv and not c.model.config.normalize
    codes = c.encode(tones(1, 0.2))
    assert codes.shape == (1, 4, 15) and c.decode(codes).shape == (1, 15 * 320)


def test_shipped_codec_reconstruction_follows_its_input():
    """The shipped codec's decoder uses the codes: each reconstruction is nearer (log-mel) to its
    own input than to the other input, at 1.5 and 6 kbps, and far nearer than the random floor."""
    from whispergpt.codec import SHIPPED_CODEC_DIR

    t = torch.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    g = torch.Generator().manual_seed(0)
    syllables = torch.sin(2 * math.pi * 3 * t).clamp_min(0)  # 3 Hz bursts with gaps
    low = syllables * sum(0.3 / h * torch.sin(2 * math.pi * 196.0 * h * t) for h in range(1, 6))  # G3
    low = low + 0.003 * torch.randn(t.numel(), generator=g)  # a noise floor, as in recordings
    noise = torch.randn(t.numel(), generator=g)
    high = 0.2 * (noise - torch.roll(noise, 1))  # bright, high-passed noise
    for bw in (1.5, 6.0):
        c = Codec.from_pretrained(SHIPPED_CODEC_DIR, bandwidth=bw)
        rec = {name: c.decode(c.encode(x[None]))[0] for name, x in (("low", low), ("high", high))}
        own = mel_distance(low, rec["low"]) + mel_distance(high, rec["high"])
        swapped = mel_distance(low, rec["high"]) + mel_distance(high, rec["low"])
        assert own < 0.5 * swapped, (bw, own, swapped)
    floor = Codec.random(seed=0)
    floor_own = mel_distance(low, floor.decode(floor.encode(low[None]))[0])
    assert mel_distance(low, rec["low"]) < 0.5 * floor_own
