"""``whispergpt eval``: teacher-forced next-token metrics of checkpoints on a whole prepared split.

Usage::

    whispergpt eval --checkpoint DIR [--checkpoint DIR ...] --data DIR [--split val]
                    [--out report.json] [--mel both|truth|decoded] [--overlap N]
                    [--batch-size 16] [--codec NAME_OR_PATH] [--precision auto|fp32|bf16]
    accelerate launch [--config_file configs/accelerate/ddp_cpu.yaml] -m whispergpt eval ...

Metrics (overall and per scored codebook): NLL in nats per token, perplexity ``exp(NLL)``, top-1
accuracy, bits per second of audio (``nll_sum / ln 2 / seconds``, seconds = scored frames / 75)
and the token counts. Sums and counts are all-reduced across ranks before any division.

Tiling (each target token counted exactly once): a file of ``N`` frames is covered by windows of
``context`` frames (the model's) starting every ``stride = context - overlap`` frames
(``overlap`` defaults to ``context // 2``). The first window scores all its frames; every later
window scores only the frames past the end of the previous window, so each scored token has at
least ``overlap`` frames of left context (except in the first window) and the scored frames of a
file partition ``[0, N)``. The last window is cut at the end of the file.

Mel sources for hybrid models (``fusion != none``), labelled everywhere:

- ``mel=truth (ground-truth audio)``: the dataset's mel, computed from the original audio (the
  paper's setting; optimistic for a generative model);
- ``mel=decoded (codec-decoded tokens)``: ``log_mel`` of the audio the codec decodes from the
  ground-truth codes of the codebooks the model generates (codebook 0 for ``coarse``, all K for
  ``parallel``/``delay``), which is what the model sees at sampling time. The codec is the
  dataset's (manifest ``codec`` + ``bandwidth``) unless ``--codec`` names another. Decoding is
  causal, so each file is decoded once and sliced per window.

Token-only models (``fusion: none``) are evaluated once, mel source ``n/a``.

Fine stages (``models/fine.py``) score codebooks ``Kc..K-1`` given the true codebooks ``< k``, tiled
as they sample (``fine_stage``; ``--overlap`` default ``context // 4``). The ``bits_per_second``
table (``metrics.bits``) ranks all checkpoints on bits/s over all K codebooks, coarse + fine paired.

Semantic LMs (``models/semantic_lm.py``) score the split's ``semantic`` stream at their own rate
(``evaluation.semantic``): NLL per semantic token, bits/s over the seconds the tokens cover.

Outputs (main process): a markdown table on stdout; with ``--out X.json`` also ``X.md`` and
``X.png`` (NLL per codebook per checkpoint and mel source, and val NLL over training steps from
each run's ``metrics.jsonl``, found in the checkpoint directory or its parents).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from whispergpt.codec.codec import codec_latent
from whispergpt.data import PreparedDataset
from whispergpt.evaluation.bits import bits_markdown, bits_rows
from whispergpt.evaluation.semantic import (
    check_semantic_data,
    reads_semantic,
    score_semantic,
    semantic_summary,
)
from whispergpt.evaluation.windows import Totals, evaluate_windows, tile_file
from whispergpt.inference.fine_stage import default_overlap, fine_windows, score_fine_windows
from whispergpt.models import FineModel, SemanticLM, WhisperGPT, load_pretrained
from whispergpt.models.semantic import check_semantic_tokenizer
from whispergpt.runtime import choose_precision, replacing, write_atomic, write_json_atomic

MEL_LABELS = {
    "truth": "mel=truth (ground-truth audio)",
    "decoded": "mel=decoded (codec-decoded tokens)",
    "n/a": "mel=n/a (token-only)",
    "codec_latent": "mel=codec_latent (the codec latent of the tokens)",
}
LN2 = math.log(2.0)


# --- tiling ---------------------------------------------------------------------------------------


# --- metric accumulation ----------------------------------------------------------------------------


def summarize_totals(totals: torch.Tensor, frame_rate: float, first_codebook: int = 0) -> dict:
    """``totals (3, Ks)`` = (nats, correct, tokens) summed over everything -> the metrics dict;
    the scored codebooks are ``first_codebook ..`` (a fine stage's start at ``Kc``).

    Seconds of audio = scored frames / frame_rate, where every scored codebook covers the same
    frames (so frames = tokens of codebook 0); ``nats_per_frame`` sums the per-codebook NLLs.
    """
    nats, correct, tokens = (totals[i].double().cpu() for i in range(3))
    if tokens.min() <= 0:
        raise ValueError("no tokens were scored: is the split empty?")
    frames = int(tokens[0])
    seconds = frames / frame_rate

    def block(n: float, c: float, k: float) -> dict:
        nll = n / k
        return dict(
            nll=nll,
            ppl=math.exp(min(nll, 700.0)),
            acc=c / k,
            bits_per_second=n / LN2 / seconds,
            tokens=int(k),
        )

    out = block(float(nats.sum()), float(correct.sum()), float(tokens.sum()))
    out.update(frames=frames, seconds=seconds, nats_per_frame=float((nats / tokens).sum()))
    out["per_codebook"] = [
        dict(codebook=first_codebook + k, **block(float(nats[k]), float(correct[k]), float(tokens[k])))
        for k in range(len(tokens))
    ]
    return out


# --- model / data helpers ---------------------------------------------------------------------------


def config_summary(model: WhisperGPT | FineModel) -> dict:
    c = model.config
    if isinstance(model, SemanticLM):
        return semantic_summary(model)
    if isinstance(model, FineModel):
        keys = ("d_model", "n_layers", "context", "num_codebooks", "coarse_codebooks")
        return dict(fusion="none", pattern="fine", num_parameters=model.num_parameters(),
                    scored_codebooks=model.num_scored_codebooks, **{k: getattr(c, k) for k in keys})  # fmt: skip
    return dict(
        fusion=c.fusion,
        pattern=c.pattern,
        num_parameters=model.num_parameters(),
        d_model=c.d_model,
        n_layers=c.n_layers,
        context=c.context,
        num_codebooks=c.num_codebooks,
        scored_codebooks=model.num_scored_codebooks,
        semantic=c.semantic,
    )


def trained_mel_source(checkpoint: str | os.PathLike, model: WhisperGPT) -> str:
    """The mel the model was trained on ("truth"/"decoded"; "n/a" for token-only), from the
    training record next to its weights (``whispergpt.training.record``; "unknown" if absent)."""
    from whispergpt.training.record import read_training_record

    if getattr(model.config, "fusion", "none") == "none":
        return "n/a"
    record = read_training_record(checkpoint) or {}
    return str(record.get("mel_source", "unknown"))


def decoded_codebooks(model: WhisperGPT) -> int:
    """Codebooks the model generates, i.e. what a sampler can decode: 1 for coarse, else K."""
    return 1 if model.config.pattern == "coarse" else model.config.num_codebooks


DECODE_WINDOW = 1500  # frames (20 s) decoded at a time: memory bounded whatever the file length


def decoded_mel(codec, codes: torch.Tensor, n_mels: int, window: int = DECODE_WINDOW) -> torch.Tensor:
    """``codes (Kd, T)`` of a whole file -> log-mel ``(M, T)`` of the codec-decoded audio (CPU).

    Decoded ``window`` frames at a time: with the ``StreamingDecoder`` (state carried over, so equal
    to a whole-file decode up to float rounding) and the causal mel of each chunk computed with
    the previous chunk's last samples in front. A codec the streaming decoder does not know is
    decoded whole.
    """
    from whispergpt.audio import HOP_LENGTH, WIN_LENGTH, log_mel
    from whispergpt.codec.streaming import StreamingDecoder

    if window < 1:
        raise ValueError(f"decode window must be >= 1 frame, got {window}")
    T = codes.shape[-1]
    if T <= window or not StreamingDecoder.supported(codec):
        wave = codec.decode(codes[None].to(codec.device))[0]  # (T * 320,)
        mel = log_mel(wave, n_mels=n_mels).float().cpu()  # (M, T)
    else:
        stream = StreamingDecoder(codec, 1, codes.shape[0])
        ctx = -(-(WIN_LENGTH - HOP_LENGTH) // HOP_LENGTH)  # frames of left context a mel frame reads
        tail = None  # (ctx * 320,) last samples of the previous chunk
        parts = []
        for lo in range(0, T, window):
            with torch.no_grad():
                wave = stream.push(codes[None, :, lo : lo + window])[0]  # (n * 320,)
            seg = wave if tail is None else torch.cat([tail, wave])
            part = log_mel(seg, n_mels=n_mels).float()  # (M, [ctx +] n)
            parts.append(part[:, (seg.shape[-1] - wave.shape[-1]) // HOP_LENGTH :].cpu())
            tail = seg[-ctx * HOP_LENGTH :]
        mel = torch.cat(parts, dim=-1)
    assert mel.shape == (n_mels, T), (mel.shape, codes.shape)
    return mel


def check_compatible(model: WhisperGPT, ds: PreparedDataset, where: str) -> None:
    c = model.config
    for key, have in (("num_codebooks", ds.num_codebooks), ("codebook_size", ds.codebook_size)):
        if getattr(c, key) != have:
            raise ValueError(f"{where}: model {key}={getattr(c, key)} but the dataset has {key}={have}")
    latent = getattr(c, "mel_input", "log_mel") == "codec_latent"  # its width is the codec's, checked there
    if getattr(c, "fusion", "none") != "none" and not latent and c.n_mels != ds.n_mels:
        raise ValueError(f"{where}: model n_mels={c.n_mels} but the dataset has n_mels={ds.n_mels}")
    if getattr(c, "semantic", "none") != "none":  # conditioned on semantic tokens: the same tokenizer's
        check_semantic_tokenizer(c, ds.manifest.get("semantic_tokenizer"), where)


def mel_sources(model: WhisperGPT | FineModel, mel: str) -> list[str]:
    if getattr(model.config, "fusion", "none") == "none":
        return ["n/a"]
    if getattr(model.config, "mel_input", "log_mel") == "codec_latent":
        return ["codec_latent"]  # computed from the codes, whatever --mel says
    if mel == "codec_latent":
        raise ValueError("mel codec_latent: this hybrid reads a log-mel (use both, truth or decoded)")
    return ["truth", "decoded"] if mel == "both" else [mel]


def find_metrics_file(checkpoint: str | os.PathLike, levels: int = 3) -> Path | None:
    """The run's ``metrics.jsonl``: in the checkpoint directory or one of its ``levels`` parents."""
    d = Path(checkpoint).resolve()
    for _ in range(levels + 1):
        if (d / "metrics.jsonl").is_file():
            return d / "metrics.jsonl"
        d = d.parent
    return None


def read_val_curve(path: Path | None) -> list[tuple[int, float]]:
    """``(step, val_nll)`` pairs of a metrics.jsonl (torn or foreign lines are skipped)."""
    if path is None:
        return []
    curve = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "val_nll" in rec and "step" in rec:
            curve.append((int(rec["step"]), float(rec["val_nll"])))
    return curve


def checkpoint_name(path: str | os.PathLike, taken: set[str]) -> str:
    """A short label: the run folder's name for ``RUN/final`` or ``RUN/checkpoints/step-N``."""
    p = Path(path).resolve()
    name = p.name
    if name == "final":
        name = p.parent.name
    elif p.parent.name == "checkpoints":
        name = f"{p.parent.parent.name}@{name}"
    base, i = name, 2
    while name in taken:
        name, i = f"{base}#{i}", i + 1
    taken.add(name)
    return name


def manifest_record(ds: PreparedDataset) -> dict:
    path = ds.directory / "manifest.json"
    manifest = dict(ds.manifest)
    manifest["skipped"] = len(manifest.get("skipped", []))  # the count; the list stays in the file
    return dict(
        dir=str(ds.directory.resolve()),
        split=ds.split,
        files=len(ds.files),
        frames=ds.total_frames,
        seconds=ds.total_frames / ds.frame_rate,
        manifest_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        manifest=manifest,
    )


# --- the evaluation ---------------------------------------------------------------------------------


def evaluate(
    checkpoints: list[str],
    data: str,
    split: str = "val",
    mel: str = "both",
    overlap: int | None = None,
    batch_size: int = 16,
    codec: str | None = None,
    precision: str = "auto",
    files_per_group: int = 64,
    accelerator=None,
) -> dict:
    """Evaluate ``checkpoints`` on ``data``/``split``; returns the report dict (same on every rank).

    ``accelerator``: an ``accelerate.Accelerator`` (made here if None); files are sharded across
    its processes and the sums all-reduced.
    """
    if mel not in ("both", "truth", "decoded", "codec_latent"):
        raise ValueError(f"mel must be 'both', 'truth', 'decoded' or 'codec_latent', got {mel!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    acc = accelerator if accelerator is not None else make_accelerator()
    device = acc.device
    cuda = device.type == "cuda"
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" and not cuda:
        raise ValueError("precision bf16 needs a CUDA device; use fp32 (or auto) on CPU")
    use_bf16 = choose_precision(precision, device) == "bf16"
    autocast_dtype = torch.bfloat16 if use_bf16 else None

    ds = PreparedDataset(data, split)
    if not ds.files:
        raise ValueError(f"{data}: split {split!r} has no files")
    models: list[tuple[str, WhisperGPT | FineModel, list[str]]] = []  # (name, model, mel sources)
    names: set[str] = set()

    def overlap_of(model: WhisperGPT | FineModel) -> int:
        ctx = model.config.context
        default = default_overlap(ctx) if isinstance(model, FineModel) else ctx // 2
        return default if overlap is None else overlap

    for ck in checkpoints:
        try:
            model = load_pretrained(ck)
        except OSError as e:
            raise ValueError(str(e)) from e
        (check_semantic_data if isinstance(model, SemanticLM) else check_compatible)(model, ds, ck)
        ctx, ov = model.config.context, overlap_of(model)
        if not 0 <= ov < ctx:
            raise ValueError(f"--overlap must be in [0, context={ctx}) for {ck}, got {ov}")
        models.append((checkpoint_name(ck, names), model.to(device).eval(), mel_sources(model, mel)))

    # the semantic stream, read only when a model is conditioned on it or is a semantic LM (missing:
    # names prepare --semantic)
    sem_ds = None
    if any(reads_semantic(m) for _, m, _ in models):
        sem_ds = PreparedDataset(data, split, streams=("semantic",))
    need_decoded = sorted({decoded_codebooks(m) for _, m, srcs in models if "decoded" in srcs})
    cdc = None
    if need_decoded:
        from whispergpt.codec import open_codec

        name = codec or ds.manifest.get("codec")
        if not name:
            raise ValueError(f"{data}: the manifest names no codec; pass --codec (or --mel truth)")
        try:
            cdc, note = open_codec(
                name,
                num_codebooks=ds.num_codebooks,
                codebook_size=ds.codebook_size,
                bandwidth=float(ds.manifest.get("bandwidth", 6.0)),
                device=device,
            )
        except (OSError, ValueError) as e:
            raise ValueError(
                f"mel=decoded needs the dataset's codec: {e}\nPass --codec DIR, or --mel truth to skip it."
            ) from e
        if note and acc.is_main_process:
            print(f"note: {note}", file=sys.stderr)

    table = None  # the dataset codec's codebooks, for codec_latent models
    if any("codec_latent" in srcs for _, _, srcs in models):
        from whispergpt.data.dataset import codec_latent_table

        table = codec_latent_table(ds.manifest)
        for (_, m, srcs), ck in zip(models, checkpoints):
            if "codec_latent" in srcs and m.config.n_mels != table.shape[-1]:
                raise ValueError(
                    f"{ck}: model n_mels={m.config.n_mels} but the codec latent has C={table.shape[-1]}"
                )
    rank, world = acc.process_index, acc.num_processes
    # longest files first, dealt round-robin: balanced ranks; the sums do not depend on the order
    order = sorted(range(len(ds.files)), key=lambda i: (-ds.files[i]["frames"], i))
    mine = order[rank::world]
    totals = {
        (mi, src): Totals(m.num_scored_codebooks, device)
        for mi, (_, m, srcs) in enumerate(models)
        for src in srcs
    }
    for g in range(0, max(1, len(mine)), files_per_group):
        group = mine[g : g + files_per_group]
        if not group:
            break
        codes_of, truth_of = {}, {}
        for i in group:
            codes_of[i], truth_of[i] = ds.file_arrays(i)  # (K, N), (M, N)
        sem_of = None if sem_ds is None else {i: sem_ds.file_arrays(i)[0] for i in group}  # (N,) each
        dec_of: dict[int, dict[int, torch.Tensor]] = {
            kd: {i: decoded_mel(cdc, codes_of[i][:kd], ds.n_mels) for i in group} for kd in need_decoded
        }
        for mi, (_, model, srcs) in enumerate(models):
            ctx, ov = model.config.context, overlap_of(model)
            if isinstance(model, SemanticLM):
                score_semantic(model, sem_of, ov, totals[(mi, "n/a")], batch_size, device, autocast_dtype)
                continue
            if isinstance(model, FineModel):
                windows = [w for i in group for w in fine_windows(ds.files[i]["frames"], ctx, ov, i)]
                score_fine_windows(
                    model, codes_of, windows, totals[(mi, "n/a")], batch_size, device, autocast_dtype
                )
                continue
            windows = [w for i in group for w in tile_file(ds.files[i]["frames"], ctx, ov, i)]
            for src in srcs:
                mel_of = {"n/a": None, "truth": truth_of}.get(src)
                if src == "decoded":
                    mel_of = dec_of[decoded_codebooks(model)]
                if src == "codec_latent":
                    mel_of = {i: codec_latent(table, codes_of[i]) for i in group}
                conditioned = getattr(model.config, "semantic", "none") != "none"
                evaluate_windows(
                    model, codes_of, mel_of, windows, totals[(mi, src)], batch_size, device, autocast_dtype,
                    sem_of if conditioned else None,
                )  # fmt: skip

    entries = []
    for mi, (name, model, srcs) in enumerate(models):
        ctx, ov = model.config.context, overlap_of(model)
        first = getattr(model, "first_scored_codebook", 0)  # a fine stage scores Kc..K-1
        evals = []
        for src in srcs:
            t = totals[(mi, src)].t
            if world > 1:
                t = acc.reduce(t.contiguous(), "sum")
            rate = model.config.rate if isinstance(model, SemanticLM) else ds.frame_rate  # tokens/s
            m = summarize_totals(t, rate, first)
            evals.append(dict(mel_source=src, mel_label=MEL_LABELS[src], metrics=m))
        metrics_file = find_metrics_file(checkpoints[mi])
        entries.append(
            dict(
                name=name,
                checkpoint=str(Path(checkpoints[mi]).resolve()),
                config=config_summary(model),
                trained_mel_source=trained_mel_source(checkpoints[mi], model),
                tiling=dict(context=ctx, overlap=ov, stride=ctx - ov),
                evaluations=evals,
                metrics_file=None if metrics_file is None else str(metrics_file),
                val_curve=read_val_curve(metrics_file),
            )
        )
    report = dict(
        data=manifest_record(ds),
        world_size=world,
        precision="bf16" if use_bf16 else "fp32",
        decode_codec=None if cdc is None else dict(name=cdc.name, bandwidth=cdc.bandwidth),
        checkpoints=entries,
    )
    report["bits_per_second"] = bits_rows(report)
    return report


def make_accelerator():
    """An Accelerator for evaluation: gloo across CPU processes, NCCL on GPUs (``runtime``'s rule)."""
    from whispergpt.runtime import make_accelerator as runtime_accelerator

    return runtime_accelerator()


# --- reporting --------------------------------------------------------------------------------------


def markdown_table(report: dict) -> str:
    d = report["data"]
    lines = [
        f"Split `{d['split']}` of `{d['dir']}`: {d['files']} files, {d['frames']} frames "
        f"({d['seconds']:.1f} s); next-token metrics, teacher-forced, every frame scored once.",
        "",
        "| checkpoint | fusion | pattern | params | trained on | mel source (eval) | NLL (nats/token) | PPL | top-1 acc | bits/s | tokens | NLL per codebook |",
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in report["checkpoints"]:
        c = e["config"]
        for ev in e["evaluations"]:
            m = ev["metrics"]
            per = ", ".join(f"{p['nll']:.3f}" for p in m["per_codebook"])
            lines.append(
                f"| {e['name']} | {c['fusion']} | {c['pattern']} | {c['num_parameters']:,} | "
                f"mel={e.get('trained_mel_source', 'unknown')} | {ev['mel_label']} | "
                f"{m['nll']:.4f} | {m['ppl']:.2f} | {m['acc']:.4f} | {m['bits_per_second']:.1f} | "
                f"{m['tokens']:,} | {per} |"
            )
    return "\n".join(lines) + "\n\n" + bits_markdown(bits_rows(report))


def write_outputs(report: dict, out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``out`` (JSON) + the markdown table (``.md``) + the plot (``.png``), each written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    write_json_atomic(out, report)
    write_atomic(md, markdown_table(report))
    from whispergpt.plots import plot_report  # matplotlib: only when a figure is drawn

    with replacing(png) as tmp:
        plot_report(report, tmp)
    return out, md, png
