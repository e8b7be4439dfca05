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
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from whispergpt.audio import SAMPLE_RATE, log_mel
from whispergpt.codec.checkpoint import (
    CODEC_STATE,
    export_codec,
    load_safetensors,
    resume_checkpoint,
    save_checkpoint,
)
from whispergpt.codec.corpus import CropSampler, find_audio_files, load_corpus
from whispergpt.codec.losses import (
    MultiScaleSTFTDiscriminator,
    disc_hinge_loss,
    gen_adv_losses,
)
from whispergpt.codec.rvq import rvq_for_encodec
from whispergpt.codec.trainable import CodecTrainConfig, TrainableCodec, build_encodec
from whispergpt.config_io import dump_yaml, to_dict
from whispergpt.errors import InputError
from whispergpt.runtime import main_process_lock, make_accelerator, seed_everything, write_atomic

# ---------------------------------------------------------------------------------------------
# config


# ---------------------------------------------------------------------------------------------
# model


# ---------------------------------------------------------------------------------------------
# training


# the sections whose keys shape the checkpoint's tensors (the others may change on a resume)
SHAPING_SECTIONS = ("model", "quantizer", "teachers")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_drift(saved: dict, run: dict, checkpoint: Path) -> None:
    """The checkpoint's config against this run's, before any tensor is read: every differing key
    of the sections that shape tensors, in one line (instead of a state_dict traceback)."""
    a = _flat({k: saved.get(k, {}) for k in SHAPING_SECTIONS if k in run})
    b = _flat({k: run[k] for k in SHAPING_SECTIONS if k in run})
    diffs = [f"{k}: {a.get(k, '<absent>')!r} (checkpoint) vs {b.get(k, '<absent>')!r} (this run)"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip
    if diffs:
        raise InputError("the checkpoint's codec differs from the config: " + "; ".join(diffs), checkpoint,
                         "resume with the same keys, or train into a new --out")  # fmt: skip


def build_generator(cfg: CodecTrainConfig) -> TrainableCodec:
    """The EnCodec-architecture codec to train: a fresh ``EncodecModel`` (or ``model.init``'s)
    around our trainable ``ResidualVQ``."""
    model = build_encodec(cfg.model)
    if cfg.model.init and list(model.config.target_bandwidths) != list(cfg.model.target_bandwidths):
        print(f"codec train: using the pretrained model's bandwidths {list(model.config.target_bandwidths)}")
    q = cfg.quantizer
    rvq = rvq_for_encodec(model, decay=q.decay, eps=q.eps, kmeans_iters=q.kmeans_iters,
                          dead_threshold=q.dead_threshold, mean_decay=q.mean_decay)  # fmt: skip
    return TrainableCodec(model, rvq, lsuv=cfg.model.lsuv_init, pretrained=bool(cfg.model.init))


def train(
    cfg: Any,
    audio: list[str | os.PathLike],
    out: str | os.PathLike,
    build: Callable[[Any], nn.Module] = build_generator,
    command: str = "codec train",
) -> dict:
    """Train a codec on ``audio`` (files/directories) into ``out``; returns the last metrics row.
    ``build(cfg)`` gives the trainable codec: EnCodec's by default, or any module with
    ``TrainableCodec``'s trainer-facing methods (``llm_codec`` passes its own). ``cfg`` has the
    ``quantizer``, ``loss``, ``data`` and ``train`` sections of ``CodecTrainConfig``. One writer
    per ``out``: a second job into it fails at once naming the first."""
    out = Path(out)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    acc = make_accelerator()
    with main_process_lock(acc, out, command):
        return _train(cfg, audio, out, acc, build, command)


def _train(cfg: Any, audio: list[str | os.PathLike], out: Path, acc, build: Callable[[Any], nn.Module],
           command: str) -> dict:  # fmt: skip
    import auraloss
    from tqdm.auto import tqdm

    main = acc.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{command}: resolved config\n{dump_yaml(cfg)}", flush=True)
        write_atomic(out / "codec_train.yaml", dump_yaml(cfg))
    files = find_audio_files(audio)
    waves, skipped = load_corpus(files)
    segment = round(cfg.data.segment_seconds * SAMPLE_RATE)
    sampler = CropSampler(waves, segment, cfg.train.seed, cfg.data.min_rms)
    if main:
        print(
            f"{command}: {len(waves)} files, {sampler.seconds / 60:.1f} min of audio, {len(skipped)} skipped",
            flush=True,
        )

    seed_everything(cfg.train.seed)
    gen = build(cfg)
    q = cfg.quantizer
    nq_choices = gen.n_q_choices()
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
    ckpt = resume_checkpoint(out, acc) if tc.resume else None
    if ckpt is None:
        with torch.no_grad():
            said = gen.data_init(sampler.batch(cfg.data.batch_size, -100))
        if main and said:
            print(f"{command}: {said}", flush=True)
    if ckpt is not None:
        check_resume_drift(json.loads((ckpt / CODEC_STATE).read_text())["config"], to_dict(cfg), ckpt)
        load_safetensors(gen, ckpt / "generator.safetensors")
        if disc is not None and (ckpt / "discriminator.safetensors").is_file():
            load_safetensors(disc, ckpt / "discriminator.safetensors")
        opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        opt_g.load_state_dict(opt_state["opt_g"])
        if opt_d is not None and opt_state.get("opt_d"):
            opt_d.load_state_dict(opt_state["opt_d"])
        start = int(json.loads((ckpt / CODEC_STATE).read_text())["step"])
        if main:
            print(f"{command}: resumed from {ckpt} (step {start})", flush=True)

    gen.to(acc.device)
    if disc is not None:
        gen, disc, opt_g, opt_d = acc.prepare(gen, disc, opt_g, opt_d)
    else:
        gen, opt_g = acc.prepare(gen, opt_g)
    raw_gen = acc.unwrap_model(gen)

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
        with torch.no_grad():
            raw_gen.init_quantizer(
                [sampler.batch(cfg.data.batch_size, -1 - i, acc.process_index).to(acc.device)
                 for i in range(q.kmeans_batches)]
            )  # fmt: skip

    for step in bar:
        wave = sampler.batch(cfg.data.batch_size, step, acc.process_index).to(acc.device)  # (B, S)
        warm = step < q.warmup_steps
        raw_gen.freeze_encoder = q.freeze_encoder and not warm
        if not warm and not raw_gen.quantizer_ready:
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
        extra = raw_gen.extra_losses(wave, recon, rq)  # weighted already (e.g. LLM-Codec's teachers)
        loss = (
            cfg.loss.l1 * l1
            + cfg.loss.stft * spec
            + cfg.loss.mel * mel
            + q.commitment_weight * rq.commit_loss
            + sum(extra.values(), torch.zeros((), device=wave.device))
        )
        row = {"l1": l1.item(), "stft": spec.item(), "mel": mel.item(), "commit": rq.commit_loss.item()}
        row.update({k: v.item() for k, v in extra.items()})
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
        row["dead_replaced"] = raw_gen.replaced_codes(n_q)
        # perplexity of the first codebook's codes in this batch: collapse shows up here first
        first = raw_gen.first_codes(rq)
        if first is not None:
            counts = torch.bincount(first.reshape(-1), minlength=raw_gen.codebook_size).double()
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
