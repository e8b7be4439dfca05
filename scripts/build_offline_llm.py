"""Build a real GPT-2 BPE tokenizer and a small random Llama of its vocabulary, offline.

The tokenizer comes from openai-whisper's sdist, which ships GPT-2's 50k BPE ranks
(``whisper/assets/gpt2.tiktoken``: base64 token, rank per line)::

    pip download --no-deps openai-whisper -d /tmp/pip
    tar xzf /tmp/pip/openai_whisper-*.tar.gz --wildcards '*/whisper/assets/gpt2.tiktoken'
    python scripts/build_offline_llm.py openai_whisper-*/whisper/assets/gpt2.tiktoken --out runs/gpt2-llama

The merges are rebuilt from the ranks by transformers' ``TikTokenConverter`` (needs the ``tiktoken``
package, which reads the local file only). The LM is random (a ``LlamaConfig``): it gives the codec
a real 50k vocabulary and word table, not a trained LLM. Tests do not use this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def build(ranks: Path, out: Path, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(
        vocab_file=str(ranks), pattern=GPT2_PATTERN, extra_special_tokens=["<|endoftext|>"]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok.converted(), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")  # fmt: skip
    torch.manual_seed(seed)
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ranks", type=Path, help="gpt2.tiktoken from openai-whisper's sdist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not a.ranks.is_file():
        raise SystemExit(f"{a.ranks}: no such file (see the docstring for where it comes from)")
    print(build(a.ranks, a.out, a.width, a.layers, a.seed))


if __name__ == "__main__":
    main()
