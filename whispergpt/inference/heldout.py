"""Continuations of held-out prompts, each written next to the real audio that followed it.

``whispergpt sample --checkpoint CKPT --data PREPARED [--split val] --num-prompts N
--prompt-seconds P --seconds S --out DIR`` writes, for prompt ``i``:

- ``prompt_<iii>.wav``: prompt + generated continuation (decoded from all generated codes);
- ``prompt_<iii>_continuation.wav``: the generated continuation alone;
- ``prompt_<iii>_reference.wav``: the real audio that followed the prompt (same length);
- ``generation.json``: the arguments, the model and codec, and per prompt its source file, start
  frame and which reference was written.

``whispergpt score DIR`` pairs ``X_continuation.wav`` with ``X_reference.wav``.

**The prompt rule** (deterministic for a seed, whatever the batch size): the eligible files are
the split's files with at least ``Tp + Tc`` frames, in manifest order. Prompt ``i`` takes file
``order[i % F]`` where ``order`` is a ``numpy.random.default_rng(seed)`` permutation of the ``F``
eligible files (so prompts spread over files before any file repeats), and a start frame drawn
uniformly from ``[0, frames - Tp - Tc]`` by the same generator, in prompt order.

The prompt's codes are the dataset's own (no re-encode). The prompt mel is ``decoded`` (the
codec-decoded prompt codes, as for a ``--prompt`` file) or ``truth`` (the dataset's stored mel of
the original audio). The reference is cut from the original file when it is still readable, else
decoded from the dataset's codes of the true continuation (``reference_source`` says which).

With ``--semantic-lm`` (the three-stage sampler, ``whispergpt.inference.hierarchy``) the prompt is cut to
whole semantic tokens, its audio (the reference's source: the original file, else the decoded codes)
tokenized and continued by the semantic LM, and the acoustic model reads those tokens.

Prompts run ``--batch-size`` at a time through one ``generate`` call (the same length, so one
batch). Each prompt's files are written atomically, and a prompt whose three files exist is not
redone: an interrupted run resumes. Sampling draws from one generator per batch seeded from
``(seed, first prompt index)``, so a resumed run writes the same audio as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from whispergpt.audio import FRAME_RATE, HOP_LENGTH, AudioLoadError, load_audio, save_audio
from whispergpt.inference.generate import generate
from whispergpt.runtime import replacing, write_json_atomic


def pick_prompts(
    files: list[dict], num_prompts: int, prompt_frames: int, frames: int, seed: int
) -> list[dict]:
    """The documented prompt rule (module docstring): ``[{file, path, start}]`` for each prompt."""
    need = prompt_frames + frames
    eligible = [i for i, f in enumerate(files) if f["frames"] >= need]
    if not eligible:
        longest = max((f["frames"] for f in files), default=0)
        raise ValueError(
            f"no file in the split has {need} frames ({need / FRAME_RATE:.2f} s) for a prompt plus its "
            f"continuation (the longest has {longest}): shorten --prompt-seconds or --seconds"
        )
    rng = np.random.default_rng(seed)
    order = [eligible[j] for j in rng.permutation(len(eligible))]
    prompts = []
    for i in range(num_prompts):
        fi = order[i % len(order)]
        start = int(rng.integers(0, files[fi]["frames"] - need + 1))
        prompts.append(dict(file=fi, path=files[fi]["path"], start=start))
    return prompts


def _save_atomic(path: Path, wave: torch.Tensor) -> None:
    with replacing(path) as tmp:
        save_audio(tmp, wave)


def _reference(codec, path: str, codes: torch.Tensor, start: int, frames: int) -> tuple[torch.Tensor, str]:
    """The real audio of frames ``[start, start + frames)`` of ``path``; else decoded ``codes (K, frames)``."""
    a, b = start * HOP_LENGTH, (start + frames) * HOP_LENGTH
    try:
        wave = load_audio(path)
        if wave.shape[-1] >= b:
            return wave[a:b], "original audio"
    except (AudioLoadError, OSError):
        pass
    return codec.decode(codes[None].to(codec.device))[0].cpu(), "codec-decoded dataset codes"


def run_heldout(
    args, model, codec, config, device: torch.device, record: dict, options: dict, fine=None, semantic=None
) -> dict:
    """Generate continuations of ``args.num_prompts`` held-out prompts (module docstring).
    ``options``: the ``generate`` keyword arguments of the sampling flags. ``fine``: a ``fine_stage.FineStage`` filling the codebooks the model does not generate.
    ``semantic``: a ``hierarchy.SemanticStage`` (``--semantic-lm``): each prompt's audio (as the
    reference: the original file, else its decoded codes) is tokenized and continued by the semantic
    LM (seeded as the batch), and the acoustic model reads those tokens."""
    from whispergpt.data import PreparedDataset

    Tp = int(round(args.prompt_seconds * FRAME_RATE))
    if semantic is not None:  # whole semantic tokens, as for a --prompt file
        Tp = Tp // semantic.group * semantic.group
        if Tp < semantic.group:
            raise ValueError(f"--prompt-seconds {args.prompt_seconds}: shorter than one semantic token")
    Tc = int(round(args.seconds * FRAME_RATE))
    if Tp >= config.context:
        raise ValueError(
            f"--prompt-seconds {args.prompt_seconds}: {Tp} frames do not fit the model context of "
            f"{config.context} frames"
        )
    ds = PreparedDataset(args.data, args.split, mel_source="truth")
    if (ds.num_codebooks, ds.codebook_size) != (config.num_codebooks, config.codebook_size):
        raise ValueError(
            f"--data {args.data}: K={ds.num_codebooks}, V={ds.codebook_size} but the model reads "
            f"K={config.num_codebooks}, V={config.codebook_size}"
        )
    prompts = pick_prompts(ds.files, args.num_prompts, Tp, Tc, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"prompt_{i:03d}" for i in range(len(prompts))]
    done = {
        n for n in names if all((out / f"{n}{s}.wav").is_file() for s in ("", "_continuation", "_reference"))
    }
    B = args.batch_size
    for lo in range(0, len(prompts), B):
        batch = list(range(lo, min(lo + B, len(prompts))))
        if all(names[i] in done for i in batch):
            continue  # a batch partly written is redone whole: its audio depends on the whole batch
        crops = [ds.crop(prompts[i]["file"], prompts[i]["start"], Tp + Tc) for i in batch]
        codes = torch.stack([c for c, _ in crops])  # (b, K, Tp + Tc)
        prompt_mel = None
        if args.prompt_mel == "truth" and config.fusion != "none":
            prompt_mel = torch.stack([m[:, :Tp] for _, m in crops]).to(device)  # (b, M, Tp)
        seed = args.seed * 1_000_003 + lo
        gen = torch.Generator(device=device).manual_seed(seed)
        conditioning = {}
        if semantic is not None:
            waves = torch.stack(
                [_reference(codec, prompts[i]["path"], codes[j, :, :Tp], prompts[i]["start"], Tp)[0]
                 for j, i in enumerate(batch)]
            )  # (b, Tp * 320): the prompts' audio  # fmt: skip
            conditioning["semantic"] = semantic.frame_tokens(waves, Tc, len(batch), device, seed)
        result = generate(
            model,
            codec,
            frames=Tc,
            prompt_codes=codes[:, :, :Tp].to(device),
            prompt_mel=prompt_mel,
            num_samples=len(batch),
            generator=gen,
            decode_audio=fine is None,
            **options,
            **conditioning,
        )
        if fine is not None:  # the prompt keeps its true fine codes
            result.audio = codec.decode(fine(result.codes, codes[:, :, :Tp].to(device)))
        audio = result.audio.cpu()
        for j, i in enumerate(batch):
            ref, source = _reference(
                codec, prompts[i]["path"], codes[j, :, Tp:], prompts[i]["start"] + Tp, Tc
            )
            prompts[i]["reference_source"] = source
            _save_atomic(out / f"{names[i]}_reference.wav", ref)
            _save_atomic(out / f"{names[i]}_continuation.wav", audio[j, Tp * HOP_LENGTH :])
            _save_atomic(out / f"{names[i]}.wav", audio[j])  # last: its presence marks the prompt done
        print(f"held-out prompts {lo + 1}-{lo + len(batch)} of {len(prompts)} written", file=sys.stderr)
    for p in prompts:
        p.setdefault("reference_source", "written by an earlier, interrupted run")
    record.update(
        data=str(args.data),
        split=args.split,
        prompt_frames=Tp,
        generated_frames=Tc,
        num_prompts=len(prompts),
        prompts=[dict(name=n, **p) for n, p in zip(names, prompts)],
        files=[f"{n}{s}.wav" for n in names for s in ("", "_continuation", "_reference")],
    )
    if fine is not None:
        record["fine"] = fine.record()
    if semantic is not None:
        record["semantic"] = dict(semantic.record(), seed="seed x 1000003 + the batch's first prompt index")
    write_json_atomic(out / "generation.json", json.loads(json.dumps(record, default=str)))
    return record
