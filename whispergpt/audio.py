"""Audio front end: loading, resampling and the causal log-mel spectrogram.

The time grid is fixed: 24 kHz mono, codec hop 320 samples, 75 frames/s. Frame ``t`` covers samples
``[t*320, (t+1)*320)``.

Causal log-mel (``log_mel``)
----------------------------
Frame ``t`` is the spectrum of the ``win_length`` (1024) samples that END at sample ``(t+1)*320``,
i.e. ``[(t+1)*320 - 1024, (t+1)*320)``; samples before 0 are zeros (left padding only). So frame
``t`` never sees a sample of frame ``t+1`` or later, which a centred STFT would. ``T = S // 320``
frames: a trailing partial hop is dropped, exactly as ``Codec.encode`` drops it.

- window: periodic Hann, 1024 samples (42.7 ms), FFT size 1024 (513 bins);
- power spectrum |X|^2 -> Slaney-normalised mel filterbank on the Slaney mel scale, ``n_mels``
  bands from 0 Hz to 12 kHz (the same definition as librosa's and transformers' defaults);
- normalisation is fixed and per frame: ``(log10(max(mel, 1e-10)) + 4) / 4``. Whisper's extra
  clip-level ``max(x, x.max() - 8)`` is deliberately absent: it reads the whole clip (future
  frames) and couples items of a batch.

Everything is plain torch (``torch.stft``), so it runs on CPU or GPU, batched, with or without
torchaudio (torchaudio on the registry is CUDA-linked and does not import on CPU-only torch).
Resampling on load uses soxr (high-quality polyphase, on the CPU, numpy in and out).
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 24_000
HOP_LENGTH = 320
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH  # 75 frames/s
WIN_LENGTH = 1024
N_MELS = 80
LOG_FLOOR = 1e-10

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")


class AudioLoadError(ValueError):
    """An audio file could not be turned into usable samples; the message names the file."""


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(S,)`` or ``(S, C)`` float32 audio with soxr (VHQ); identity if rates match."""
    if orig_sr == target_sr:
        return wave
    import soxr

    return soxr.resample(wave, orig_sr, target_sr, quality="VHQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read any file soundfile can (wav, flac, ogg, mp3, opus, ...) as mono float32 at ``sample_rate``.

    Channels are averaged. Integer formats are scaled to [-1, 1] by soundfile.
    Returns a ``(S,)`` float32 tensor. Raises ``AudioLoadError`` (a ``ValueError``) naming the file
    when it is missing, unreadable, empty, or holds NaN/inf samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(f"{path}: no such audio file")
    return decode_audio(str(path), str(path), sample_rate)


def decode_audio(source: str | io.BytesIO, name: str, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``load_audio`` on a path or an in-memory file (e.g. the bytes of a ``datasets`` Audio
    column); ``name`` is what error messages call it. ``(S,)`` float32, or ``AudioLoadError``."""
    import soundfile as sf

    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioLoadError(f"{name}: cannot decode audio ({type(e).__name__}: {e})") from e
    if data.size == 0 or data.shape[0] == 0:
        raise AudioLoadError(f"{name}: file holds no audio samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioLoadError(f"{name}: {bad} non-finite (NaN/inf) samples")
    mono = data.mean(axis=1, dtype=np.float32)
    mono = resample(mono, int(sr), sample_rate)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def save_audio(
    path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE
) -> None:
    """Write ``(S,)`` mono audio as 16-bit PCM WAV (clipped to [-1, 1])."""
    import soundfile as sf

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")


def num_frames(num_samples: int) -> int:
    """Frames on the 75 Hz grid for ``num_samples`` samples (a trailing partial hop is dropped)."""
    return num_samples // HOP_LENGTH


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_t = f >= min_log_hz
    mels = np.where(log_t, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_t = m >= min_log_mel
    return np.where(log_t, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=16)
def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = WIN_LENGTH, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised (area 1) triangular filters: ``(n_fft // 2 + 1, n_mels)`` float64."""
    n_freqs = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sample_rate / 2, n_freqs)
    mel_pts = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sample_rate / 2), n_mels + 2)
    hz_pts = _mel_to_hz_slaney(mel_pts)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, n_freqs)
    weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return weights.T.copy()


