"""EnCodec wrapper on the fixed 24 kHz / 75 Hz grid.

``Codec.from_pretrained(name_or_path, bandwidth=6.0)`` loads transformers' ``EncodecModel`` from
the hub id (e.g. ``facebook/encodec_24khz``) or from a local directory in ``save_pretrained``
layout, through the same call. ``encode`` maps ``(B, S)`` audio to ``(B, K, T)`` codes with
``T = S // 320`` (the same ``T`` as ``log_mel``); ``decode`` maps codes back to ``(B, T * 320)``.

The 24 kHz EnCodec encoder and decoder are causal convolutions + a unidirectional LSTM, with one
catch: their left padding is *reflect* padding, so the first few frames of a clip see samples
(or codes) from up to 6 frames in their future. ``encode`` therefore prepends ``PRIME_FRAMES``
frames of digital silence (and drops their codes), and ``decode`` prepends the codes of silence
(and drops their audio): the reflection then only ever reads the silent prefix. With that, codes
of frame ``t`` depend only on samples ``< (t+1) * 320`` and decoded samples of frame ``t`` only
on codes of frames ``<= t``; ``tests/test_codec.py`` checks both at every frame, the first included.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE

HUB_CODEC = "facebook/encodec_24khz"
# The small codec shipped in the package (trained with `whispergpt codec train`, see MODEL_CARD.md
# next to it): `Codec.from_pretrained("default")` falls back to it when the hub is unreachable.
SHIPPED_CODEC_DIR = Path(__file__).parents[1] / "assets" / "codec" / "whispergpt-small-24khz"
SHIPPED_CODEC_TRAINED_ON = (
    "48 min of Debian-packaged speech (tuxpaint) and music (ufoai), 7,800 steps on a 2-core CPU"
)
# Silent frames prepended before encoding / decoding; > 6, the farthest reach of EnCodec's left
# reflect padding (its 7-tap convolutions at the frame rate).
PRIME_FRAMES = 8


class Codec:
    """Batched, device-aware, inference-only EnCodec at one bandwidth."""

    def __init__(self, model, bandwidth: float = 6.0, name: str = "<in-memory>"):
        from transformers import EncodecModel

        if not isinstance(model, EncodecModel):
            raise ValueError(f"Codec wraps a transformers EncodecModel, got {type(model).__name__}")
        cfg = model.config
        if cfg.sampling_rate != SAMPLE_RATE:
            raise ValueError(
                f"codec sample rate must be {SAMPLE_RATE} Hz, got {cfg.sampling_rate} Hz ({name})"
            )
        hop = int(math.prod(cfg.upsampling_ratios))
        if hop != HOP_LENGTH:
            raise ValueError(f"codec hop must be {HOP_LENGTH} samples (75 Hz), got {hop} ({name})")
        if cfg.normalize or cfg.chunk_length_s is not None:
            raise ValueError(
                f"{name}: only non-normalised, unchunked EnCodec models (the 24 kHz family) are supported"
            )
        supported = [float(b) for b in cfg.target_bandwidths]
        if float(bandwidth) not in supported:
            raise ValueError(
                f"bandwidth {bandwidth} kbps is not supported by {name}: pass one of {supported}"
            )
        self.model = model.eval()
        self.bandwidth = float(bandwidth)
        self.name = str(name)
        self._silence_codes: torch.Tensor | None = None  # (n_q, 1, PRIME_FRAMES), lazily

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, bandwidth: float = 6.0, device: str | torch.device | None = None
    ) -> Codec:
        """Load from a hub id or a local ``save_pretrained`` directory (same code path).

        ``"default"`` means ``facebook/encodec_24khz``, or, when the hub is unreachable (offline, no
        cache), the small codec shipped in the package (``SHIPPED_CODEC_DIR``), saying so on stderr.
        """
        model, name = _load_encodec(name_or_path)
        codec = cls(model, bandwidth=bandwidth, name=name)
        if device is not None:
            codec.to(device)
        return codec

    @classmethod
    def random(
        cls,
        bandwidth: float = 1.5,
        seed: int = 0,
        tiny: bool = True,
        config_overrides: dict | None = None,
    ) -> Codec:
        """A random-weights codec for tests and as an evaluation floor.

        A freshly built ``EncodecModel`` has all-zero codebooks (every code is 0); here each
        residual codebook is filled with encoder outputs of seeded noise/tones, so codes vary.
        ``tiny=True`` shrinks widths (same 320-sample hop, 1024-entry codebooks, bandwidths).
        """
        from transformers import EncodecConfig, EncodecModel

        kwargs: dict = dict(target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0])
        if tiny:
            kwargs.update(
                num_filters=4, hidden_size=32, num_lstm_layers=1, codebook_dim=32, num_residual_layers=1
            )
        kwargs.update(config_overrides or {})
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EncodecModel(EncodecConfig(**kwargs)).eval()
        with torch.no_grad():
            # transformers initialises weight-norm magnitudes near 0.02, which makes a random decoder
            # almost constant; unit-norm filters keep its output sensitive to the codes.
            for pname, param in model.named_parameters():
                if pname.endswith("parametrizations.weight.original0"):
                    param.fill_(1.0)
        t = torch.arange(SAMPLE_RATE, dtype=torch.float32) / SAMPLE_RATE
        freqs = 110.0 * 2 ** (torch.rand(4, 1, generator=gen) * 4)
        probe = torch.cat(
            [0.3 * torch.sin(2 * math.pi * freqs * t), 0.1 * torch.randn(4, SAMPLE_RATE, generator=gen)]
        )
        fill_codebooks(model, probe, generator=gen)
        return cls(model, bandwidth=bandwidth, name="random-tiny" if tiny else "random")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.model.save_pretrained(str(directory))

    def to(self, device: str | torch.device) -> Codec:
        self.model.to(device)
        return self

    # -- properties ---------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // HOP_LENGTH

    @property
    def hop_length(self) -> int:
        return HOP_LENGTH

    @property
    def num_codebooks(self) -> int:
        return int(self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- encode / decode ----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` or ``(S,)`` float audio -> ``(B, K, T)`` int64 codes, ``T = S // 320``."""
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise ValueError(f"encode expects (B, S) audio, got shape {tuple(wave.shape)}")
        if wave.shape[-1] // HOP_LENGTH == 0:
            return torch.zeros(wave.shape[0], self.num_codebooks, 0, dtype=torch.long, device=wave.device)
        return self.quantize(self.latent(wave))

    @torch.inference_mode()
    def latent(self, wave: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` float audio -> the encoder's continuous latent ``(B, D, T)``, ``T = S // 320``.

        What ``encode`` quantizes (same silent priming, so frame ``t`` sees samples ``< (t+1) * 320``);
        ``whispergpt.evaluation`` embeds clips in this space.
        """
        if wave.dim() != 2:
            raise ValueError(f"latent expects (B, S) audio, got shape {tuple(wave.shape)}")
        T = wave.shape[-1] // HOP_LENGTH
        x = wave[:, : T * HOP_LENGTH].to(self.device, torch.float32)
        x = torch.nn.functional.pad(x, (PRIME_FRAMES * HOP_LENGTH, 0))[:, None]  # (B, 1, S + prime)
        emb = self.model.encoder(x)  # (B, D, PRIME_FRAMES + T)
        assert emb.shape[-1] == PRIME_FRAMES + T, (emb.shape, T)
        return emb[..., PRIME_FRAMES:]

    @torch.inference_mode()
    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, D, T)`` latent (from ``latent``) -> ``(B, K, T)`` int64 codes at this bandwidth."""
        codes = self.model.quantizer.encode(latent.to(self.device), self.bandwidth)  # (K, B, T)
        return codes.transpose(0, 1).long().contiguous()

    def silence_codes(self) -> torch.Tensor:
        """Codes of digital silence for all quantizers, ``(n_q, 1, PRIME_FRAMES)`` (cached)."""
        if self._silence_codes is None or self._silence_codes.device != self.device:
            with torch.inference_mode():
                zeros = torch.zeros(1, 1, PRIME_FRAMES * HOP_LENGTH, device=self.device)
                self._silence_codes = self.model.quantizer.encode(self.model.encoder(zeros), None)
        return self._silence_codes

    def codebook_table(self, num_codebooks: int | None = None) -> torch.Tensor:
        """The first ``num_codebooks`` (default: this bandwidth's K) residual codebooks stacked,
        ``(K, V, C)`` float32 (a copy): what ``codec_latent`` looks codes up in."""
        K = self.num_codebooks if num_codebooks is None else int(num_codebooks)
        if not 1 <= K <= self.model.config.num_quantizers:
            raise ValueError(
                f"codebook_table expects 1..{self.model.config.num_quantizers} codebooks, got {K}"
            )
        layers = self.model.quantizer.layers[:K]
        return torch.stack([q.codebook.embed.detach().float() for q in layers]).clone()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, K, T)`` codes (any ``K <= num_codebooks``) -> ``(B, T * 320)`` float32 audio."""
        if codes.dim() != 3:
            raise ValueError(f"decode expects (B, K, T) codes, got shape {tuple(codes.shape)}")
        B, K, T = codes.shape
        if K < 1 or K > self.model.config.num_quantizers:
            raise ValueError(f"decode expects 1..{self.model.config.num_quantizers} codebooks, got {K}")
        if T == 0:
            return torch.zeros(B, 0, device=codes.device)
        prime = self.silence_codes()[:K].expand(K, B, PRIME_FRAMES)
        codes = torch.cat([prime, codes.to(self.device).transpose(0, 1)], dim=-1)  # (K, B, prime + T)
        emb = self.model.quantizer.decode(codes)  # (B, D, prime + T)
        audio = self.model.decoder(emb)[:, 0]  # (B, S')
        start = PRIME_FRAMES * HOP_LENGTH
        return audio[:, start : start + T * HOP_LENGTH].float()

    def __repr__(self) -> str:
        return (
            f"Codec({self.name!r}, bandwidth={self.bandwidth} kbps, K={self.num_codebooks}, "
            f"V={self.codebook_size}, {self.frame_rate} Hz)"
        )


def codec_latent(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The codec's dequantised latent of ``codes (..., K, T)`` long: ``(..., C, T)`` float, frame
    ``t`` = ``sum_k table[k, codes[..., k, t]]`` with ``table (K, V, C)`` (``Codec.codebook_table``).

    What the codec's decoder reads (``quantizer.decode``), a deterministic function of each frame's
    tokens alone (table lookups, no decode): the continuous stream of ``data.mel_source:
    codec_latent``. The one implementation, used by the dataset reader (training, evaluation) and
    the sampler, so both sides compute the same numbers in the same order.
    """
    K, V, C = table.shape
    if codes.dim() < 2 or codes.shape[-2] != K:
        raise ValueError(f"codec_latent expects codes (..., K={K}, T), got shape {tuple(codes.shape)}")
    offsets = (torch.arange(K, device=codes.device) * V)[:, None]  # (K, 1)
    rows = torch.nn.functional.embedding(codes + offsets, table.reshape(K * V, C))  # (..., K, T, C)
    return rows.sum(-3).transpose(-1, -2)  # (..., C, T)


def _load_encodec(name_or_path: str | os.PathLike):
    """``(EncodecModel, name)`` from a hub id or a ``save_pretrained`` dir; ``"default"`` as documented
    in ``Codec.from_pretrained`` (the returned name is then the one actually loaded)."""
    from transformers import EncodecModel

    name = str(name_or_path)
    if name == "default":
        try:
            return _load_encodec(HUB_CODEC)
        except OSError:
            print(
                f"hub unreachable: using the shipped offline codec at {SHIPPED_CODEC_DIR}, trained on "
                f"{SHIPPED_CODEC_TRAINED_ON}; quality is far below {HUB_CODEC}",
                file=sys.stderr,
            )
            return _load_encodec(SHIPPED_CODEC_DIR)
    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise OSError(f"{name} exists but is not an EnCodec save_pretrained directory (no config.json)")
    try:
        model = EncodecModel.from_pretrained(str(local) if local.exists() else name)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not load codec {name!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Pass a local directory in EncodecModel save_pretrained layout, or the hub id {HUB_CODEC!r} "
            "on a machine that can reach the hub (or has it in the HF cache)."
        ) from e
    return model, name


def pick_bandwidth(
    model,
    num_codebooks: int | None = None,
    codebook_size: int | None = None,
    bandwidth: float | None = None,
    name: str = "codec",
) -> tuple[float, str | None]:
    """The bandwidth to open EnCodec ``model`` at, and a note when it is not the one asked for.

    Preferred: ``bandwidth`` (e.g. the one the data was prepared at), else 6 kbps, else the
    codec's highest. With ``num_codebooks`` (K) the bandwidth must give K codebooks: when the
    preferred one does not, the first of the codec's bandwidths that does is taken (with a note).
    ``ValueError`` when ``codebook_size`` (V) differs or no bandwidth gives K.
    """
    options = [float(b) for b in model.config.target_bandwidths]
    if codebook_size is not None and int(model.config.codebook_size) != codebook_size:
        raise ValueError(
            f"codec/model mismatch: codebook_size V={codebook_size} is needed, the codec {name} has "
            f"{model.config.codebook_size}"
        )
    k_of = {b: int(model.quantizer.get_num_quantizers_for_bandwidth(b)) for b in options}
    wanted = float(bandwidth) if bandwidth is not None else 6.0 if 6.0 in options else max(options)
    if num_codebooks is None:
        if wanted not in options:
            raise ValueError(f"bandwidth {wanted} kbps is not supported by {name}: pass one of {options}")
        return wanted, None
    if k_of.get(wanted) == num_codebooks:
        return wanted, None
    fits = [b for b in options if k_of[b] == num_codebooks]
    if not fits:
        raise ValueError(
            f"codec/model mismatch: K={num_codebooks} codebooks are needed, the codec {name} offers K per "
            f"bandwidth {k_of}"
        )
    have = f"gives K={k_of[wanted]}" if wanted in k_of else "is not offered"
    return fits[0], f"codec bandwidth {wanted} kbps {have}; using {fits[0]} kbps (K={num_codebooks}) to match"


def same_codec_name(a: str, b: str) -> bool:
    """Two recorded codec names (hub ids or folders) denote the same codec: folders that both
    exist are compared resolved (the same codec reached by two paths), other names as text."""
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


def match_codec(codec: Codec, model_config) -> tuple[Codec, str | None]:
    """An open ``codec`` at the bandwidth giving the model's K (``pick_bandwidth``), and a note or None.

    ``model_config`` needs ``num_codebooks`` and ``codebook_size``; ``open_codec`` does the same from a name.
    """
    c = model_config
    if codec.sample_rate != SAMPLE_RATE:
        raise ValueError(f"codec sample rate must be {SAMPLE_RATE} Hz, got {codec.sample_rate}")
    bandwidth, note = pick_bandwidth(
        codec.model, c.num_codebooks, c.codebook_size, codec.bandwidth, codec.name
    )
    if bandwidth != codec.bandwidth:
        codec = Codec(codec.model, bandwidth=bandwidth, name=codec.name)
    return codec, note


def open_codec(
    name_or_path: str | os.PathLike,
    *,
    num_codebooks: int | None = None,
    codebook_size: int | None = None,
    bandwidth: float | None = None,
    device: str | torch.device | None = None,
) -> tuple[Codec, str | None]:
    """Open a codec for tokens of K codebooks x V entries, with the bandwidth fallback of
    ``pick_bandwidth``; returns the codec and its note (None when the preferred bandwidth fit).

    The one place that maps (codec, K, V, recorded bandwidth) to a ``Codec``: sampling, evaluation
    and codec evaluation all open codecs through it. ``OSError`` when the codec cannot be loaded.
    """
    model, name = _load_encodec(name_or_path)
    chosen, note = pick_bandwidth(model, num_codebooks, codebook_size, bandwidth, name)
    codec = Codec(model, bandwidth=chosen, name=name)
    if device is not None:
        codec.to(device)
    return codec, note


@torch.no_grad()
def fill_codebooks(model, wave: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Fill every residual codebook of ``model`` with encoder outputs of ``wave`` ``(B, S)``.

    Each layer's entries are residual vectors drawn at random (plus a little noise so repeats are
    distinct); the next layer sees the residual left by this one. Not a trained codec, but codes
    are spread over the codebook, which is what tests and random floors need.
    """
    emb = model.encoder(wave[:, None].float())  # (B, D, T)
    vectors = emb.transpose(1, 2).reshape(-1, emb.shape[1])  # (B*T, D)
    for layer in model.quantizer.layers:
        cb = layer.codebook
        n = cb.embed.shape[0]
        idx = torch.randint(0, vectors.shape[0], (n,), generator=generator)
        noise = torch.randn(n, vectors.shape[1], generator=generator) * (vectors.std() * 0.05 + 1e-6)
        cb.embed.copy_(vectors[idx] + noise)
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        codes = cb.quantize(vectors)
        vectors = vectors - cb.embed[codes]
