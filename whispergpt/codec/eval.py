"""``whispergpt codec eval CODEC AUDIO...``: reconstruction quality per bandwidth vs a random floor.

Metrics, per bandwidth and per set (speech / music / other), each file encoded and decoded whole:

- ``mel_distance``: mean |log_mel(ref) - log_mel(decoded)| (``whispergpt.audio.log_mel`` units:
  log10 power / 4), frames of all files pooled; 0 for a perfect codec;
- ``si_snr_db``: scale-invariant SNR, mean over files; +inf for a perfect codec;
- ``pesq_wb`` and ``stoi`` (speech only): ITU-T P.862.2 wide-band PESQ (``pesq`` package) and STOI
  (``pystoi``), both on 16 kHz resampled audio, mean over files;
- codebook usage: entropy (bits) and perplexity (2**entropy) of each codebook's code histogram,
  pooled over the set's files (``V`` = uniform use, 1 = a single code).

The floor is a random-weights codec of the same ``EncodecConfig`` (seeded), whose codebooks are
filled with its own encoder outputs of the evaluation audio (``fill_codebooks``), so its codes
spread over the codebooks: it is what training must beat. A file is in the speech set when it is
passed with ``--speech`` or any directory in its path is named ``speech``; likewise for music.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, load_audio, log_mel, resample

# ---------------------------------------------------------------------------------------------
# metrics


def si_snr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-12) -> float:
    """Scale-invariant SNR in dB of ``est`` against ``ref`` (both (S,)); +inf when they coincide."""
    if ref.shape != est.shape:
        raise ValueError(f"si_snr expects equal shapes, got {tuple(ref.shape)} and {tuple(est.shape)}")
    ref = ref.double() - ref.double().mean()
    est = est.double() - est.double().mean()
    target = (est @ ref) / (ref @ ref + eps) * ref
    noise = est - target
    p_noise = float(noise @ noise)
    p_target = float(target @ target)
    if p_noise <= eps * max(p_target, 1.0):
        return math.inf
    if p_target <= 0.0:
        return -math.inf
    return 10.0 * math.log10(p_target / p_noise)


def mel_distance_sum(ref: torch.Tensor, est: torch.Tensor) -> tuple[float, int]:
    """Summed |log-mel difference| and the number of (bin, frame) cells, for pooling over files."""
    a, b = log_mel(ref), log_mel(est)
    return float((a - b).abs().sum()), int(a.numel())


def mel_distance(ref: torch.Tensor, est: torch.Tensor) -> float:
    """Mean |log_mel(ref) - log_mel(est)|; 0 for identical audio."""
    s, n = mel_distance_sum(ref, est)
    return s / max(n, 1)


def pesq_stoi(ref: torch.Tensor, est: torch.Tensor) -> tuple[float | None, float | None]:
    """Wide-band PESQ and STOI at 16 kHz; None where the package cannot score the file."""
    r = resample(ref.numpy().astype(np.float32), SAMPLE_RATE, 16000)
    e = resample(est.numpy().astype(np.float32), SAMPLE_RATE, 16000)
    p = s = None
    try:
        from pesq import pesq

        p = float(pesq(16000, r, e, "wb"))
    except Exception as exc:  # NoUtterancesError etc.: silence or too short for PESQ
        print(f"  pesq skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        from pystoi import stoi

        s = float(stoi(r, e, 16000, extended=False))
    except Exception as exc:
        print(f"  stoi skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return p, s


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[list[float], list[float]]:
    """Per-codebook entropy (bits) and perplexity of ``codes`` (K, N)."""
    ent, ppl = [], []
    for k in range(codes.shape[0]):
        counts = torch.bincount(codes[k].reshape(-1), minlength=codebook_size).double()
        p = counts / counts.sum().clamp_min(1)
        h = float(-(p[p > 0] * p[p > 0].log2()).sum())
        ent.append(h)
        ppl.append(2.0**h)
    return ent, ppl


# ---------------------------------------------------------------------------------------------
# evaluation


def _classify(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    parts = {p.lower() for p in path.parts[:-1]}
    if "speech" in parts:
        return "speech"
    if "music" in parts:
        return "music"
    return "other"


def random_floor(codec, waves: list[torch.Tensor], seed: int = 0):
    """A random-weights codec with ``codec``'s config, codebooks filled from the evaluation audio."""
    from transformers import EncodecModel

    from whispergpt.codec import Codec, fill_codebooks

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(codec.model.config).eval()
    # up to 2 s from each file (at most 64 files) is plenty to spread V codes per layer
    n = 2 * SAMPLE_RATE
    probe = torch.stack([torch.nn.functional.pad(w[:n], (0, max(0, n - w[:n].numel()))) for w in waves[:64]])
    fill_codebooks(model, probe, generator=torch.Generator().manual_seed(seed))
    return Codec(model, bandwidth=codec.bandwidth, name=f"random floor (seed {seed})")


