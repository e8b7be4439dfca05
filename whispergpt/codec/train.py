"""``whispergpt codec train``: train (or fine-tune) an EnCodec-architecture codec on your audio.

The encoder and decoder are transformers' ``EncodecModel`` modules; quantisation during training is
our ``ResidualVQ`` (EMA codebooks, straight-through estimator, quantiser dropout), exported into the
``EncodecModel`` quantiser, so ``OUT/`` is in ``save_pretrained`` layout and loads through
``Codec.from_pretrained(OUT)``.

Output directory::

    OUT/config.json, OUT/model.safetensors   # the exported EncodecModel (updated at each checkpoint)
    OUT/codec_train.yaml                     # resolved training config
    OUT/metrics.jsonl                        # one JSON line per logged step
    OUT/checkpoints/step-NNNNNNN/            # generator/discriminator safetensors, optimizer.pt, state.json

Runs as a single process or under ``accelerate launch`` (DDP; EMA statistics are all-reduced).
A run whose ``OUT/checkpoints`` holds a checkpoint resumes from the newest one (``train.resume``).
Losses: waveform L1 + multi-resolution STFT (auraloss) + causal log-mel L1 + commitment, and
optionally a multi-scale STFT discriminator (hinge) with feature matching (``loss.adversarial``).

This module holds the config, the trainable model and the loop; the discriminator is in ``losses``,
the data-dependent init in ``lsuv``, the crop sampler in ``corpus``, checkpoints/export in
``checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, log_mel
from whispergpt.codec import PRIME_FRAMES
from whispergpt.codec.checkpoint import (
    CODEC_STATE,
    _load_safetensors,
    export_codec,
    latest_checkpoint,
    save_checkpoint,
)
from whispergpt.codec.corpus import CropSampler, find_audio_files, load_corpus
from whispergpt.codec.losses import (
    MultiScaleSTFTDiscriminator,
    disc_hinge_loss,
    gen_adv_losses,
)
from whispergpt.codec.lsuv import lsuv_init, standardize_latent
from whispergpt.codec.rvq import ResidualVQ, RVQOutput, export_to_encodec, rvq_for_encodec
from whispergpt.config import dump_yaml, to_dict
from whispergpt.runtime import make_accelerator, seed_everything, write_atomic

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class CodecModelConfig:
    init: str = ""  # "" = from scratch; else a hub id or directory of a pretrained EnCodec to fine-tune
    num_filters: int = 16
    hidden_size: int = 128
    num_lstm_layers: int = 1
    num_residual_layers: int = 1
    compress: int = 2
    codebook_size: int = 1024
    target_bandwidths: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0])
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    # from scratch: rescale every conv so the signal survives the stack at init (see lsuv_init)
    lsuv_init: bool = True

    def __post_init__(self) -> None:
        if math.prod(self.upsampling_ratios) != HOP_LENGTH:
            raise ValueError(
                f"upsampling_ratios must multiply to the {HOP_LENGTH}-sample hop (75 Hz), got "
                f"{self.upsampling_ratios} (product {math.prod(self.upsampling_ratios)})"
            )
        if not self.target_bandwidths or sorted(self.target_bandwidths) != list(self.target_bandwidths):
            raise ValueError(
                f"target_bandwidths must be a non-empty increasing list, got {self.target_bandwidths}"
            )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")


@dataclass
class QuantizerConfig:
    decay: float = 0.99
    eps: float = 1e-5
    kmeans_iters: int = 10
    kmeans_batches: int = 4  # batches of encoder outputs used for the k-means initialisation
    # codes whose EMA cluster size (expected hits per step) falls below this are reset; scale it
    # with batch_size * segment frames / codebook_size
    dead_threshold: float = 0.05
    # translate all codes with a running mean of the layer input (0 = off); see EMACodebook.ema_update
    mean_decay: float = 0.0
    commitment_weight: float = 1.0
    bandwidth_dropout: bool = True  # per batch, K drawn uniformly from the target bandwidths
    # steps trained as a plain autoencoder before k-means initialises the codebooks: a random
    # encoder's outputs barely vary between frames, so codebooks fitted to them collapse to one
    # code as soon as the encoder starts to move; after warm-up the latents carry the signal
    warmup_steps: int = 0
    # after the warm-up, stop training the encoder: codebooks then quantise a fixed latent
    # distribution (EMA-tracking a moving one collapsed at our batch size); decoder and codebooks
    # keep training. Single-process only (DDP needs every parameter to get a gradient).
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"quantizer.decay must be in (0, 1), got {self.decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"quantizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.dead_threshold < 0:
            raise ValueError(f"quantizer.dead_threshold must be >= 0, got {self.dead_threshold}")


@dataclass
class LossConfig:
    l1: float = 1.0  # waveform L1
    stft: float = 1.0  # auraloss multi-resolution STFT (spectral convergence + log magnitude)
    mel: float = 1.0  # L1 between causal log-mels (whispergpt.audio.log_mel)
    stft_n_ffts: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64])  # hop n/4
    adversarial: bool = False  # multi-scale STFT discriminator (hinge) + feature matching
    adv: float = 1.0
    feat: float = 2.0
    disc_start: int = 0  # step at which the discriminator starts
    disc_filters: int = 16
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 512, 256])


@dataclass
class CodecDataConfig:
    segment_seconds: float = 1.0
    batch_size: int = 8
    min_rms: float = 1e-3  # crops quieter than this are redrawn (a few times)

    def __post_init__(self) -> None:
        frames = self.segment_seconds * SAMPLE_RATE / HOP_LENGTH
        if frames < 1 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(
                f"data.segment_seconds must be a positive multiple of {HOP_LENGTH / SAMPLE_RATE * 1000:.3f} ms "
                f"(whole 75 Hz frames), got {self.segment_seconds}"
            )
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class CodecTrainLoopConfig:
    max_steps: int = 2000
    lr: float = 3e-4
    # -1 = constant lr; else linear decay from lr (at this step) to lr * min_lr_ratio (at max_steps).
    # A fixed step rather than a fraction, so a run can be extended without changing its past.
    lr_decay_start: int = -1
    min_lr_ratio: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    num_threads: int = 0  # 0 = torch default
    resume: bool = True
    wandb: bool = False  # off by default: a CPU codec run is short and metrics.jsonl holds everything
    wandb_project: str = "whispergpt-codec"
    progress: bool = True

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if self.lr_decay_start < 0 or step < self.lr_decay_start:
            return self.lr
        frac = min(1.0, (step - self.lr_decay_start) / max(1, self.max_steps - self.lr_decay_start))
        return self.lr * (1.0 - (1.0 - self.min_lr_ratio) * frac)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_steps < 0 or self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError(
                f"train.max_steps >= 0, log_every >= 1, ckpt_every >= 1 expected, got "
                f"{self.max_steps}, {self.log_every}, {self.ckpt_every}"
            )


@dataclass
class CodecTrainConfig:
    model: CodecModelConfig = field(default_factory=CodecModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    train: CodecTrainLoopConfig = field(default_factory=CodecTrainLoopConfig)


# ---------------------------------------------------------------------------------------------
# model


def build_encodec(cfg: CodecModelConfig):
    """A fresh ``EncodecModel`` (24 kHz, causal, unnormalised) or a pretrained one to fine-tune."""
    from transformers import EncodecConfig, EncodecModel

    if cfg.init:
        from whispergpt.codec import Codec

        model = Codec.from_pretrained(cfg.init, bandwidth=float(cfg.target_bandwidths[0])).model
        model.train()
        return model
    ec = EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        use_causal_conv=True,
        num_filters=cfg.num_filters,
        hidden_size=cfg.hidden_size,
        codebook_dim=cfg.hidden_size,
        num_lstm_layers=cfg.num_lstm_layers,
        num_residual_layers=cfg.num_residual_layers,
        compress=cfg.compress,
        codebook_size=cfg.codebook_size,
        target_bandwidths=list(cfg.target_bandwidths),
        upsampling_ratios=list(cfg.upsampling_ratios),
    )
    return EncodecModel(ec)


def quantizers_per_bandwidth(model) -> list[int]:
    """K for each target bandwidth of ``model`` (e.g. [2, 4, 8] for 1.5 / 3 / 6 kbps at V=1024)."""
    q = model.quantizer
    return [int(q.get_num_quantizers_for_bandwidth(float(b))) for b in model.config.target_bandwidths]


class TrainableCodec(nn.Module):
    """EncodecModel encoder/decoder around a trainable ``ResidualVQ``.

    Like ``Codec.encode``/``decode``, the audio is primed with ``PRIME_FRAMES`` silent frames (so
    EnCodec's left reflect padding never reads real samples) and the decoder runs over the
    quantised prime too, so training sees exactly what inference through ``Codec`` does.
    """

    def __init__(self, model, rvq: ResidualVQ):
        super().__init__()
        self.model = model
        self.rvq = rvq
        self.freeze_encoder = False

    def encode_latent(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, D, PRIME_FRAMES + T) encoder output (S a multiple of 320)."""
        x = F.pad(wave, (PRIME_FRAMES * HOP_LENGTH, 0))[:, None]  # (B, 1, prime + S)
        return self.model.encoder(x)

    def forward(
        self, wave: torch.Tensor, n_q: int | None = None, bypass: bool = False
    ) -> tuple[torch.Tensor, RVQOutput]:
        """(B, S) -> reconstruction (B, S) and the RVQ output (codes include the prime frames).

        ``bypass=True`` (quantiser warm-up) decodes the continuous latents: no codes (K = 0).
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            z = self.encode_latent(wave)  # (B, D, prime + T)
        if bypass:
            out = RVQOutput(z, z.new_zeros(z.shape[0], 0, z.shape[-1], dtype=torch.long), z.new_zeros(()))
        else:
            out = self.rvq(z, n_q)
        start = PRIME_FRAMES * HOP_LENGTH
        recon = self.model.decoder(out.quantized)[:, 0, start : start + wave.shape[-1]]  # (B, S)
        return recon, out

    def export(self):
        """The ``EncodecModel`` with our codebooks written into its quantiser."""
        export_to_encodec(self.rvq, self.model)
        return self.model


# ---------------------------------------------------------------------------------------------
# training


def train(cfg: CodecTrainConfig, audio: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Train a codec on ``audio`` (files/directories) into ``out``; returns the last metrics row."""
    import auraloss
    from tqdm.auto import tqdm

    out = Path(out)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    acc = make_accelerator()
    main = acc.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"codec train: resolved config\n{dump_yaml(cfg)}", flush=True)
        write_atomic(out / "codec_train.yaml", dump_yaml(cfg))
    files = find_audio_files(audio)
    waves, skipped = load_corpus(files)
    segment = round(cfg.data.segment_seconds * SAMPLE_RATE)
    sampler = CropSampler(waves, segment, cfg.train.seed, cfg.data.min_rms)
    if main:
        print(
            f"codec train: {len(waves)} files, {sampler.seconds / 60:.1f} min of audio, {len(skipped)} skipped",
            flush=True,
        )

    seed_everything(cfg.train.seed)
    model = build_encodec(cfg.model)
    if cfg.model.init:
        cfg_m = model.config
        if list(cfg_m.target_bandwidths) != list(cfg.model.target_bandwidths):
            print(f"codec train: using the pretrained model's bandwidths {list(cfg_m.target_bandwidths)}")
    q = cfg.quantizer
    rvq = rvq_for_encodec(
        model,
        decay=q.decay,
        eps=q.eps,
        kmeans_iters=q.kmeans_iters,
        dead_threshold=q.dead_threshold,
        mean_decay=q.mean_decay,
    )
    gen = TrainableCodec(model, rvq)
    nq_choices = quantizers_per_bandwidth(model)
    disc = (
        MultiScaleSTFTDiscriminator(cfg.loss.disc_n_ffts, cfg.loss.disc_filters)
        if cfg.loss.adversarial
        else None
    )
    tc = cfg.train
    opt_g = torch.optim.AdamW(gen.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    opt_d = (
        torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        if disc is not None
        else None
    )

    start = 0
    ckpt = latest_checkpoint(out) if tc.resume else None
    if ckpt is None and not cfg.model.init:
        with torch.no_grad():
            init_wave = sampler.batch(cfg.data.batch_size, -100)
            if cfg.model.lsuv_init:
                lsuv_init(gen, init_wave)
            before, after = standardize_latent(gen, init_wave)
        if main:
            print(
                f"codec train: latent spread/mean {before:.3g} -> {after:.3g} (data-dependent init)",
                flush=True,
            )
    if ckpt is not None:
        _load_safetensors(gen, ckpt / "generator.safetensors")
        if disc is not None and (ckpt / "discriminator.safetensors").is_file():
            _load_safetensors(disc, ckpt / "discriminator.safetensors")
        opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        opt_g.load_state_dict(opt_state["opt_g"])
        if opt_d is not None and opt_state.get("opt_d"):
            opt_d.load_state_dict(opt_state["opt_d"])
        start = int(json.loads((ckpt / CODEC_STATE).read_text())["step"])
        if main:
            print(f"codec train: resumed from {ckpt} (step {start})", flush=True)

    gen.to(acc.device)
    if disc is not None:
        gen, disc, opt_g, opt_d = acc.prepare(gen, disc, opt_g, opt_d)
    else:
        gen, opt_g = acc.prepare(gen, opt_g)
    raw_gen: TrainableCodec = acc.unwrap_model(gen)

    n_ffts = list(cfg.loss.stft_n_ffts)
    mrstft = auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=n_ffts, hop_sizes=[n // 4 for n in n_ffts], win_lengths=n_ffts
    ).to(acc.device)

    wb = None
    if main and tc.wandb:
        import wandb

        wb = wandb.init(
            project=tc.wandb_project,
            dir=str(out),
            config=to_dict(cfg),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def checkpoint(step: int) -> None:
        acc.wait_for_everyone()
        if main:
            save_checkpoint(
                out,
                step,
                raw_gen,
                acc.unwrap_model(disc) if disc is not None else None,
                opt_g,
                opt_d,
                cfg,
                tc.keep_checkpoints,
            )
            export_codec(raw_gen, out)

    gen.train()
    last: dict = {}
    bar = tqdm(
        range(start, tc.max_steps),
        initial=start,
        total=tc.max_steps,
        disable=not (main and tc.progress),
        desc="codec train",
        dynamic_ncols=True,
    )
    t0 = time.time()
    acc_rows: dict[str, float] = {}
    n_acc = 0

    def kmeans_init() -> None:
        # k-means on encoder outputs of a few batches (all ranks get rank 0's centroids)
        with torch.no_grad():
            z = torch.cat(
                [
                    raw_gen.encode_latent(
                        sampler.batch(cfg.data.batch_size, -1 - i, acc.process_index).to(acc.device)
                    )
                    for i in range(q.kmeans_batches)
                ]
            )
        raw_gen.rvq.init_codebooks(z)

    for step in bar:
        wave = sampler.batch(cfg.data.batch_size, step, acc.process_index).to(acc.device)  # (B, S)
        warm = step < q.warmup_steps
        raw_gen.freeze_encoder = q.freeze_encoder and not warm
        if not warm and not raw_gen.rvq.inited:
            kmeans_init()
        if q.bandwidth_dropout:
            g = torch.Generator().manual_seed(tc.seed * 7919 + step)  # same K on every rank
            n_q = nq_choices[int(torch.randint(0, len(nq_choices), (1,), generator=g))]
        else:
            n_q = nq_choices[-1]
        lr = tc.lr_at(step)
        for opt in filter(None, (opt_g, opt_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        recon, rq = gen(wave, n_q, bypass=warm)
        l1 = (recon - wave).abs().mean()
        spec = mrstft(recon[:, None], wave[:, None])
        mel = (log_mel(recon) - log_mel(wave)).abs().mean()
        loss = (
            cfg.loss.l1 * l1
            + cfg.loss.stft * spec
            + cfg.loss.mel * mel
            + q.commitment_weight * rq.commit_loss
        )
        row = {"l1": l1.item(), "stft": spec.item(), "mel": mel.item(), "commit": rq.commit_loss.item()}
        if disc is not None and step >= cfg.loss.disc_start:
            d_loss = disc_hinge_loss(disc(wave), disc(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            if tc.grad_clip > 0:
                acc.clip_grad_norm_(disc.parameters(), tc.grad_clip)
            opt_d.step()
            with torch.no_grad():
                real = disc(wave)
            adv, feat = gen_adv_losses(real, disc(recon))
            loss = loss + cfg.loss.adv * adv + cfg.loss.feat * feat
            row.update(disc=d_loss.item(), adv=adv.item(), feat=float(feat))
        opt_g.zero_grad(set_to_none=True)
        acc.backward(loss)
        if tc.grad_clip > 0:
            acc.clip_grad_norm_(gen.parameters(), tc.grad_clip)
        opt_g.step()
        row["loss"] = loss.item()
        row["dead_replaced"] = float(sum(layer.last_replaced for layer in raw_gen.rvq.layers[:n_q]))
        # perplexity of the first codebook's codes in this batch: collapse shows up here first
        if rq.codes.shape[1] > 0:
            counts = torch.bincount(rq.codes[:, 0].reshape(-1), minlength=raw_gen.rvq.codebook_size).double()
            p0 = counts[counts > 0] / counts.sum()
            row["ppl_q0"] = float(torch.exp(-(p0 * p0.log()).sum()))
        for k, v in row.items():
            acc_rows[k] = acc_rows.get(k, 0.0) + v
        n_acc += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            last = {
                "step": done,
                **{k: v / n_acc for k, v in acc_rows.items()},
                "n_q_last": n_q,
                "lr": opt_g.param_groups[0]["lr"],
                "elapsed_s": round(time.time() - t0, 2),
            }
            acc_rows, n_acc = {}, 0
            if main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                bar.set_postfix(loss=f"{last['loss']:.3f}", mel=f"{last['mel']:.3f}")
                if wb is not None:
                    wb.log(last, step=done)
        if done % tc.ckpt_every == 0 or done == tc.max_steps:
            checkpoint(done)
    bar.close()
    if start >= tc.max_steps and main and not (out / "config.json").is_file():
        export_codec(raw_gen, out)
    if wb is not None:
        wb.finish()
    acc.wait_for_everyone()
    return last
