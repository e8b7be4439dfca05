"""A tiny causal LM built offline (a BPE tokenizer trained with ``tokenizers`` + a random small
``LlamaConfig`` model, saved with ``save_pretrained``): the LLM-Codec tests' ``--llm``."""

from __future__ import annotations

from pathlib import Path

import pytest

WORDS = ("the cat sat on a mat while music played and people spoke about rain sun moon river stone "
         "bird song voice drum piano violin guitar water light night day morning evening window door "
         "table chair green blue red yellow happy quiet loud slow fast little big warm cold").split()  # fmt: skip


def build_tiny_llm(root: Path, vocab_size: int = 700, width: int = 32, seed: int = 0, words=WORDS) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    words = list(words)
    text = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(root)
    fast.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "llm")


@pytest.fixture(scope="session")
def other_llm(tmp_path_factory) -> Path:
    """Another tiny LLM: a different vocabulary (so a different tokenizer fingerprint)."""
    return build_tiny_llm(tmp_path_factory.mktemp("other-llm") / "llm", seed=1, words=WORDS[::2])


@pytest.fixture(scope="session")
def byte_llm(tmp_path_factory) -> Path:
    """A tiny LLM whose BPE learned no merges: bytes only, no whole words."""
    return build_tiny_llm(tmp_path_factory.mktemp("byte-llm") / "llm", vocab_size=200)