_FB_CACHE: dict[tuple, torch.Tensor] = {}
_WIN_CACHE: dict[tuple, torch.Tensor] = {}


def _fb(n_mels: int, device: torch.device) -> torch.Tensor:
    key = (n_mels, str(device))
    if key not in _FB_CACHE:
        # built as a normal tensor even under inference_mode: a cached inference tensor would break
        # a later autograd use (codec training's mel loss) in the same process
        with torch.inference_mode(False):
            fb = torch.from_numpy(mel_filterbank(n_mels)).to(device=device, dtype=torch.float32)
        _FB_CACHE[key] = fb
    return _FB_CACHE[key]


def _window(device: torch.device) -> torch.Tensor:
    key = (str(device),)
    if key not in _WIN_CACHE:
        with torch.inference_mode(False):  # see _fb
            _WIN_CACHE[key] = torch.hann_window(WIN_LENGTH, periodic=True, device=device, dtype=torch.float32)
    return _WIN_CACHE[key]


def _normalise(mel: torch.Tensor) -> torch.Tensor:
    """Mel power -> the normalised log-mel: ``(log10(max(mel, LOG_FLOOR)) + 4) / 4``."""
    return (torch.log10(mel.clamp_min(LOG_FLOOR)) + 4.0) / 4.0


def log_mel(wave: torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """Causal log-mel spectrogram on the 75 Hz codec grid.

    ``wave``: ``(..., S)`` float audio at 24 kHz. Returns ``(..., n_mels, T)`` float32 with
    ``T = S // 320``; frame ``t`` depends only on samples ``< (t+1) * 320`` (see module docstring).
    """
    if not isinstance(wave, torch.Tensor):
        raise ValueError(f"log_mel expects a torch.Tensor, got {type(wave).__name__}")
    if wave.dim() == 0:
        raise ValueError("log_mel expects (..., S) audio, got a scalar")
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    lead = wave.shape[:-1]
    S = wave.shape[-1]
    T = num_frames(S)
    x = wave.reshape(math.prod(lead), S).float()  # (B', S)
    if T == 0:
        return x.new_zeros(*lead, n_mels, 0)
    x = x[:, : T * HOP_LENGTH]
    # left-pad so that the window of frame t ends exactly at sample (t+1)*320
    x = torch.nn.functional.pad(x, (WIN_LENGTH - HOP_LENGTH, 0))
    spec = torch.stft(
        x,
        n_fft=WIN_LENGTH,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=_window(x.device),
        center=False,
        return_complex=True,
    )  # (B', F, T)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(_fb(n_mels, x.device).T, power)  # (n_mels, F) @ (B', F, T) -> (B', n_mels, T)
    out = _normalise(mel)
    assert out.shape[-1] == T
    return out.reshape(*lead, n_mels, T)


def log_mel_frame(seg: torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """The causal log-mel frame of the window ending at the last sample of ``seg (B, S)`` -> ``(B, n_mels)``.

    Equals ``log_mel(seg, n_mels)[..., -1]`` when ``S`` is a multiple of 320 (samples before
    ``seg`` count as zeros, as ``log_mel`` pads), computed with one ``rfft`` of the last
    ``WIN_LENGTH`` samples instead of a full STFT: the sampler's feedback loop needs one frame per step.
    """
    S = seg.shape[-1]
    x = seg[:, -WIN_LENGTH:].float()
    if S < WIN_LENGTH:
        x = torch.nn.functional.pad(x, (WIN_LENGTH - S, 0))
    spec = torch.fft.rfft(x * _window(x.device))  # (B, F)
    power = spec.real.square() + spec.imag.square()
    return _normalise(power @ _fb(n_mels, x.device))  # (B, F) @ (F, M) -> (B, M)


def silence_log_mel_value() -> float:
    """The normalised log-mel value of digital silence (the floor)."""
    return (math.log10(LOG_FLOOR) + 4.0) / 4.0
