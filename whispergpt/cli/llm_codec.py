"""``whispergpt llm-codec train|encode|decode``: argument parsing only (``whispergpt.llm_codec``)."""

from __future__ import annotations

import sys

from whispergpt.cli import command, make_parser
from whispergpt.cli.codec import split_overrides

USAGE = """usage: whispergpt llm-codec <train|encode|decode> [args]

  train  AUDIO... --llm NAME_OR_PATH --out DIR [--config RECIPE] [key=value ...]
         train an LLM-Codec (UniAudio 1.5) whose codebooks are the LLM's tables;
         DIR loads with whispergpt.llm_codec.LLMCodec.from_pretrained(DIR)
  encode AUDIO... --codec DIR [--layers 1|1,2|1,2,3] --out FILE.jsonl
         each file's tokens as the LLM's token ids, with their text
  decode FILE.jsonl --codec DIR --out FOLDER
         the ids back to WAV files

examples:
  whispergpt llm-codec train data/demo --llm runs/tiny-llm --out runs/llm-codec --config llm_codec_tiny.yaml
  whispergpt llm-codec encode clip.wav --codec runs/llm-codec --layers 1 --out clip.jsonl
  whispergpt llm-codec decode clip.jsonl --codec runs/llm-codec --out decoded/
"""


@command("llm-codec train")
def main_train(argv: list[str]) -> int:
    from whispergpt.config_io import load_config
    from whispergpt.llm_codec.train import LLMCodecTrainConfig, train

    p = make_parser(
        "whispergpt llm-codec train",
        "Train an LLM-Codec: a codec whose three VQ layers quantise into a frozen LLM's word and "
        "token embeddings. Positional arguments are audio files/directories and key=value overrides.",
        """
        whispergpt llm-codec train data/demo --llm runs/tiny-llm --out runs/llm-codec --config llm_codec_tiny.yaml
        whispergpt llm-codec train data/demo --llm meta-llama/Llama-2-7b-hf --out runs/llm-codec --config llm_codec_paper.yaml
        """,
    )
    p.add_argument("items", nargs="+", metavar="AUDIO_OR_KEY=VALUE")
    p.add_argument(
        "--llm",
        required=True,
        help="a Hugging Face causal LM (folder or Hub id): its tokenizer and input embeddings",
    )
    p.add_argument("--out", required=True, help="output directory (save_pretrained layout + checkpoints)")
    p.add_argument("--config", default=None, help="a shipped recipe name (llm_codec_tiny.yaml) or a path")
    args = p.parse_intermixed_args(argv)
    audio, overrides = split_overrides(args.items)
    if not audio:
        p.error("no audio files or directories given")
    cfg = load_config(LLMCodecTrainConfig, args.config, overrides)
    last = train(cfg, audio, args.out, args.llm)
    if last:
        print(f"llm-codec train: done at step {last.get('step')}; loss {last.get('loss', float('nan')):.4f}; "
              f"load with LLMCodec.from_pretrained({str(args.out)!r})")  # fmt: skip
    return 0


def _layers(text: str) -> int:
    allowed = {"1": 1, "1,2": 2, "1,2,3": 3}
    if text not in allowed:
        raise ValueError(f"--layers must be one of {sorted(allowed)}, got {text!r}")
    return allowed[text]


@command("llm-codec encode")
def main_encode(argv: list[str]) -> int:
    from whispergpt.llm_codec.io import encode_files

    p = make_parser(
        "whispergpt llm-codec encode",
        "Encode audio into the LLM's token ids (one JSON line per file: tokens per second, and per "
        "layer the ids and the text they detokenise to). Unreadable files are reported and skipped.",
        "whispergpt llm-codec encode data/clips --codec runs/llm-codec --layers 1,2 --out clips.jsonl",
    )
    p.add_argument("audio", nargs="+", help="audio files or directories")
    p.add_argument("--codec", required=True, help="an LLM-Codec folder (or Hub id)")
    p.add_argument("--layers", default="1,2,3", help="1, 1,2 or 1,2,3 (default)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    args = p.parse_args(argv)
    n, skipped = encode_files(args.audio, args.codec, _layers(args.layers), args.out)
    print(f"llm-codec encode: {n} files -> {args.out}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return 0


@command("llm-codec decode")
def main_decode(argv: list[str]) -> int:
    from whispergpt.llm_codec.io import decode_file

    p = make_parser(
        "whispergpt llm-codec decode",
        "Decode the token ids of an `llm-codec encode` JSONL back into WAV files (24 kHz).",
        "whispergpt llm-codec decode clips.jsonl --codec runs/llm-codec --out decoded/",
    )
    p.add_argument("jsonl", help="the encode output")
    p.add_argument("--codec", required=True, help="the LLM-Codec folder (or Hub id) that encoded it")
    p.add_argument("--out", required=True, help="a folder for the WAV files")
    args = p.parse_args(argv)
    paths = decode_file(args.jsonl, args.codec, args.out)
    print(f"llm-codec decode: {len(paths)} files -> {args.out}")
    return 0


@command("llm-codec")
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    subs = {"train": main_train, "encode": main_encode, "decode": main_decode}
    if argv[0] not in subs:
        print(f"whispergpt llm-codec: error: unknown subcommand {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return subs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
