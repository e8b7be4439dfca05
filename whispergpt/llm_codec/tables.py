"""The frozen LLM tables the codec quantises into: the input-embedding table and the word table.

Only two things of the LLM are read: its tokenizer and its input-embedding matrix. The matrix is
read straight from the safetensors file that holds it (the model is built on the ``meta`` device
to learn the tensor's name, so no weight of the rest of the LLM is ever loaded), once, in the
compute dtype, and standardised in place (``standardise_table``) as it is loaded: the standardised
tensor is the only copy, and layers 2 and 3 of the codec share it.

The word table (layer 1) holds whole words of the vocabulary: a word is a vocabulary entry that
starts a word (``Ġ`` / ``▁`` / a leading space) and is alphabetic, or a word of a given word list
that the tokenizer splits into at most two pieces. A word's row is the mean of its pieces' rows
(the LLM's rows as read, before standardising), then the word table is standardised on its own.
Special tokens and byte tokens (``<0x41>``) are never words.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from whispergpt.errors import InputError

_WORD_STARTS = ("Ġ", "▁", " ")


def _llm_file(name: str, filename: str) -> Path | None:
    """``filename`` of the LLM ``name`` (a folder or a Hub id; the Hub cache offline), or None."""
    if Path(name).is_dir():
        p = Path(name) / filename
        return p if p.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(name, filename))
    except EntryNotFoundError:
        return None
    except (LocalEntryNotFoundError, OSError) as e:
        raise InputError(f"--llm {name}: cannot read {filename} ({type(e).__name__})", None,
                         "give a local folder, or go online once to fill the Hub cache") from e  # fmt: skip


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary (token -> id): two tokenizers with the same one agree."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise InputError(f"--llm {name}: no tokenizer could be loaded ({str(e).splitlines()[0][:160]})",
                         None, "give a Hugging Face causal LM folder or Hub id with its tokenizer") from e  # fmt: skip


def load_input_embeddings(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(V, W)`` input-embedding matrix of the causal LM ``name``, read alone from its
    safetensors; ``InputError`` naming ``name`` when it is not a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise InputError(f"--llm {name}: not a Hugging Face model ({str(e).splitlines()[0][:160]})", None,
                         "give a causal LM folder or Hub id (config.json + safetensors + tokenizer)") from e  # fmt: skip
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise InputError(f"--llm {name}: a {config.model_type!r} model is not a causal LM", None,
                         "give a causal LM (e.g. a Llama, Mistral, GPT-2 or Qwen checkpoint)")  # fmt: skip
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    emb = shell.get_input_embeddings().weight
    key = next(k for k, p in shell.named_parameters() if p is emb)
    candidates = [key, key.removeprefix("model."), key.split(".", 1)[-1]]
    index = _llm_file(name, "model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text())["weight_map"]
        found = next((k for k in candidates if k in weight_map), None)
        files = [(found, _llm_file(name, weight_map[found]))] if found else []
    else:
        files = [(None, _llm_file(name, "model.safetensors"))]
    from safetensors import safe_open

    for found, path in files:
        if path is None:
            continue
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            k = found or next((c for c in candidates if c in keys), None)
            if k is not None:
                return f.get_tensor(k).to(dtype)
    raise InputError(f"--llm {name}: no safetensors file holds the input embeddings ({key})", None,
                     "give a causal LM saved with save_pretrained (safetensors)")  # fmt: skip


def _piece_text(tokenizer, token: str) -> str:
    return tokenizer.convert_tokens_to_string([token])


def word_entries(
    tokenizer, words: Iterable[str] | None = None, max_words: int = 0
) -> list[tuple[str, list[int]]]:
    """``[(word, piece ids)]``: whole words of at most two pieces, in vocabulary order (then the
    word list's order), no special or byte tokens; the first ``max_words`` (0: all)."""
    special = set(tokenizer.all_special_ids)
    entries: dict[str, list[int]] = {}
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    for token, i in vocab:
        if i in special or not token.startswith(_WORD_STARTS) or token.startswith("<0x"):
            continue
        text = _piece_text(tokenizer, token).strip()
        if len(text) >= 2 and text.isalpha() and text not in entries:
            entries[text] = [i]
    for w in words or ():
        w = w.strip()
        if not w or w in entries or not w.isalpha():
            continue
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        if 1 <= len(ids) <= 2 and not special.intersection(ids):
            entries[w] = ids
    out = list(entries.items())
    return out[:max_words] if max_words > 0 else out


def standardise_table(table: torch.Tensor) -> torch.Tensor:
    """(N, W) -> the rows minus their mean row, over their overall std, **in place** (``table`` is
    returned). The arithmetic is fp32: an fp32 table is rewritten where it lies; another dtype goes
    through one transient fp32 copy, rounded back into ``table``.

    Why: an LLM's rows share a large common direction and are small (LLaMA's ~0.02 per entry): fed
    raw to the codec's projection, its bias dominates every row, all rows point one way and cosine
    lookup picks one word for everything (layer 1's perplexity stayed 1.0 and the commitment loss
    grew without bound). The projection is affine, so this changes its starting point, not what it
    can express."""
    t = table.float()  # ``table`` itself when it is fp32
    t.sub_(t.mean(0, keepdim=True))
    t.div_(t.std().clamp_min(1e-8))
    if t is not table:
        table.copy_(t)
    return table


@dataclass
class LLMTables:
    """What the codec reads of an LLM: its name, tokenizer, word list and its two frozen tables,
    both standardised (``standardise_table``). Build it with ``LLMTables.from_embeddings`` (which
    ``load_tables`` calls): no raw copy of a table is kept."""

    name: str
    tokenizer: object
    embeddings: torch.Tensor  # (V, W), frozen, standardised, the compute dtype: layers 2 and 3
    word_table: torch.Tensor  # (N_words, W), frozen, standardised, the compute dtype: layer 1
    words: list[tuple[str, list[int]]]

    @classmethod
    def from_embeddings(
        cls, name: str, tokenizer, embeddings: torch.Tensor, words: list[tuple[str, list[int]]]
    ) -> LLMTables:
        """The tables of the LLM's raw ``(V, W)`` input embeddings, which are standardised in place
        (the caller hands the tensor over). Each word's row is the mean of its pieces' raw rows; the
        ``(N_words, W)`` word table is then standardised on its own."""
        word_table = torch.stack([embeddings[ids].mean(0) for _, ids in words])
        return cls(name, tokenizer, standardise_table(embeddings), standardise_table(word_table), words)

    @property
    def fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    def word_pieces(self) -> torch.Tensor:
        """``(N_words, 2)`` piece ids per word, -1 where a word has one piece."""
        return torch.tensor([ids + [-1] * (2 - len(ids)) for _, ids in self.words], dtype=torch.long)


def load_tables(name: str | os.PathLike, words: Iterable[str] | None = None, max_words: int = 0,
                dtype: torch.dtype = torch.float32) -> LLMTables:  # fmt: skip
    name = str(name)
    tokenizer = load_tokenizer(name)
    emb = load_input_embeddings(name, dtype)
    entries = word_entries(tokenizer, words, max_words)
    if not entries:
        raise InputError(f"--llm {name}: its tokenizer has no whole-word entries", None,
                         "give a word-level or BPE tokenizer whose vocabulary holds words")  # fmt: skip
    if emb.shape[0] < max(i for _, ids in entries for i in ids) + 1:
        raise InputError(
            f"--llm {name}: the tokenizer's ids exceed the embedding table ({emb.shape[0]} rows)"
        )
    return LLMTables.from_embeddings(name, tokenizer, emb, entries)