@dataclass
class SetMetrics:
    """One set's metrics pooled over its files (the rows of ``evaluate_codec``, also
    ``scripts/measure_llm_codec.py``'s): ``add`` each file's reference, decoded wave and codes, then
    ``summary``. Mel distance pools (bin, frame) cells over the files, SI-SNR / PESQ / STOI are means
    over files, code usage pools each codebook's codes over the files."""

    mel_sum: float = 0.0
    mel_n: int = 0
    si_snr: list[float] = field(default_factory=list)
    pesq: list[float] = field(default_factory=list)
    stoi: list[float] = field(default_factory=list)
    codes: list[list[torch.Tensor]] = field(default_factory=list)  # per codebook, one (T_k,) per file

    def add(self, ref: torch.Tensor, est: torch.Tensor, codes: Sequence[torch.Tensor] = (),
            speech: bool = False) -> None:  # fmt: skip
        """One file: ``ref`` and ``est`` (S,), its codes (one 1-D tensor per codebook; a codebook's
        frame count may differ from another's), PESQ and STOI too when ``speech``."""
        ms, mn = mel_distance_sum(ref, est)
        self.mel_sum += ms
        self.mel_n += mn
        self.si_snr.append(si_snr(ref, est))
        if not self.codes:
            self.codes = [[] for _ in codes]
        if len(codes) != len(self.codes):
            raise ValueError(f"{len(codes)} codebooks' codes, earlier files had {len(self.codes)}")
        for k, c in enumerate(codes):
            self.codes[k].append(c.reshape(-1))
        if speech:
            p, s = pesq_stoi(ref, est)
            if p is not None:
                self.pesq.append(p)
            if s is not None:
                self.stoi.append(s)

    def summary(self, codebook_sizes: Sequence[int]) -> dict:
        """``files``, ``mel_distance``, ``si_snr_db`` (+inf if any file's is), ``pesq_wb``, ``stoi``
        (None without scores), and per codebook (``codebook_sizes[k]`` entries) its
        ``codebook_entropy_bits`` and ``codebook_perplexity``."""
        usage = [
            codebook_usage(torch.cat(c)[None], n) for c, n in zip(self.codes, codebook_sizes, strict=True)
        ]
        finite = [v for v in self.si_snr if math.isfinite(v)]
        return {
            "files": len(self.si_snr),
            "mel_distance": self.mel_sum / max(self.mel_n, 1),
            "si_snr_db": (float(np.mean(finite)) if len(finite) == len(self.si_snr) else math.inf)
            if self.si_snr
            else None,
            "pesq_wb": float(np.mean(self.pesq)) if self.pesq else None,
            "stoi": float(np.mean(self.stoi)) if self.stoi else None,
            "codebook_entropy_bits": [e[0] for e, _ in usage],
            "codebook_perplexity": [p[0] for _, p in usage],
        }


@torch.inference_mode()
def evaluate_codec(
    codec,
    items: list[tuple[str, str, torch.Tensor]],
    bandwidths: list[float],
    speech_metrics: bool = True,
) -> dict:
    """``items``: (path, set, wave (S,)). Returns {bandwidth: {set: metrics}} (bandwidths as str);
    PESQ and STOI go to the speech set only."""
    from whispergpt.codec import Codec

    q = codec.model.quantizer
    # encode once at the top bandwidth through Codec (silence priming and all, as users run it);
    # an RVQ's first K codes are the K-codebook codes, so each bandwidth decodes a prefix
    top = Codec(codec.model, bandwidth=max(bandwidths), name=codec.name)
    codes_by_item = [top.encode(w[None])[0].cpu() for _, _, w in items]  # (K, T) each
    out: dict = {}
    for b in bandwidths:
        K = int(q.get_num_quantizers_for_bandwidth(b))
        acc: dict[str, SetMetrics] = {}
        for (_, group, w), codes in zip(items, codes_by_item):
            T = codes.shape[-1]
            ref = w[: T * HOP_LENGTH]
            est = top.decode(codes[None, :K])[0].cpu()  # (T * 320,)
            acc.setdefault(group, SetMetrics()).add(ref, est, codes[:K], group == "speech" and speech_metrics)
            acc.setdefault("all", SetMetrics()).add(ref, est, codes[:K])
        out[str(b)] = {g: a.summary([codec.codebook_size] * K) for g, a in acc.items()}
    return out


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{nd}f}"


