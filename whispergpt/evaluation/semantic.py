"""``whispergpt eval`` of a semantic LM (``models/semantic_lm.py``): its part of ``evaluate.evaluate``.

The split's ``semantic`` stream (one token per codec frame) is read at the LM's rate (every
``g``-th frame, ``rate_tokens``): a file of ``T`` codec frames is ``ceil(T / g)`` tokens, tiled
into windows of ``context`` tokens exactly as the decoders' frames are (``evaluate.tile_file``,
every token scored once, ``overlap`` default ``context // 2``) and scored by the decoder the LM
is (``evaluate.evaluate_windows``). NLL is nats per semantic token (sum over count, all-reduced
across ranks by ``evaluate``); bits/s divide by the seconds the tokens cover, ``tokens / rate``
(``metrics.bits.bits_per_second`` at the semantic rate). The dataset must store the semantic
stream of the tokenizer the LM was trained on: same clusters and rate, and the same tokenizer
folder where the LM's training record names one (``hierarchy.check_tokenizers``).
"""

from __future__ import annotations

import os

import torch

from whispergpt.data import PreparedDataset
from whispergpt.models.semantic_lm import SemanticLM, rate_tokens


def reads_semantic(model) -> bool:
    """Whether evaluating ``model`` reads the split's semantic stream (a semantic LM, or an acoustic
    model conditioned on it)."""
    return isinstance(model, SemanticLM) or getattr(model.config, "semantic", "none") != "none"


def semantic_summary(model: SemanticLM) -> dict:
    """``config_summary`` of a semantic LM (the eval report's ``config``)."""
    c = model.config
    return dict(fusion="none", pattern="semantic", num_parameters=model.num_parameters(), d_model=c.d_model,
                n_layers=c.n_layers, context=c.context, num_codebooks=1, scored_codebooks=1,
                clusters=c.clusters, rate=c.rate)  # fmt: skip


def check_semantic_data(model: SemanticLM, ds: PreparedDataset, checkpoint: str | os.PathLike) -> None:
    """InputError unless ``ds`` stores the semantic stream of ``model``'s tokenizer."""
    from whispergpt.errors import InputError
    from whispergpt.inference.hierarchy import check_tokenizers
    from whispergpt.training.record import read_training_record, semantic_tokenizer_of

    have = semantic_tokenizer_of(ds.manifest)
    if have is None:
        raise InputError(
            "the dataset stores no semantic stream, which a semantic LM reads",
            ds.directory,
            "prepare it with --semantic TOKENIZER_DIR (the tokenizer the LM was trained on)",
        )
    trained = (read_training_record(checkpoint) or {}).get("semantic_tokenizer")
    c = model.config
    want = dict(trained or {}, clusters=c.clusters, rate=c.rate)
    check_tokenizers(("the semantic LM", checkpoint, want), ("the dataset", ds.directory, have))


@torch.no_grad()
def score_semantic(
    model: SemanticLM,
    frame_tokens_of: dict[int, torch.Tensor],
    overlap: int,
    totals,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> None:
    """Add the teacher-forced NLL of the semantic tokens of whole files to ``totals`` (``evaluate.Totals``
    of one stream); ``frame_tokens_of[i] (N_i,)``: file ``i``'s stored stream, one token per codec frame."""
    from whispergpt.evaluation.windows import evaluate_windows, tile_file

    g, ctx = model.group, model.config.context
    tokens_of = {i: rate_tokens(t, g)[None] for i, t in frame_tokens_of.items()}  # (N,) -> (1, S)
    for t in tokens_of.values():
        model.check_tokens(t)
    windows = [w for i, t in tokens_of.items() for w in tile_file(t.shape[-1], ctx, overlap, i)]
    evaluate_windows(model.lm, tokens_of, None, windows, totals, batch_size, device, autocast_dtype)
