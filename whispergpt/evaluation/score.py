"""``score``: every metric of a folder of generated audio, as one JSON-ready report dict.

The steps (each documented in its module): find and pair the files (``clips``), encode every clip
once with the codec (``embed``: latent -> pooled embedding, and -> codes), distribution metrics of
the generated vs the reference set (``distribution``), paired metrics per pair (``paired``), token
statistics and NLL under ``--checkpoint`` / ``--judge`` (``tokens``). Every interval is a seeded
95 % bootstrap; a metric without enough clips is ``None`` with a ``reason``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from whispergpt.audio import HOP_LENGTH
from whispergpt.evaluation import clips as clips_mod
from whispergpt.evaluation.distribution import (
    bootstrap_ratio,
    distribution_metrics,
    mean_summary,
    one_blas_thread,
)
from whispergpt.evaluation.embed import encode_clips, pool_latent
from whispergpt.evaluation.paired import paired_metrics
from whispergpt.evaluation.tokens import clip_nll, token_stats

NLL_STREAMS = {"checkpoint": 100, "judge": 110}  # bootstrap streams, one per quantity
PAIRED_SCALARS = {  # name -> (direction, unit)
    "mel_distance": ("lower is closer", "log-mel units"),
    "chroma_similarity": ("higher is closer", "cosine"),
    "onset_rate_diff": ("lower is closer", "onsets/s"),
    "loudness_correlation": ("higher is closer", "Pearson r"),
    "f0_median_diff_semitones": ("lower is closer", "semitones"),
    "voiced_share_diff": ("lower is closer", "share"),
}


class _Clock:
    """Adds the seconds since the last call to ``timings[stage]`` (does nothing without a dict)."""

    def __init__(self, timings: dict | None) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def load_codec(codec: str | None, checkpoint: str | None, device: str):
    """The codec named, else the checkpoint's training codec, else ``"default"``; and where it came from."""
    from whispergpt.codec import Codec

    source = "--codec"
    if codec is None and checkpoint is not None:
        from whispergpt.training.record import training_codec

        found = training_codec(Path(checkpoint))
        if found is not None:
            codec, source = found[0], "training data manifest of --checkpoint"
    if codec is None:
        codec, source = "default", "default"
    try:
        return Codec.from_pretrained(codec, device=device), source
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load the codec {codec!r}: {e}") from e


def _nll_block(name: str, ckpt: str, codec, gen, refs, lat_of, codes_of, n_boot, seed) -> dict:
    """NLL (nats/token) of the generated (and reference) continuations under one checkpoint."""
    from whispergpt.codec import match_codec
    from whispergpt.models import WhisperGPT

    try:
        model = WhisperGPT.from_pretrained(ckpt, device=codec.device).eval()
        cdc, note = match_codec(codec, model.config)
    except (OSError, ValueError) as e:
        return dict(checkpoint=str(ckpt), value=None, reason=str(e))
    block = dict(checkpoint=str(Path(ckpt).resolve()), pattern=model.config.pattern, fusion=model.config.fusion,
                 codec_note=note, reason=None)  # fmt: skip

    def codes_for(c):  # RVQ codes at a lower bandwidth are a prefix of those at a higher one
        if cdc.num_codebooks <= codec.num_codebooks:
            return codes_of[id(c)][: cdc.num_codebooks]
        return cdc.quantize(lat_of[id(c)][None])[0]

    for side, items in (("generated", gen), ("reference", refs)):
        if not items:
            block[side] = dict(value=None, ci=None, reason="no clips")
            continue
        per = np.stack([clip_nll(model, codes_for(c), c.wave, c.start) for c in items])  # (N, 2, Ks)
        nats, toks = per[:, 0].sum(axis=1), per[:, 1].sum(axis=1)
        block[side] = dict(
            value=float(nats.sum() / toks.sum()),
            ci=bootstrap_ratio(nats, toks, n_boot, seed, stream=NLL_STREAMS[name] + (side == "reference")),
            per_codebook=[float(x) for x in per[:, 0].sum(0) / per[:, 1].sum(0)],
            tokens=int(toks.sum()),
            n=len(items),
        )
    return block


