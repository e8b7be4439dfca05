"""Running the fine acoustic stage (``models/fine.py``) over audio of any length.

Tiling (sampling and evaluation alike)
--------------------------------------
The fine model sees windows of ``context`` frames (AudioLM's 3 s chunks at the default 225), with
bidirectional attention inside each. Audio of ``T > context`` frames is covered by full-length
windows starting every ``stride = context - overlap`` frames, the last one aligned to the end of the
audio (so every window is as long as the training crops). Consecutive windows overlap by at least
``overlap`` frames; each frame is taken from exactly one window, the one it is further from the edge
of: the cut between two windows lies in the middle of their overlap. So every frame has at least
``overlap // 2`` frames of context on either side (except at the ends of the audio), and the kept
parts of the windows partition ``[0, T)``. Audio of ``T <= context`` frames is one window.
``overlap`` defaults to ``context // 4``: ~1.33x the work of cutting without overlap, and no frame
at a window edge (where its attention sees only one side) except at the ends.

Sampling goes stage by stage across all windows at once: stage ``k`` runs every window (batched)
on the codebooks ``< k`` of the whole audio, then writes each window's kept frames of codebook
``k``. Stage ``k + 1`` therefore reads, in every window and also in the overlaps, the one final
codebook ``k``, never a neighbour's discarded guess. ``K - Kc`` batched passes in all.

Default decoding is argmax (``temperature 0``), as VALL-E decodes its non-autoregressive stage: one
shot per codebook, every frame drawn independently, so sampling adds frame-to-frame noise that no
later step can smooth.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from whispergpt.audio import FRAME_RATE
from whispergpt.errors import InputError
from whispergpt.inference.generate import check_sampling_args, sample_tokens
from whispergpt.models.fine import FineModel


@dataclass(frozen=True)
class FineWindow:
    """Frames ``[start, end)`` of file ``file_index`` are fed; ``[keep_from, keep_to)`` are kept/scored."""

    start: int
    end: int
    keep_from: int
    keep_to: int
    file_index: int = 0


def default_overlap(context: int) -> int:
    return context // 4


def fine_windows(
    num_frames: int, context: int, overlap: int | None = None, file_index: int = 0
) -> list[FineWindow]:
    """The windows covering ``num_frames`` frames (module docstring)."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    overlap = default_overlap(context) if overlap is None else overlap
    if not 0 <= overlap < context:
        raise ValueError(f"overlap must be in [0, context={context}), got {overlap}")
    if num_frames <= context:
        return [FineWindow(0, num_frames, 0, num_frames, file_index)] if num_frames > 0 else []
    stride = context - overlap
    starts = list(range(0, num_frames - context, stride)) + [num_frames - context]
    cuts = [0] + [(b + a + context) // 2 for a, b in zip(starts, starts[1:])] + [num_frames]
    return [FineWindow(s, s + context, cuts[i], cuts[i + 1], file_index) for i, s in enumerate(starts)]


@torch.inference_mode()
def fine_generate(
    model: FineModel,
    coarse: torch.Tensor,
    *,
    prefix: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 0.0,
    overlap: int | None = None,
    generator: torch.Generator | None = None,
    max_rows: int = 64,
) -> torch.Tensor:
    """All ``K`` codebooks ``(B, K, T)`` from the coarse ones: ``coarse (B, >= Kc, T)`` (codebooks
    ``0..Kc-1`` are used). ``prefix (B or 1, K, Tp)``: known codes of the first ``Tp`` frames (a
    prompt), kept as they are and read by the later frames' windows. ``max_rows``: windows x batch
    run per forward (bounds the logits' memory)."""
    c = model.config
    K, Kc = c.num_codebooks, c.coarse_codebooks
    check_sampling_args(temperature, top_k, top_p)
    model.check_codes(coarse, Kc)
    model.eval()
    dev = model.tok_emb.weight.device
    B, _, T = coarse.shape
    codes = torch.zeros(B, K, T, dtype=torch.long, device=dev)  # (B, K, T)
    codes[:, :Kc] = coarse[:, :Kc].to(dev)
    Tp = 0
    if prefix is not None:
        if prefix.dim() != 3 or prefix.shape[0] not in (1, B) or prefix.shape[1] != K or prefix.shape[2] > T:
            raise ValueError(f"prefix must be (1 or {B}, {K}, Tp <= {T}), got {tuple(prefix.shape)}")
        Tp = prefix.shape[2]
        model.check_codes(prefix, K)
    windows = fine_windows(T, c.context, overlap)
    L = windows[0].end - windows[0].start if windows else 0  # every window has this length
    per_call = max(1, max_rows // B)
    for k in range(Kc, K):
        for lo in range(0, len(windows), per_call):
            group = windows[lo : lo + per_call]
            x = torch.stack([codes[:, :k, w.start : w.end] for w in group])  # (n, B, k, L)
            logits = model.stage_logits(x.view(-1, k, L), k)  # (n*B, L, V)
            tok = sample_tokens(logits, temperature, top_k, top_p, generator).view(len(group), B, L)
            for i, w in enumerate(group):
                codes[:, k, w.keep_from : w.keep_to] = tok[i, :, w.keep_from - w.start : w.keep_to - w.start]
        if Tp:
            codes[:, k, :Tp] = prefix[:, k].to(dev)
    return codes


@torch.no_grad()
def score_fine_windows(
    model: FineModel,
    codes_of: dict[int, torch.Tensor],
    windows: list[FineWindow],
    totals,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> None:
    """Teacher-forced NLL of the fine codebooks over ``windows`` (each frame scored once), added to
    ``totals`` (``evaluate.Totals``); ``codes_of[i] (K, N_i)`` holds whole files."""
    Kc = model.config.coarse_codebooks
    by_len: dict[int, list[FineWindow]] = {}
    for w in windows:
        by_len.setdefault(w.end - w.start, []).append(w)
    for length, group in sorted(by_len.items()):
        for b in range(0, len(group), batch_size):
            batch = group[b : b + batch_size]
            codes = torch.stack([codes_of[w.file_index][:, w.start : w.end] for w in batch]).to(
                device
            )  # (B, K, T)
            frame = torch.arange(length, device=device)[None, :]  # (1, T)
            lo = torch.tensor([w.keep_from - w.start for w in batch], device=device)[:, None]
            hi = torch.tensor([w.keep_to - w.start for w in batch], device=device)[:, None]
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                logits = model(codes).logits  # (B, S, T, V)
            totals.add(logits.float(), codes[:, Kc:], (frame >= lo) & (frame < hi))


# --- `sample --fine` ----------------------------------------------------------------------------------


def same_codec(a: tuple[str, float], b: tuple[str, float]) -> bool:
    """Same codec (``codec.same_codec_name``) at the same bandwidth: ``(name, kbps)`` pairs."""
    from whispergpt.codec import same_codec_name

    (na, ba), (nb, bb) = a, b
    return same_codec_name(na, nb) and float(ba) == float(bb)


def check_pairing(coarse_config, coarse_ckpt: Path, fine: FineModel, fine_ckpt: Path) -> list[str]:
    """InputError (exit 2, naming both values) unless the fine model fits the coarse decoder:
    same K, V and training codec, and Kc no more than the codebooks the decoder generates.
    Returns notes for stderr."""
    from whispergpt.training.record import training_codec

    f = fine.config
    hint = "train the fine stage on data prepared with the coarse model's codec (K, V, bandwidth)"
    for key in ("num_codebooks", "codebook_size"):
        have, want = getattr(f, key), getattr(coarse_config, key)
        if have != want:
            raise InputError(
                f"--fine {key}={have} does not match the coarse model's {key}={want} ({coarse_ckpt})",
                fine_ckpt,
                hint,
            )
    generated = coarse_config.input_codebooks
    if f.coarse_codebooks > generated:
        raise InputError(
            f"--fine needs codebooks 0..{f.coarse_codebooks - 1} (coarse_codebooks={f.coarse_codebooks}) but the "
            f"coarse model ({coarse_ckpt}, pattern {coarse_config.pattern}) generates {generated}",
            fine_ckpt,
            "use a fine stage trained with fine.coarse_codebooks <= the decoder's generated codebooks",
        )
    notes = []
    if generated > f.coarse_codebooks:
        notes.append(
            f"the coarse model generates {generated} codebooks; --fine keeps 0..{f.coarse_codebooks - 1} "
            f"and predicts {f.coarse_codebooks}..{f.num_codebooks - 1}"
        )
    a, b = training_codec(coarse_ckpt), training_codec(fine_ckpt)
    if a is None or b is None:
        notes.append("no training record names the codec of one of the checkpoints: codec match not checked")
    elif not same_codec(a, b):
        raise InputError(
            f"--fine was trained with codec {b[0]} @ {b[1]} kbps, the coarse model ({coarse_ckpt}) with "
            f"{a[0]} @ {a[1]} kbps",
            fine_ckpt,
            hint,
        )
    return notes


@dataclass
class FineStage:
    """A loaded, checked fine stage for ``sample``: call it on generated codes, then ``record()``."""

    model: FineModel
    checkpoint: Path
    temperature: float = 0.0
    overlap: int | None = None
    seed: int = 0
    seconds: float = 0.0  # wall time of the calls so far
    frames: int = 0  # frames x samples filled so far
    notes: list[str] = field(default_factory=list)

    def __call__(self, codes: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """``codes (B, >= Kc, T)`` -> ``(B, K, T)``; ``prefix``: see ``fine_generate``."""
        dev = self.model.tok_emb.weight.device
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        t0 = time.perf_counter()
        out = fine_generate(
            self.model,
            codes,
            prefix=prefix,
            temperature=self.temperature,
            overlap=self.overlap,
            generator=gen,
        )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.seconds += time.perf_counter() - t0
        self.frames += codes.shape[0] * codes.shape[-1]
        return out

    def record(self) -> dict:
        c = self.model.config
        return dict(
            checkpoint=str(self.checkpoint),
            model=dict(
                num_codebooks=c.num_codebooks,
                coarse_codebooks=c.coarse_codebooks,
                context=c.context,
                parameters=self.model.num_parameters(),
            ),
            temperature=self.temperature,
            overlap=default_overlap(c.context) if self.overlap is None else self.overlap,
            notes=self.notes,
            timing=dict(
                fine_s=self.seconds,
                real_time_factor=self.frames / FRAME_RATE / self.seconds if self.seconds > 0 else None,
            ),
        )


def load_fine_stage(
    path: str | os.PathLike,
    coarse_config,
    coarse_ckpt: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    temperature: float = 0.0,
    seed: int = 0,
) -> FineStage:
    """``--fine PATH`` (a model dir or a run out_dir) opened and checked against the coarse model."""
    from whispergpt.training.record import open_stage

    check_sampling_args(temperature, 0, 0.0)
    ckpt, model = open_stage(
        path, FineModel, "--fine", "train one with a fine recipe (fine_tiny.yaml, fine_quickstart.yaml)"
    )
    notes = check_pairing(coarse_config, coarse_ckpt, model, ckpt)
    model = model.to(device, dtype).eval()
    return FineStage(model, ckpt, temperature=temperature, seed=seed, notes=notes)
