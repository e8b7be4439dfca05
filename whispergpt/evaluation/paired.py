"""Paired metrics: a generated continuation against the real audio that followed the same prompt.

Both signals are ``(S,)`` float arrays at 24 kHz that start at the prompt end (the caller cuts the
prompt off and crops both to the shorter length). These are offline metrics, so the STFTs here
are centred (each frame sees a little of its future), unlike the model's causal ``log_mel``.

- ``mel_distance_curve``: mean absolute difference of the normalised log-mel (``audio.log_mel``)
  per second since the prompt ended: one value per second, 0 for identical audio. How fast the
  continuation drifts away from what really followed.
- ``chroma_similarity``: cosine similarity of the clip-level chroma profiles (energy per pitch
  class, 55 Hz - 4 kHz, averaged over time): 1 for identical audio. A free continuation is another
  realisation, so frames are not compared one by one; key and harmony should still match (music).
- ``onset_rate``: onsets per second from half-wave-rectified log-spectral flux (20 ms hop) peaks
  above a moving median + 4 robust stds; the paired metric is the absolute difference of the rates.
- ``loudness_correlation``: Pearson correlation of the two loudness envelopes (frame RMS in dB,
  40 ms windows every 10 ms): 1 for identical audio, None when an envelope is constant.
- ``f0_stats``: a YIN pitch track (60-500 Hz, 20 ms hop, threshold 0.15, voiced frames above -50 dBFS);
  per clip: voiced share, median F0 (Hz), F0 spread (std in semitones). The paired metric is
  the median F0 difference in semitones and the voiced-share difference (speech).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from whispergpt.audio import FRAME_RATE, SAMPLE_RATE, log_mel

ENV_WIN, ENV_HOP = 960, 240  # 40 ms / 10 ms
F0_MIN, F0_MAX, F0_WIN, YIN_THRESHOLD = 60.0, 500.0, 1024, 0.15
SILENCE_DB = -50.0


def _frames(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Centred frames of ``x (S,)`` -> ``(n, win)`` (reflect-padded by ``win // 2``)."""
    pad = win // 2
    x = np.pad(x, (pad, pad), mode="reflect" if x.size > pad else "constant")
    n = 1 + max(0, (x.size - win) // hop)
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def _magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred Hann STFT magnitude ``(n_frames, n_fft // 2 + 1)``."""
    frames = _frames(np.asarray(x, dtype=np.float64), n_fft, hop) * np.hanning(n_fft + 1)[:-1]
    return np.abs(np.fft.rfft(frames, axis=1))


def mel_distance_curve(generated: np.ndarray, reference: np.ndarray) -> list[float]:
    """Mean |log-mel difference| per second since the prompt end (a last partial second included)."""
    g = log_mel(torch.as_tensor(generated, dtype=torch.float32)).double().numpy()  # (M, T)
    r = log_mel(torch.as_tensor(reference, dtype=torch.float32)).double().numpy()
    T = min(g.shape[1], r.shape[1])
    diff = np.abs(g[:, :T] - r[:, :T]).mean(axis=0)  # (T,)
    return [float(diff[s : s + FRAME_RATE].mean()) for s in range(0, T, FRAME_RATE)]


def chroma_profile(x: np.ndarray, n_fft: int = 4096, hop: int = 2400) -> np.ndarray:
    """Energy per pitch class (C = 0), summed over time, L2-normalised -> ``(12,)``."""
    mag = _magnitude(x, n_fft, hop)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    keep = (freqs >= 55.0) & (freqs <= 4000.0)
    pitch_class = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    energy = np.square(mag[:, keep]).sum(axis=0)
    profile = np.bincount(pitch_class, weights=energy, minlength=12)
    norm = np.linalg.norm(profile)
    return profile / norm if norm > 0 else profile


def chroma_similarity(generated: np.ndarray, reference: np.ndarray) -> float | None:
    a, b = chroma_profile(generated), chroma_profile(reference)
    if not a.any() or not b.any():
        return None
    return float(np.dot(a, b))


def onset_rate(x: np.ndarray, n_fft: int = 1024, hop: int = 480, k: float = 4.0) -> float:
    """Onsets per second: local maxima of the log-spectral flux above a moving median + ``k`` robust stds.

    The robust std (1.4826 MAD of the flux around its moving median) keeps stationary noise and
    steady tones at zero onsets; at least 50 ms between onsets.
    """
    mag = _magnitude(x, n_fft, hop)
    flux = np.maximum(np.diff(np.log1p(100.0 * mag), axis=0), 0.0).sum(axis=1)  # (n - 1,)
    if flux.size < 3 or not flux.any():
        return 0.0
    fps = SAMPLE_RATE / hop
    half = int(0.25 * fps)  # 0.5 s moving window
    padded = np.pad(flux, (half, half), mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)
    spread = max(1.4826 * float(np.median(np.abs(flux - local))), 1e-3 * float(flux.max()))
    peak = (flux >= np.roll(flux, 1)) & (flux > np.roll(flux, -1)) & (flux > local + k * spread)
    peak[0] = peak[-1] = False
    onsets, last = 0, -math.inf
    for i in np.flatnonzero(peak):
        if i - last >= 0.05 * fps:
            onsets, last = onsets + 1, i
    return onsets / (x.size / SAMPLE_RATE)


def loudness_envelope(x: np.ndarray) -> np.ndarray:
    """Frame RMS in dBFS (40 ms windows every 10 ms, floor -100 dB)."""
    rms = np.sqrt(np.square(_frames(np.asarray(x, dtype=np.float64), ENV_WIN, ENV_HOP)).mean(axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def loudness_correlation(generated: np.ndarray, reference: np.ndarray) -> float | None:
    a, b = loudness_envelope(generated), loudness_envelope(reference)
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    if n < 2 or den < 1e-9:
        return None
    return float(np.clip(np.dot(a, b) / den, -1.0, 1.0))


def f0_track(x: np.ndarray, hop: int = 480) -> np.ndarray:
    """YIN F0 per frame in Hz, NaN where unvoiced or silent -> ``(n_frames,)``."""
    tau_min, tau_max = int(SAMPLE_RATE / F0_MAX), int(math.ceil(SAMPLE_RATE / F0_MIN))
    frames = _frames(np.asarray(x, dtype=np.float64), F0_WIN, hop)  # (n, W)
    L = F0_WIN - tau_max  # integration length
    # r(tau) = sum_{j<L} x_j x_{j+tau} for all frames at once through the FFT; j + tau < F0_WIN, so
    # a circular correlation of length F0_WIN never wraps for the lags used
    spec_head = np.fft.rfft(frames[:, :L], F0_WIN)
    spec_full = np.fft.rfft(frames, F0_WIN)
    r = np.fft.irfft(np.conj(spec_head) * spec_full, F0_WIN)[:, : tau_max + 1]  # (n, tau_max + 1)
    csum = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(np.square(frames), axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_tau = csum[:, taus + L] - csum[:, taus]  # sum_{j<L} x_{j+tau}^2
    d = energy_tau[:, :1] + energy_tau - 2.0 * r  # (n, tau_max + 1), d[:, 0] = 0
    cum = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    loud = 10.0 * np.log10(np.maximum(energy_tau[:, 0] / L, 1e-12)) > SILENCE_DB
    below = cmnd[:, tau_min:] < YIN_THRESHOLD  # (n, tau_max - tau_min + 1)
    voiced = loud & below.any(axis=1)
    first = tau_min + np.argmax(below, axis=1)  # first lag under the threshold
    # then walk down to the local minimum: the first lag >= first whose successor is not lower
    stop = np.concatenate([cmnd[:, 1:] >= cmnd[:, :-1], np.ones((len(frames), 1), bool)], axis=1)
    stop &= taus[None, :] >= first[:, None]
    tau = np.clip(np.argmax(stop, axis=1), 1, tau_max - 1)
    rows = np.arange(len(frames))
    a, b, c = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    curv = a - 2.0 * b + c  # parabolic interpolation of the minimum: sub-sample lag
    shift = np.where(curv > 1e-12, 0.5 * (a - c) / np.where(curv > 1e-12, curv, 1.0), 0.0)
    return np.where(voiced, SAMPLE_RATE / (tau + np.clip(shift, -0.5, 0.5)), np.nan)


def f0_stats(x: np.ndarray) -> dict:
    f0 = f0_track(x)
    voiced = f0[np.isfinite(f0)]
    stats = dict(voiced_share=float(voiced.size / max(f0.size, 1)), median_hz=None, spread_semitones=None)
    if voiced.size >= 2:
        stats["median_hz"] = float(np.median(voiced))
        stats["spread_semitones"] = float(np.std(12.0 * np.log2(voiced / np.median(voiced))))
    return stats


def paired_metrics(generated: np.ndarray, reference: np.ndarray) -> dict:
    """All paired metrics of one pair (both start at the prompt end; cropped to the shorter)."""
    n = min(generated.size, reference.size)
    g, r = np.asarray(generated[:n], dtype=np.float64), np.asarray(reference[:n], dtype=np.float64)
    fg, fr = f0_stats(g), f0_stats(r)
    f0_diff = None
    if fg["median_hz"] is not None and fr["median_hz"] is not None:
        f0_diff = abs(12.0 * math.log2(fg["median_hz"] / fr["median_hz"]))
    rate_g, rate_r = onset_rate(g), onset_rate(r)
    return dict(
        seconds=n / SAMPLE_RATE,
        mel_distance_curve=mel_distance_curve(g, r),
        chroma_similarity=chroma_similarity(g, r),
        onset_rate_generated=rate_g,
        onset_rate_reference=rate_r,
        onset_rate_diff=abs(rate_g - rate_r),
        loudness_correlation=loudness_correlation(g, r),
        f0_generated=fg,
        f0_reference=fr,
        f0_median_diff_semitones=f0_diff,
        voiced_share_diff=abs(fg["voiced_share"] - fr["voiced_share"]),
    )
