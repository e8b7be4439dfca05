"""``whispergpt codec train ...`` / ``whispergpt codec eval ...``: argument parsing only.

Also runnable as a module, e.g. under accelerate::

    accelerate launch -m whispergpt codec train AUDIO... --out DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from whispergpt.cli import command, make_parser

USAGE = """usage: whispergpt codec <train|eval> [args]

  train AUDIO... --out DIR [--config configs/codec/<recipe>.yaml] [key=value ...]
        train (or fine-tune, model.init=NAME_OR_DIR) an EnCodec codec; DIR loads with
        Codec.from_pretrained(DIR)
  eval  CODEC AUDIO... [--speech AUDIO...] [--music AUDIO...] [--out report.json]
        mel distance / SI-SNR / PESQ / STOI / codebook usage per bandwidth vs a random floor

examples:
  whispergpt codec train data/speech --out runs/codec --config configs/codec/small-cpu.yaml
  whispergpt codec eval runs/codec --speech data/speech --music data/music --out codec_eval.json
"""


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from audio paths (an existing path always counts as audio)."""
    paths, overrides = [], []
    for it in items:
        if "=" in it and not Path(it).exists():
            overrides.append(it)
        else:
            paths.append(it)
    return paths, overrides


@command("codec train")
def main_train(argv: list[str]) -> int:
    from whispergpt.codec.train import CodecTrainConfig, train
    from whispergpt.config_io import load_config

    p = make_parser(
        "whispergpt codec train",
        "Train an EnCodec-architecture codec (transformers EncodecModel + trainable RVQ). "
        "Positional arguments are audio files/directories and key=value config overrides.",
        """
        whispergpt codec train data/speech data/music --out runs/codec --config configs/codec/small-cpu.yaml
        whispergpt codec train data/speech --out runs/ft model.init=facebook/encodec_24khz train.max_steps=2000
        accelerate launch -m whispergpt codec train data/speech --out runs/codec
        """,
    )
    p.add_argument("items", nargs="+", metavar="AUDIO_OR_KEY=VALUE")
    p.add_argument("--out", required=True, help="output directory (EncodecModel layout + checkpoints)")
    p.add_argument("--config", default=None, help="YAML recipe, e.g. configs/codec/small-cpu.yaml")
    args = p.parse_intermixed_args(argv)
    audio, overrides = split_overrides(args.items)
    if not audio:
        p.error("no audio files or directories given")
    cfg = load_config(CodecTrainConfig, args.config, overrides)
    last = train(cfg, audio, args.out)
    if last:
        print(
            f"codec train: done at step {last.get('step')}; loss {last.get('loss', float('nan')):.4f}; "
            f"load with Codec.from_pretrained({str(args.out)!r})"
        )
    return 0


@command("codec eval")
def main_eval(argv: list[str]) -> int:
    from whispergpt.codec.eval import jsonable, markdown_table, run_eval
    from whispergpt.runtime import write_json_atomic

    p = make_parser(
        "whispergpt codec eval",
        "Reconstruction metrics per bandwidth of a codec vs a random-weights codec of the same config.",
        """
        whispergpt codec eval runs/codec --speech data/speech --music data/music --out codec_eval.json
        whispergpt codec eval default clip.wav --bandwidths 1.5 6 --max-seconds 10
        """,
    )
    p.add_argument("codec", help="codec directory (save_pretrained layout), hub id, or 'default'")
    p.add_argument(
        "audio", nargs="*", help="audio files/directories (set from a 'speech'/'music' directory name)"
    )
    p.add_argument(
        "--speech", nargs="+", default=[], help="audio files/directories scored as speech (adds PESQ/STOI)"
    )
    p.add_argument("--music", nargs="+", default=[], help="audio files/directories scored as music")
    p.add_argument("--bandwidths", nargs="+", type=float, default=None, help="default: all of the codec's")
    p.add_argument("--max-seconds", type=float, default=30.0, help="evaluate at most this much of each file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random floor")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_intermixed_args(argv)
    audio = (
        [(a, None) for a in args.audio]
        + [(a, "speech") for a in args.speech]
        + [(a, "music") for a in args.music]
    )
    if not audio:
        p.error("no audio given")
    report = run_eval(args.codec, audio, args.bandwidths, args.max_seconds, args.seed)
    table = markdown_table(report)
    report["markdown"] = table
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, jsonable(report), indent=1)
        print(f"wrote {args.out}")
    return 0


@command("codec")
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return main_train(rest)
    if cmd == "eval":
        return main_eval(rest)
    print(f"whispergpt codec: error: unknown subcommand {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
