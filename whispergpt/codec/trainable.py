"""The codec being trained: its config sections, the EnCodec it builds and ``TrainableCodec`` (generator +
quantiser).

``train``, ``checkpoint`` and ``lsuv`` import this module; it imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE
from whispergpt.codec import PRIME_FRAMES
from whispergpt.codec.rvq import ResidualVQ, RVQOutput, export_to_encodec


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

    def __init__(self, model, rvq: ResidualVQ, lsuv: bool = True, pretrained: bool = False):
        super().__init__()
        self.model = model
        self.rvq = rvq
        self.freeze_encoder = False
        self.lsuv, self.pretrained = lsuv, pretrained

    # -- what the codec trainer asks of any trainable codec (LLM-Codec answers the same) ----------
    def n_q_choices(self) -> list[int]:
        """K for each target bandwidth (bandwidth dropout draws from these; the last is full)."""
        return quantizers_per_bandwidth(self.model)

    def data_init(self, wave: torch.Tensor) -> str | None:
        """A fresh codec's data-dependent init on a first batch; a line saying what it did."""
        if self.pretrained:
            return None
        from whispergpt.codec.lsuv import lsuv_init, standardize_latent

        if self.lsuv:
            lsuv_init(self, wave)
        before, after = standardize_latent(self, wave)
        return f"latent spread/mean {before:.3g} -> {after:.3g} (data-dependent init)"

    @property
    def quantizer_ready(self) -> bool:
        return self.rvq.inited

    def init_quantizer(self, batches: list[torch.Tensor]) -> None:
        """k-means on the encoder outputs of ``batches`` (every rank gets rank 0's centroids)."""
        self.rvq.init_codebooks(torch.cat([self.encode_latent(b) for b in batches]))

    @property
    def codebook_size(self) -> int:
        return self.rvq.codebook_size

    def first_codes(self, out: RVQOutput) -> torch.Tensor | None:
        return out.codes[:, 0] if out.codes.shape[1] > 0 else None  # none during the warm-up

    def replaced_codes(self, n_q: int) -> float:
        return float(sum(layer.last_replaced for layer in self.rvq.layers[:n_q]))

    def extra_losses(
        self, wave: torch.Tensor, recon: torch.Tensor, out: RVQOutput
    ) -> dict[str, torch.Tensor]:
        """Weighted losses beyond the shared ones (none for EnCodec)."""
        return {}

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
