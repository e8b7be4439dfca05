"""Audio in, audio out behind ``whispergpt sample`` / ``python sample.py`` (the flags: ``cli/sample.py``).

::

    python sample.py --checkpoint DIR [--codec NAME_OR_PATH] [--prompt WAV] [--prompt-seconds S]
        --seconds S --out DIR [--num-samples N] [--temperature 1.0] [--top-k 250] [--top-p 0.0]
        [--seed 0] [--device auto] [--precision auto|fp32|bf16] [--decode-dtype fp32|bf16|int8] [--compile]
        [--prompt-mel decoded|truth] [--decoder auto|stream|window]
        [--decode-window 32] [--context-keep 0.75] [--no-progress] [--fine DIR [--fine-temperature 0]]
        [--semantic-lm DIR [--semantic-tokenizer DIR] [--semantic-temperature 1] [--semantic-top-k 0]
         [--semantic-top-p 0]]

Writes ``sample_<i>.wav`` (prompt + continuation), ``sample_<i>_continuation.wav``,
``sample_<i>.png`` (log-mel, prompt boundary marked) and ``generation.json`` (arguments, model,
codec, mel source, timings) into ``--out``. Every argument is checked before any work. The work
is ``whispergpt.inference.api.Pipeline`` (the Python API: this module is its thin CLI layer), whose
generation is ``whispergpt.inference.generate.generate``; ``--fine DIR`` then fills codebooks
``Kc..K-1`` with a fine acoustic stage (``whispergpt.inference.fine_stage``), so the WAVs are decoded from all
K codebooks, and ``generation.json`` records it under ``fine``. ``--semantic-lm DIR`` runs the
AudioLM hierarchy (``whispergpt.inference.hierarchy``): the prompt's semantic tokens, continued by a semantic
LM, condition an acoustic model trained with ``model.semantic``; ``generation.json`` records the
semantic stage under ``semantic`` and each stage's checkpoint, seed and settings under ``stages``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE
from whispergpt.inference.api import Pipeline
from whispergpt.inference.generate import (
    check_sampling_args,
)
from whispergpt.inference.hierarchy import stages_record
from whispergpt.plots import save_spectrogram


def _check_args(args: argparse.Namespace) -> None:
    check_sampling_args(args.temperature, args.top_k, args.top_p)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if round(args.seconds * FRAME_RATE) < 1:
        raise ValueError(f"--seconds {args.seconds} is less than one frame (1/{FRAME_RATE} s)")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prompt_seconds is not None:
        if not args.prompt_seconds > 0:
            raise ValueError(f"--prompt-seconds must be > 0, got {args.prompt_seconds}")
    if args.data is not None:
        if args.prompt is not None:
            raise ValueError("--data cuts the prompts itself: drop --prompt")
        if args.num_prompts is None or args.num_prompts < 1:
            raise ValueError(f"--data needs --num-prompts >= 1, got {args.num_prompts}")
        if args.prompt_seconds is None or not args.prompt_seconds > 0:
            raise ValueError("--data needs --prompt-seconds > 0")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    elif args.num_prompts is not None:
        raise ValueError("--num-prompts needs --data")
    if args.prompt_seconds is not None and args.prompt is None and args.data is None:
        raise ValueError("--prompt-seconds needs --prompt or --data")
    if args.prompt_mel == "truth" and args.prompt is None and args.data is None:
        raise ValueError("--prompt-mel truth needs --prompt or --data")
    if args.semantic_lm is None and args.semantic_tokenizer is not None:
        raise ValueError("--semantic-tokenizer needs --semantic-lm")
    check_sampling_args(args.semantic_temperature, args.semantic_top_k, args.semantic_top_p)
    if args.decode_window < 1:
        raise ValueError(f"--decode-window must be >= 1, got {args.decode_window}")
    if not 0.0 < args.context_keep < 1.0:
        raise ValueError(f"--context-keep must be in (0, 1), got {args.context_keep}")


def continuation_source(config) -> str:
    """What the model read for the generated frames (the record's ``mel_source.continuation``)."""
    return (
        "codec_latent (of the sampled tokens)"
        if config.mel_input == "codec_latent"
        else "decoded (incremental)"
    )


def generate_options(args: argparse.Namespace) -> dict:
    """The ``generate`` keyword arguments the sampling flags set (shared with ``--data``)."""
    return dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        decoder=args.decoder,
        decode_window=args.decode_window,
        context_keep=args.context_keep,
        progress=not args.no_progress,
        decode_dtype=args.decode_dtype,
        compile=args.compile,
        overlap={"auto": None, "on": True, "off": False}[getattr(args, "overlap", "auto")],
    )


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    """The ``Pipeline`` the flags name (``--checkpoint``, ``--codec``, ``--fine``, ``--semantic-lm``, ...)."""
    return Pipeline.from_pretrained(
        args.checkpoint, fine=args.fine, semantic_lm=args.semantic_lm, device=args.device, codec=args.codec,
        precision=args.precision, fine_temperature=args.fine_temperature,
        semantic_tokenizer=args.semantic_tokenizer, semantic_temperature=args.semantic_temperature,
        semantic_top_k=args.semantic_top_k, semantic_top_p=args.semantic_top_p,
        decode_dtype=args.decode_dtype, context_keep=args.context_keep, progress=not args.no_progress,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """Everything after parsing: checks (before any work), generation, outputs. Returns the JSON record."""
    from whispergpt.audio import load_audio, save_audio

    t0 = time.perf_counter()
    _check_args(args)
    pipe = open_pipeline(args)
    model, codec, config, ckpt = pipe.model, pipe.codec, pipe.config, pipe.checkpoint
    device, dtype = pipe.device, pipe.dtype
    fine, semantic, note, codec_source = pipe.fine, pipe.semantic, pipe.codec_note, pipe.codec_source
    for line in pipe.notes:
        print(f"note: {line}", file=sys.stderr)
    for stage in (fine, semantic):
        if stage is not None:
            stage.seed = args.seed  # every stage draws from its own generator seeded with --seed

    wave = None
    if args.prompt is not None:
        wave = load_audio(args.prompt)  # AudioLoadError (a ValueError) names the file
        if args.prompt_seconds is not None:
            wave = wave[: int(round(args.prompt_seconds * SAMPLE_RATE))]
        try:
            wave = pipe.prepare_prompt(wave)
        except ValueError as e:
            raise ValueError(f"--prompt {args.prompt}: {e} (--prompt-seconds cuts it)") from e

    t_load = time.perf_counter()
    if args.data is not None:
        from whispergpt.inference.heldout import run_heldout

        base = dict(
            args=dict(vars(args)),
            seed=args.seed,
            device=str(device),
            checkpoint=str(ckpt),
            model=dict(pattern=config.pattern, fusion=config.fusion, num_codebooks=config.num_codebooks),
            codec=dict(name=codec.name, bandwidth=codec.bandwidth, source=codec_source, note=note),
            mel_source=None
            if config.fusion == "none"
            else dict(prompt=args.prompt_mel, continuation=continuation_source(config)),
        )
        if semantic is not None:
            base["stages"] = stages_record(args, ckpt, config, semantic, fine)
        record = run_heldout(args, model, codec, config, device, base, generate_options(args), fine, semantic)
        record["timing"] = dict(load_s=t_load - t0, total_s=time.perf_counter() - t0)
        return record

    frames = int(round(args.seconds * FRAME_RATE))
    sampled = pipe.sample(wave, args.seconds, args.num_samples, args.seed, prompt_mel=args.prompt_mel,
                          **generate_options(args))  # fmt: skip
    result, audio = sampled.result, sampled.audio
    t_prompt = t_load + sampled.timings["prompt_s"]  # the prompt encoded, generation starts
    t_gen = time.perf_counter()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Tp = result.prompt_frames
    boundary = Tp * HOP_LENGTH
    audio = audio.cpu()
    files = []
    for i in range(args.num_samples):
        save_audio(out / f"sample_{i}.wav", audio[i])
        save_audio(out / f"sample_{i}_continuation.wav", audio[i, boundary:])
        save_spectrogram(
            out / f"sample_{i}.png",
            audio[i],
            Tp / FRAME_RATE if Tp else None,
            f"sample {i}: {Tp / FRAME_RATE:.2f} s prompt + {frames / FRAME_RATE:.2f} s generated "
            f"(T={args.temperature}, top-k {args.top_k}, top-p {args.top_p}, seed {args.seed})",
        )
        files += [f"sample_{i}.wav", f"sample_{i}_continuation.wav", f"sample_{i}.png"]
    t_write = time.perf_counter()

    loop_s = result.timings["generate_s"]
    record = dict(
        args={k: v for k, v in vars(args).items()},
        seed=args.seed,
        device=str(device),
        checkpoint=str(ckpt),
        model=dict(
            pattern=config.pattern,
            fusion=config.fusion,
            num_codebooks=config.num_codebooks,
            context=config.context,
            parameters=model.num_parameters(),
            dtype=str(dtype).removeprefix("torch."),
        ),
        codec=dict(
            name=codec.name,
            bandwidth=codec.bandwidth,
            num_codebooks=codec.num_codebooks,
            source=codec_source,
            note=note,
        ),
        mel_source=(
            None
            if config.fusion == "none"
            else dict(
                prompt=args.prompt_mel if Tp else None,
                continuation=continuation_source(config),
                decoder=result.timings["decoder"],
                decode_window=args.decode_window if result.timings["decoder"] == "window" else None,
            )
        ),
        prompt_frames=Tp,
        generated_frames=frames,
        num_samples=args.num_samples,
        reprefills=result.reprefills,
        timing=dict(
            load_s=t_load - t0,
            prompt_s=t_prompt - t_load,
            generate_s=loop_s,
            final_decode_s=result.timings["final_decode_s"],  # 0: decoded live (inference.api.ChunkDecoder)
            write_s=t_write - t_gen,
            frames_per_s=frames / loop_s,
            frames_per_s_batch=frames * args.num_samples / loop_s,
            real_time_factor=frames * args.num_samples / FRAME_RATE / loop_s,
        ),
        files=files,
    )
    if fine is not None:
        record["fine"] = fine.record()
    if semantic is not None:
        record["semantic"] = semantic.record()
        record["timing"].update(semantic.timings)  # all stages, prompt tokens to audio:
        record["timing"]["end_to_end_real_time_factor"] = (
            frames * args.num_samples / FRAME_RATE / (t_gen - t_prompt)
        )
        record["stages"] = stages_record(args, ckpt, config, semantic, fine)
    (out / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
