"""Audio <-> LLM token ids through a trained LLM-Codec, as JSON lines.

One line per file::

    {"file": "clip.wav", "num_samples": 48000, "seconds": 2.0, "tokens_per_second": 58.3,
     "layers": [{"layer": 1, "rate_hz": 8.33, "ids": [[311, 2043], [17], ...], "text": "the cat ..."},
                {"layer": 2, "rate_hz": 16.7, "ids": [[88], [1203], ...], "text": "..."}, ...]}

Layer 1's frames are whole words, each one or two LLM pieces; the other layers' frames are one
token each. ``text`` is the tokenizer's detokenisation of the layer's ids, in order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from whispergpt.audio import load_audio, save_audio
from whispergpt.llm_codec.model import LLMCodec


def load_codec_tokenizer(codec_dir: str | os.PathLike):
    """The tokenizer saved beside the codec (``DIR/tokenizer``), or None."""
    from transformers import AutoTokenizer

    d = Path(codec_dir) / "tokenizer"
    return AutoTokenizer.from_pretrained(str(d)) if d.is_dir() else None


def encode_record(codec: LLMCodec, tokenizer, wave: torch.Tensor, n_layers: int, name: str) -> dict:
    """One file's line: ``wave (S,)`` 24 kHz -> its codes per layer as LLM ids and text."""
    codes = codec.encode(wave[None], n_layers)  # per layer (1, T / pool)
    cfg = codec.config
    layers = []
    for i, c in enumerate(codes):
        ids = codec.llm_ids(i, c[0])
        flat = [t for frame in ids for t in frame]
        text = tokenizer.decode(flat) if tokenizer is not None else ""
        layers.append(dict(layer=i + 1, rate_hz=round(cfg.frame_rate / cfg.pools[i], 3), ids=ids, text=text))
    S = int(wave.shape[-1])
    return dict(file=name, num_samples=S, seconds=S / 24_000, tokens_per_second=round(cfg.tokens_per_second(n_layers), 3),
                layers=layers)  # fmt: skip


def codes_from_record(codec: LLMCodec, record: dict) -> list[torch.Tensor]:
    """A line's ids back to per-layer codes ``(1, T / pool)``; ``ValueError`` for ids the codec has no code for."""
    words = {tuple(int(i) for i in row if i >= 0): w for w, row in enumerate(codec.word_pieces.tolist())}
    codes = []
    for layer in sorted(record["layers"], key=lambda x: x["layer"]):
        i = int(layer["layer"]) - 1
        if i == 0:
            try:
                c = [words[tuple(frame)] for frame in layer["ids"]]
            except KeyError as e:
                raise ValueError(
                    f"{record['file']}: layer 1 holds {list(e.args[0])}, not a word of this codec"
                ) from None
        else:
            c = [int(frame[0]) for frame in layer["ids"]]
            if any(not 0 <= x < codec.config.vocab_size for x in c):
                raise ValueError(f"{record['file']}: layer {i + 1} has ids outside the vocabulary")
        codes.append(torch.tensor(c, dtype=torch.long)[None])
    return codes


def encode_files(
    audio: list[str], codec_dir: str, n_layers: int, out: str | os.PathLike
) -> tuple[int, list[str]]:
    """Encode every readable file of ``audio`` into ``out`` (JSONL); returns (count, skipped)."""
    from whispergpt.codec.corpus import find_audio_files
    from whispergpt.hub import resolve_model_dir
    from whispergpt.runtime import write_atomic

    directory = resolve_model_dir(codec_dir)
    codec = LLMCodec.from_pretrained(directory).eval()
    tokenizer = load_codec_tokenizer(directory)
    lines, skipped = [], []
    for f in find_audio_files(audio):
        try:
            wave = load_audio(f)
        except ValueError as e:
            print(f"skipping {e}", file=sys.stderr)
            skipped.append(str(f))
            continue
        lines.append(json.dumps(encode_record(codec, tokenizer, wave, n_layers, str(f)), ensure_ascii=False))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(x + "\n" for x in lines), "the encoded tokens")
    return len(lines), skipped


def decode_file(jsonl: str | os.PathLike, codec_dir: str, out: str | os.PathLike) -> list[Path]:
    """Each line of ``jsonl`` back to ``out/<stem>.wav``."""
    from whispergpt.hub import resolve_model_dir

    codec = LLMCodec.from_pretrained(resolve_model_dir(codec_dir)).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, line in enumerate(Path(jsonl).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{jsonl}: line {n + 1} is not JSON ({e.msg})") from None
        wave = codec.decode(codes_from_record(codec, record), int(record["num_samples"]))[0]
        path = out / f"{Path(record['file']).stem}.wav"
        save_audio(path, wave)
        written.append(path)
    return written
