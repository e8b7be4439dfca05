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
codec, mel source, timings) into ``--out``. Every argument is checked before any work. The
generation itself is ``whispergpt.inference.generate.generate``; ``--fine DIR`` then fills codebooks
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

import torch

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, log_mel
from whispergpt.inference.generate import (
    check_sampling_args,
    generate,
)
from whispergpt.inference.hierarchy import check_acoustic_pairing, load_semantic_stage, stages_record
from whispergpt.plots import save_spectrogram
from whispergpt.runtime import choose_precision, resolve_device
from whispergpt.training.record import resolve_checkpoint, training_codec


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
    )


def run(args: argparse.Namespace) -> dict:
    """Everything after parsing: checks (before any work), generation, outputs. Returns the JSON record."""
    from whispergpt.audio import load_audio, save_audio
    from whispergpt.codec import open_codec
    from whispergpt.config_io import from_dict
    from whispergpt.models import WhisperGPT, WhisperGPTConfig
    from whispergpt.models.registry import check_model_type

    t0 = time.perf_counter()
    _check_args(args)
    device = resolve_device(args.device)
    if args.decode_dtype != "fp32" and device.type != "cpu":
        raise ValueError(
            f"--decode-dtype {args.decode_dtype} is for CPU sampling; on {device} use --precision bf16"
        )
    dtype = torch.bfloat16 if choose_precision(args.precision, device) == "bf16" else torch.float32
    ckpt = resolve_checkpoint(args.checkpoint)
    try:
        raw = json.loads((ckpt / "config.json").read_text())
        check_model_type(ckpt, raw, WhisperGPT.model_type)  # pops config.json's "model_type"
        config = from_dict(WhisperGPTConfig, raw, "model")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ckpt / 'config.json'}: not a valid WhisperGPT config ({e})") from e
    semantic = None  # the semantic stage (whispergpt.inference.hierarchy), checked against the acoustic model
    if args.semantic_lm is None:
        check_acoustic_pairing(config, ckpt, None)
    else:
        semantic = load_semantic_stage(
            args.semantic_lm, config, ckpt, device, dtype, tokenizer=args.semantic_tokenizer,
            temperature=args.semantic_temperature, top_k=args.semantic_top_k, top_p=args.semantic_top_p,
            seed=args.seed, context_keep=args.context_keep, decode_dtype=args.decode_dtype,
            progress=not args.no_progress,
        )  # fmt: skip
        for line in semantic.notes:
            print(f"note: {line}", file=sys.stderr)

    wave = None
    if args.prompt is not None:
        wave = load_audio(args.prompt)  # AudioLoadError (a ValueError) names the file
        if args.prompt_seconds is not None:
            wave = wave[: int(round(args.prompt_seconds * SAMPLE_RATE))]
        if semantic is not None:  # a whole number of semantic tokens
            wave = semantic.trim_prompt(wave)
        tp = wave.shape[-1] // HOP_LENGTH
        if tp < 1:
            raise ValueError(f"--prompt {args.prompt}: shorter than one frame ({HOP_LENGTH} samples)")
        if tp >= config.context:
            raise ValueError(
                f"--prompt {args.prompt}: {tp} frames ({tp / FRAME_RATE:.2f} s) do not fit the model context "
                f"of {config.context} frames; pass --prompt-seconds < {config.context / FRAME_RATE:.2f}"
            )
        wave = wave[: tp * HOP_LENGTH]

    codec_name, bandwidth, codec_source = args.codec, None, "--codec"
    if codec_name is None:
        recorded = training_codec(ckpt)
        if recorded is not None:
            (codec_name, bandwidth), codec_source = recorded, "training data manifest"
        else:
            codec_name, codec_source = "default", "default (no training manifest found)"
    codec, note = open_codec(
        codec_name,
        num_codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        bandwidth=bandwidth,
    )
    if note:
        print(f"note: {note}", file=sys.stderr)
    codec.to(device)
    # Only the model is cast: the codec's decoder and log-mel feed the model back, and in bf16 they
    # would drift from the training features (the fed mel is cast to the weights' dtype per step).
    model = WhisperGPT.from_pretrained(ckpt, device=device).to(dtype).eval()
    fine = None
    if args.fine is not None:
        from whispergpt.inference.fine_stage import load_fine_stage

        fine = load_fine_stage(args.fine, config, ckpt, device, dtype, args.fine_temperature, args.seed)
        for line in fine.notes:
            print(f"note: {line}", file=sys.stderr)
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
            else dict(prompt=args.prompt_mel, continuation="decoded (incremental)"),
        )
        if semantic is not None:
            base["stages"] = stages_record(args, ckpt, config, semantic, fine)
        record = run_heldout(args, model, codec, config, device, base, generate_options(args), fine, semantic)
        record["timing"] = dict(load_s=t_load - t0, total_s=time.perf_counter() - t0)
        return record

    frames = int(round(args.seconds * FRAME_RATE))
    prompt_codes = prompt_mel = None
    if wave is not None:
        prompt_codes = codec.encode(wave[None].to(device))
        if args.prompt_mel == "truth":
            prompt_mel = log_mel(wave[None].to(device), config.n_mels)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t_prompt = time.perf_counter()
    conditioning = {}
    if semantic is not None:  # stages 1-2: (B, Tp + frames) semantic tokens on the codec grid
        conditioning["semantic"] = semantic.frame_tokens(wave, frames, args.num_samples, device)
    result = generate(
        model,
        codec,
        frames=frames,
        prompt_codes=prompt_codes,
        prompt_mel=prompt_mel,
        num_samples=args.num_samples,
        generator=gen,
        decode_audio=fine is None,
        **generate_options(args),
        **conditioning,
    )
    audio = result.audio if fine is None else codec.decode(fine(result.codes, prompt_codes))
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
                continuation="decoded (incremental)",
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
            final_decode_s=result.timings["final_decode_s"],
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
