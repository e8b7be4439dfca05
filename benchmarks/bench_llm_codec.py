#!/usr/bin/env python
"""LLM-Codec (UniAudio 1.5): encode / decode x real time, the LLM tables' memory, an ICL episode's time.

    python benchmarks/bench_llm_codec.py --quick        # CI smoke size, seconds
    python benchmarks/bench_llm_codec.py --threads 2    # CPU, llm_codec_quickstart.yaml's codec
    python benchmarks/bench_llm_codec.py --device cuda  # GPU
    python benchmarks/bench_llm_codec.py --rows tables  # the tables' memory only (7B-sized too), seconds

Rows:
- ``encode`` / ``decode``: 10 s of audio through a codec of llm_codec_quickstart.yaml's sizes, with
  tables of a tiny LLM (413 x 32) and of a 7B LLM (32,000 x 4,096, random values: the time depends
  on the sizes only). ``x_real_time`` = seconds of audio per second; medians of ``--repeats``.
- ``tables``: the bytes of the frozen tables a trainable LLM-Codec holds (``train.held_tables``:
  every tensor reachable from it that is not a parameter or buffer, one per storage), built as
  training builds it, in fp32 and bf16: the word table + one embedding table (layers 2 and 3 share
  it; a 32k x 4096 table is 500 MiB in fp32).
- ``icl episode``: one 2-way 1-shot episode (a ~150-token prompt: 5 s clips at layer 1's 8.3 tokens/s)
  scored by label log-likelihood and greedy decoding, with random Llama models of two sizes.
Prints a markdown table and writes JSON (+ the table as .md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def fake_tables(vocab: int, width: int, words: int, dtype: torch.dtype):
    from whispergpt.llm_codec.tables import LLMTables

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(vocab, width, generator=g).to(dtype)

    class Tok:  # the fingerprint only
        def get_vocab(self):
            return {f"t{i}": i for i in range(vocab)}

    return LLMTables.from_embeddings("random", Tok(), emb, [(f"w{i}", [i]) for i in range(words)])


SIZES = [("tiny LLM", 413, 32, 73), ("7B LLM", 32_000, 4_096, 8_000)]


def table_rows(device: torch.device, quick: bool) -> list[dict]:
    """What training holds of the LLM: the tables reachable from an ``LLMCodecTrainable`` on ``device``."""
    from whispergpt.config_io import load_recipe
    from whispergpt.llm_codec import LLMCodecConfig
    from whispergpt.llm_codec.train import LLMCodecTrainable, TeacherConfig, build_codec, held_tables

    model = load_recipe("llm_codec_quickstart.yaml")["model"]
    rows = []
    for name, vocab, width, words in SIZES[:1] if quick else SIZES:
        for dtype in (torch.float32, torch.bfloat16):
            codec = build_codec(LLMCodecConfig(**model), fake_tables(vocab, width, words, dtype))
            held = held_tables(LLMCodecTrainable(codec, TeacherConfig()).to(device))
            mib = sum(v.numel() * v.element_size() for v in held.values()) / 2**20
            rows.append(dict(row="tables", tables=f"{name} ({vocab} x {width})", dtype=str(dtype).split(".")[-1],
                             tensors=len(held), mib=mib))  # fmt: skip
            del codec, held
    return rows


def codec_rows(device: torch.device, seconds: float, repeats: int, quick: bool) -> list[dict]:
    from whispergpt.config_io import load_recipe
    from whispergpt.llm_codec import LLMCodecConfig
    from whispergpt.llm_codec.train import build_codec

    model = load_recipe("llm_codec_quickstart.yaml")["model"]
    rows = []
    wave = 0.1 * torch.randn(1, int(seconds * 24_000), generator=torch.Generator().manual_seed(1))
    for name, vocab, width, words in SIZES[:1] if quick else SIZES:
        tables = fake_tables(vocab, width, words, torch.float32)
        torch.manual_seed(0)
        codec = build_codec(LLMCodecConfig(**model), tables).to(device).eval()
        x = wave.to(device)
        codes = codec.encode(x)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        ops = (("encode", lambda c=codec, x=x, s=sync: (c.encode(x), s())),
               ("decode", lambda c=codec, k=codes, s=sync: (c.decode(k), s())))  # fmt: skip
        for op, fn in ops:
            s = timed(fn, repeats)
            rows.append(
                dict(row=op, tables=f"{name} ({vocab} x {width})", seconds=s, x_real_time=seconds / s)
            )
    return rows


def icl_rows(device: torch.device, repeats: int, quick: bool) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from whispergpt.llm_codec import icl

    rows = []
    sizes = [("tiny", 64, 2)] + ([] if quick else [("small", 512, 8)])
    for name, width, layers in sizes:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=32_000, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 64))  # fmt: skip
        model = LlamaForCausalLM(cfg).to(device).eval()
        prompt = torch.randint(3, 32_000, (150,)).tolist()
        cands = [[500], [900, 901]]

        def episode(m=model, p=prompt, c=cands) -> None:
            icl.label_logprobs(m, p, c)
            icl.greedy_label(m, p, c)

        s = timed(episode, repeats)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            dict(row="icl episode", llm=f"{name} Llama ({params / 1e6:.1f}M)", prompt_tokens=150, seconds=s)
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| row | setting | value |", "|---|---|---:|"]
    for r in rows:
        if r["row"] in ("encode", "decode"):
            lines.append(
                f"| {r['row']} | {r['tables']} | {r['x_real_time']:.1f}x real time ({r['seconds'] * 1e3:.0f} ms) |"
            )
        elif r["row"] == "tables":
            lines.append(
                f"| tables held ({r['dtype']}) | {r['tables']} | {r['mib']:.1f} MiB in {r['tensors']} tensors |"
            )
        else:
            lines.append(
                f"| icl episode | {r['llm']}, {r['prompt_tokens']}-token prompt | {r['seconds'] * 1e3:.0f} ms |"
            )
    return "\n".join(lines) + "\n"


ROWS = ("codec", "tables", "icl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="CI smoke size: tiny tables only, 1 s, 1 repeat")
    p.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows to run (default: all)"
    )
    p.add_argument("--out", default="benchmarks/results/llm_codec.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seconds, repeats = (1.0, 1) if args.quick else (10.0, args.repeats)
    run = {
        "codec": lambda: codec_rows(device, seconds, repeats, args.quick),
        "tables": lambda: table_rows(device, args.quick),
        "icl": lambda: icl_rows(device, repeats, args.quick),
    }
    rows = [r for name in ROWS if name in args.rows for r in run[name]()]
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(date=dt.datetime.now().isoformat(timespec="seconds"), device=str(device), threads=torch.get_num_threads(),
                load_average=os.getloadavg(), quick=args.quick, rows=args.rows)  # fmt: skip
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
