"""``whispergpt sample`` / ``python sample.py``: the flags; the work is ``inference.pipeline.run``."""

from __future__ import annotations

import argparse

from whispergpt.cli import command, make_parser
from whispergpt.inference.generate import (
    DEFAULT_CONTEXT_KEEP,
    DEFAULT_DECODE_WINDOW,
)
from whispergpt.inference.pipeline import run
from whispergpt.models.blocks import DECODE_DTYPES

EXAMPLES = """
  whispergpt sample --checkpoint runs/hybrid --prompt speech.wav --prompt-seconds 3 \\
      --seconds 5 --num-samples 4 --temperature 0.9 --top-k 250 --out runs/hybrid/samples
  whispergpt sample --checkpoint runs/hybrid --data data/speech --split val --num-prompts 16 \\
      --prompt-seconds 2 --seconds 3 --out runs/hybrid/heldout     # then: whispergpt score ...
  whispergpt sample --checkpoint runs/coarse --fine runs/fine --seconds 5 --out runs/coarse/full
  whispergpt sample --semantic-lm runs/semantic --checkpoint runs/acoustic --fine runs/fine \\
      --prompt speech.wav --prompt-seconds 2 --seconds 8 --out runs/hierarchy/samples

  --checkpoint (like --fine and --semantic-lm) takes a model directory, a training out_dir (its
  final/, else its newest checkpoint) or a Hub id (org/name, org/name@revision; cached in HF_HOME); without --codec, the codec the training data was prepared with is used.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "whispergpt sample",
        "Generate continuations of a prompt (or unconditional audio) into WAV + PNG files.",
        EXAMPLES,
    )
    ap.add_argument(
        "--checkpoint",
        required=True,
        help="model dir (config.json + model.safetensors), a run out_dir, or a Hub id org/name[@rev]",
    )
    ap.add_argument(
        "--codec",
        default=None,
        help="codec name or path; default: the codec the training data was prepared with, else 'default'",
    )
    ap.add_argument("--prompt", default=None, help="audio file to continue (any soundfile format, resampled)")
    ap.add_argument(
        "--prompt-seconds", type=float, default=None, help="use the first S seconds of the prompt"
    )
    ap.add_argument(
        "--prompt-mel",
        choices=("decoded", "truth"),
        default="decoded",
        help="mel fed for the prompt: of the codec-decoded prompt (default) or of the prompt audio",
    )
    ap.add_argument("--seconds", type=float, required=True, help="seconds to generate (after the prompt)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = argmax")
    ap.add_argument("--top-k", type=int, default=250, help="0 = off")
    ap.add_argument("--top-p", type=float, default=0.0, help="0 = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="model weights dtype (auto: bf16 on a bf16-capable CUDA device, else fp32); "
        "the codec and the fed mel stay fp32",
    )
    ap.add_argument(
        "--decode-dtype",
        choices=DECODE_DTYPES,
        default="auto",
        help="CPU: the weights each sampling step reads: auto (default: int8 when the step's fp32 "
        "weights are >= 8 MiB, e.g. D256 L4 and up, else fp32), fp32 (exact), bf16, or int8 (int8 "
        "weights, one scale per output channel, bf16 activations: 2x faster at D256, NLL +0.001; "
        "quality and speed: benchmarks/bench_decode_dtype.py); the prompt's prefill keeps --precision",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the per-frame step (static shapes; CUDA: as CUDA graphs). The first run "
        "compiles for a minute or more (cached under ~/.cache/whispergpt/inductor); tokens can differ "
        "from the default path by float rounding",
    )
    ap.add_argument(
        "--decode-window",
        type=int,
        default=DEFAULT_DECODE_WINDOW,
        help="frames re-decoded per step with --decoder window",
    )
    ap.add_argument(
        "--decoder",
        choices=("auto", "stream", "window"),
        default="auto",
        help="incremental decode of the mel feedback loop (auto: stream when the codec supports it)",
    )
    ap.add_argument(
        "--overlap",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode each frame of the mel feedback loop on a second thread while the next step runs "
        "(models trained with model.mel_extra_lag >= 1; auto: on for them on a CPU with >= 2 cores)",
    )
    ap.add_argument(
        "--context-keep",
        type=float,
        default=DEFAULT_CONTEXT_KEEP,
        help="fraction of the context kept when long-form sampling slides the window",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument(
        "--fine",
        default=None,
        help="fine acoustic stage (model dir, run out_dir or Hub id) that fills the codebooks a coarse model "
        "does not generate; the WAVs are then decoded from all K codebooks",
    )
    ap.add_argument(
        "--fine-temperature", type=float, default=0.0, help="sampling temperature of --fine (0 = argmax)"
    )
    sem = ap.add_argument_group("the semantic stage (AudioLM hierarchy, docs/HIERARCHY.md)")
    sem.add_argument(
        "--semantic-lm",
        default=None,
        help="semantic LM (model dir, run out_dir or Hub id) whose tokens condition --checkpoint (model.semantic)",
    )
    sem.add_argument(
        "--semantic-tokenizer",
        default=None,
        help="tokenizer folder for the prompt (default: the one the training records name)",
    )
    sem.add_argument("--semantic-temperature", type=float, default=1.0, help="0 = argmax")
    sem.add_argument("--semantic-top-k", type=int, default=0, help="0 = off")
    sem.add_argument("--semantic-top-p", type=float, default=0.0, help="0 = off")
    held = ap.add_argument_group(
        "held-out prompts (instead of --prompt): continuations written next to the real audio"
    )
    held.add_argument("--data", default=None, help="a prepared dataset to cut prompts from")
    held.add_argument("--split", default="val", help="its split (default: val)")
    held.add_argument("--num-prompts", type=int, default=None, help="how many prompts (seeded rule)")
    held.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    return ap


@command("sample")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    record = run(args)
    if args.data is not None:
        print(f"wrote {record['num_prompts']} held-out continuation(s) with references to {args.out}")
        return 0
    t = record["timing"]
    print(
        f"wrote {record['num_samples']} sample(s) to {args.out}: {record['generated_frames']} frames each, "
        f"{t['frames_per_s']:.1f} frames/s per sample, real-time factor {t['real_time_factor']:.2f}"
    )
    return 0