def markdown_table(report: dict) -> str:
    """One row per (bandwidth, set, codec): the trained codec next to its random floor."""
    lines = [
        "| kbps | K | set | codec | mel dist ↓ | SI-SNR dB ↑ | PESQ-wb ↑ | STOI ↑ | code entropy bits (mean) | perplexity (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["bandwidths"]:
        key = str(b)
        for g in report["sets"]:
            for name in ("trained", "random"):
                r = report["results"][name][key].get(g)
                if r is None:
                    continue
                K = len(r["codebook_entropy_bits"])
                lines.append(
                    f"| {b} | {K} | {g} | {name} | {_fmt(r['mel_distance'])} | {_fmt(r['si_snr_db'], 2)} | "
                    f"{_fmt(r['pesq_wb'], 2)} | {_fmt(r['stoi'], 3)} | "
                    f"{_fmt(float(np.mean(r['codebook_entropy_bits'])), 2)} | "
                    f"{_fmt(float(np.mean(r['codebook_perplexity'])), 1)} |"
                )
    return "\n".join(lines)


def jsonable(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    return x


def run_eval(
    codec_name: str,
    audio: list[tuple[str, str | None]],
    bandwidths: list[float] | None = None,
    max_seconds: float = 30.0,
    seed: int = 0,
) -> dict:
    """Evaluate ``codec_name`` and its random floor on ``audio`` [(path or dir, set or None)]."""
    from whispergpt.codec.train import find_audio_files

    codec = _load(codec_name)
    supported = [float(b) for b in codec.model.config.target_bandwidths]
    bandwidths = supported if not bandwidths else [float(b) for b in bandwidths]
    bad = [b for b in bandwidths if b not in supported]
    if bad:
        raise ValueError(f"bandwidths {bad} are not supported by {codec_name}: pass some of {supported}")
    items = []
    skipped = []
    for item, group in audio:
        for f in find_audio_files([item]):
            try:
                w = load_audio(f)
            except AudioLoadError as e:
                print(f"skipping {e}", file=sys.stderr)
                skipped.append({"path": str(f), "reason": str(e)})
                continue
            w = w[: int(max_seconds * SAMPLE_RATE)]
            if w.numel() < HOP_LENGTH:
                skipped.append({"path": str(f), "reason": "shorter than one 320-sample frame"})
                continue
            items.append((str(f), _classify(Path(f), group), w))
    if not items:
        raise ValueError("no usable audio to evaluate on")
    floor = random_floor(codec, [w for _, _, w in items], seed=seed)
    sets = [g for g in ("speech", "music", "other") if any(it[1] == g for it in items)] + ["all"]
    report = {
        "codec": str(codec_name),
        "floor": f"random weights, same EncodecConfig, seed {seed}, codebooks filled from the eval audio",
        "bandwidths": bandwidths,
        "sets": sets,
        "files": {g: sum(1 for it in items if it[1] == g) for g in sets[:-1]},
        "seconds": {
            g: round(sum(it[2].numel() for it in items if it[1] == g) / SAMPLE_RATE, 1) for g in sets[:-1]
        },
        "skipped": skipped,
        "results": {
            "trained": evaluate_codec(codec, items, bandwidths),
            "random": evaluate_codec(floor, items, bandwidths),
        },
    }
    return report


def _load(name: str):
    """Load a codec; evaluation picks K per bandwidth itself, so the wrapper's bandwidth is moot."""
    from whispergpt.codec import open_codec

    return open_codec(name)[0]  # 6 kbps, else the codec's highest