def score(
    generated: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    codec: str | None = None,
    checkpoint: str | None = None,
    judge: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    exclude: tuple[Path, ...] = (),
    timings: dict | None = None,
) -> dict:
    """Score ``generated`` (a folder) against references; returns the report dict.

    ``timings``: when given, filled with seconds per stage (kept out of the report, which must be
    identical run to run).
    """
    if n_boot < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {n_boot}")
    from whispergpt.hub import is_hub_id, resolve_model_dir

    # a Hub id becomes its cached snapshot folder, so the training codec is read from its record
    checkpoint, judge = (
        str(resolve_model_dir(c)) if c is not None and is_hub_id(c) else c for c in (checkpoint, judge)
    )
    clock = _Clock(timings)
    sets = clips_mod.load(clips_mod.discover(generated, reference, exclude))
    gen, refs = sets.generated, sets.references
    pairs = [g for g in gen if g.reference is not None]
    clock("load audio")
    cdc, codec_source = load_codec(codec, checkpoint, device)
    clock("load codec")

    # one encoder pass per clip: latents (D, T) of whole files; continuation regions sliced below
    lat_list = encode_clips(cdc, [c.wave for c in gen + refs])
    lat_of = {id(c): lat for c, lat in zip(gen + refs, lat_list)}
    codes_of = {k: cdc.quantize(lat[None])[0] for k, lat in lat_of.items()}  # (K, T) per clip, once
    cont_len = {id(g.reference): lat_of[id(g)].shape[1] - g.start for g in pairs}
    clock("codec latents")

    def region(c) -> tuple[int, int]:  # continuation frames [a, b) of a clip
        a = c.start
        return a, a + cont_len.get(id(c), lat_of[id(c)].shape[1] - a)

    def emb(c) -> np.ndarray:
        a, b = region(c)
        return pool_latent(lat_of[id(c)][:, :b], a)

    with one_blas_thread():
        g_emb = np.stack([emb(c) for c in gen])
        r_emb = np.stack([emb(c) for c in refs]) if refs else None
    if r_emb is None:
        dist = {k: dict(value=None, ci=None, reason="no reference clips") for k in ("fd", "mmd")}
    else:
        dist = distribution_metrics(g_emb, r_emb, n_boot=n_boot, seed=seed)
    clock("distribution metrics")
    dist["embedding"] = dict(
        space=f"codec latent ({cdc.name}), [mean, std] over time", dim=int(g_emb.shape[1])
    )

    # paired metrics
    per_pair = []
    for g in pairs:
        r = g.reference
        gw = g.wave[g.start * HOP_LENGTH :].double().numpy()
        rw = r.wave[r.start * HOP_LENGTH :].double().numpy()
        m = paired_metrics(gw, rw)
        m["mel_distance"] = float(np.mean(m["mel_distance_curve"]))
        per_pair.append(dict(key=g.key, generated=str(g.path), reference=str(r.path), **m))
    paired: dict = {}
    if not per_pair:
        reason = "no generated clip has a reference (see the pairing rule)"
        paired = {k: dict(value=None, ci=None, n=0, reason=reason) for k in PAIRED_SCALARS}
        paired["mel_distance_curve"] = dict(seconds=[], value=[], ci=[], n=[], reason=reason)
    else:
        for s, (name, (direction, unit)) in enumerate(PAIRED_SCALARS.items()):
            paired[name] = mean_summary(
                [p[name] for p in per_pair], n_boot, seed, 10 + s, direction=direction, unit=unit
            )
        longest = max(len(p["mel_distance_curve"]) for p in per_pair)
        curve = [
            mean_summary([p["mel_distance_curve"][s] for p in per_pair if len(p["mel_distance_curve"]) > s],
                     n_boot, seed, 1000 + s)
            for s in range(longest)
        ]  # fmt: skip
        paired["mel_distance_curve"] = dict(
            seconds=list(range(1, longest + 1)),
            value=[c["value"] for c in curve],
            ci=[c["ci"] for c in curve],
            n=[c["n"] for c in curve],
            reason=None,
        )

    clock("paired metrics")

    # token statistics of the continuations (codes at the codec's own bandwidth)
    def stats_of(items) -> list[dict]:
        out = []
        for c in items:
            a, b = region(c)
            codes = codes_of[id(c)][:, a:b]  # (K, T)
            out.append(token_stats(codes, c.wave[a * HOP_LENGTH : b * HOP_LENGTH]))
        return out

    tokens: dict = dict(codec=cdc.name, bandwidth=cdc.bandwidth, num_codebooks=cdc.num_codebooks)
    for side, items in (("generated", gen), ("reference", refs)):
        st = stats_of(items)
        if not st:
            tokens[side] = None
            continue
        K = len(st[0]["entropy_bits"])
        tokens[side] = dict(
            n=len(st),
            entropy_bits=[
                mean_summary([x["entropy_bits"][k] for x in st], n_boot, seed, 200 + k) for k in range(K)
            ],
            repetition=[
                mean_summary([x["repetition"][k] for x in st], n_boot, seed, 300 + k) for k in range(K)
            ],
            silent_share=mean_summary([x["silent_share"] for x in st], n_boot, seed, 400),
            entropy_bits_mean=mean_summary(
                [float(np.mean(x["entropy_bits"])) for x in st], n_boot, seed, 401
            ),
            repetition_mean=mean_summary([_mean(x["repetition"]) for x in st], n_boot, seed, 402),
        )
    clock("token statistics")
    nll = {}
    for name, ck in (("checkpoint", checkpoint), ("judge", judge)):
        if ck is not None:
            nll[name] = _nll_block(name, ck, cdc, gen, refs, lat_of, codes_of, n_boot, seed)
            clock(f"NLL under --{name}")

    return dict(
        generated_dir=str(Path(generated).resolve()),
        reference_dir=None if reference is None else str(Path(reference).resolve()),
        codec=dict(name=cdc.name, bandwidth=cdc.bandwidth, source=codec_source),
        seed=seed,
        bootstrap=n_boot,
        counts=dict(generated=len(gen), reference=len(refs), pairs=len(pairs)),
        skipped=sets.skipped,
        resampled=sets.resampled,
        distribution=dist,
        paired=paired,
        tokens=tokens,
        nll=nll,
        per_pair=per_pair,
        clips=[dict(key=c.key, file=str(c.path), prompt_frames=c.start,
                    reference=None if c.reference is None else str(c.reference.path)) for c in gen],
    )  # fmt: skip


def round_floats(obj, digits: int = 6):
    """Floats to ``digits`` significant digits, NaN/inf to None (JSON-safe, stable across BLAS builds)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj
