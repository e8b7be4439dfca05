"""Incremental-decoding state of ``WhisperGPT``: the KV cache (``WhisperGPTCache``, dynamic or
static shapes) and the memoised weight copies its one-position step reads on CPU (``DecodeWeights``,
in the cache's ``decode_dtype``). ``WhisperGPT.new_cache`` / ``step`` are the public entry points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from whispergpt.models.blocks import BlockWeights, FastLinear, Int8Linear, LayerKV, StaticPos, decode_linear
from whispergpt.models.depth import DepthState, DepthWeights


class WhisperGPTCache:
    """Incremental-decoding state: per-layer KV buffers and ``steps`` (input positions consumed).

    Made by ``WhisperGPT.new_cache``; ``steps`` is the index of the next pattern step fed to
    ``step``/``forward_steps``. A cache is tied to its batch size and ``max_steps``.
    ``decode_dtype``: the weights ``step`` reads on CPU (``fp32``, ``bf16`` or ``int8``, see
    ``blocks.decode_linear``). ``static``: ``step`` takes its position from ``pos`` (a ``(1,)``
    long tensor on the device, kept equal to ``steps``) and attends over the first ``span``
    positions with a mask, so a step has fixed shapes and reads no host value (traceable, capturable
    in a CUDA graph). ``span`` (``static_span``) grows in powers of two from 64 up to ``max_steps``:
    a few shapes (one trace or graph each) instead of every step attending over the whole cache.
    ``depth``: pattern ``depth``'s per-frame state (``WhisperGPT.depth_step``), else None.
    ``weights``: the decode weight copies, taken at the first inference step and kept: a cache
    serves one set of weights (make a new cache after changing them).
    ``prefix``: decoder positions the semantic prefix took (``semantic="prefix"``, set by the call
    that starts at step 0); step ``p``'s decoder positions follow them.
    """

    def __init__(
        self,
        main: list[LayerKV],
        mel: list[LayerKV] | None,
        max_steps: int,
        decode_dtype: str = "fp32",
        static: bool = False,
        depth: DepthState | None = None,
    ) -> None:
        self.main, self.mel, self.max_steps, self.depth = main, mel, max_steps, depth
        # (checking every parameter's version each step cost ~5% of a D256 L4 step on CPU)
        self.weights: DecodeWeights | None = None
        self.steps = 0
        self.prefix = 0
        self.decode_dtype = decode_dtype
        self.pos: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None  # arange of the main stack's cache length
        if static:
            ref = (main or mel)[0].k
            self.pos = torch.zeros(1, dtype=torch.long, device=ref.device)
            self._positions = torch.arange(main[0].k.shape[2] if main else max_steps, device=ref.device)

    def reset(self) -> None:
        """Back to step 0, buffers kept: the next prefill overwrites positions from 0, and no step
        reads a position past its own (dynamic: sliced off; static: masked)."""
        self.steps = self.prefix = 0
        if self.pos is not None:
            self.pos.zero_()

    @property
    def main_positions(self) -> int:
        """Decoder positions the main stack's KV buffers hold (prefix + steps * positions per step)."""
        return self.main[0].k.shape[2] if self.main else 0

    @property
    def static(self) -> bool:
        return self.pos is not None

    def static_span(self) -> int:
        """Steps the next static step attends over: a power of two >= 64 covering ``steps + 1``,
        capped at ``max_steps`` (a host value: the caller passes it to the traced step)."""
        need = self.steps + 1
        return min(self.max_steps, max(64, 1 << (need - 1).bit_length()))

    def static_pos(
        self, span: int, positions_per_step: int = 1, offset: int = 0, prefix: int = 0
    ) -> tuple[StaticPos, StaticPos]:
        """``(mel stack's, main stack's)`` ``StaticPos`` of the current step over the first
        ``span`` steps (device ops only); the main stack holds ``prefix`` positions (a semantic
        prefix), then ``positions_per_step`` positions per step, this one at ``offset``."""
        idx = self.pos
        at_mel = StaticPos(idx, (self._positions[:span] <= idx)[None])  # (1, span)
        if positions_per_step == 1 and prefix == 0:
            return at_mel, at_mel
        main = idx * positions_per_step + (offset + prefix)
        n = span * positions_per_step + prefix
        return at_mel, StaticPos(main, (self._positions[:n] <= main)[None])


# ``decode_dtype="auto"`` picks int8 on CPU from this many bytes of fp32 step weights. Measured
# (docs/PERFORMANCE.md, 2-core EPYC VM, 1 MiB L2 per core): D256 L4 (13 MiB) steps 2.0x faster in
# int8, trained-checkpoint NLL +0.001 nats, top-1 agreement 98.7 %; D128 L4 (3.6 MiB, cache-resident)
# is 0.8x in int8 (the casts cost more than the bytes saved), so it stays fp32.
AUTO_INT8_MIN_BYTES = 8 * 2**20


def step_weight_bytes(model) -> int:
    """fp32 bytes of the matrices one decode step reads: every ``nn.Linear`` and a tied head."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if model.head is None and model.depth is None:
        n += model._head_weight().numel()  # tied to the token embedding: read whole each step
    return 4 * n


def resolve_decode_dtype(model, decode_dtype: str, device: torch.device) -> str:
    """``decode_dtype`` made concrete: ``auto`` is ``int8`` on CPU when the step's fp32 weights
    reach ``AUTO_INT8_MIN_BYTES`` (they then stream from memory each step and a quarter of the
    bytes pays), else ``fp32`` (the weights' own dtype; always off CPU)."""
    if decode_dtype != "auto":
        return decode_dtype
    if device.type != "cpu":
        return "fp32"
    return "int8" if step_weight_bytes(model) >= AUTO_INT8_MIN_BYTES else "fp32"


@dataclass
class DecodeWeights:
    """The decode copies (``blocks.decode_linear``, in one ``decode_dtype``) ``step`` uses in
    inference on CPU, memoised on the model by ``WhisperGPT._decode_weights`` and rebuilt when
    ``key`` (the dtype, every parameter's ``_version`` and storage) changes: optimizer steps, ``load_state_dict``, ``.to()``, in-place edits under
    ``no_grad``. Not detected: writes through ``param.data`` (they bypass ``_version``) and
    Parameter objects swapped for new ones (``params`` is read once: walking the modules per
    step costs as much as a small step)."""

    params: list[nn.Parameter]
    key: tuple
    decoder: list[BlockWeights]
    mel: tuple[FastLinear | Int8Linear, list[BlockWeights]] | None
    mel_proj: FastLinear | Int8Linear | None
    head: FastLinear | Int8Linear | None  # None with pattern depth (its heads are in ``depth``)
    depth: DepthWeights | None


def decode_weights(model, decode_dtype: str = "fp32") -> DecodeWeights | None:
    """``WhisperGPT._decode_weights``: the decode copies (``blocks.decode_linear``) its ``_step``
    reads; None with autograd (gradients must reach the parameters) and off CPU (cuBLAS takes
    either layout at full speed). A traced step reads the copies built before it (inductor keeps
    F.linear's slow transposed operand)."""
    ref = model.tok_emb.weight
    if torch.is_grad_enabled() or ref.device.type != "cpu":
        return None
    if torch.compiler.is_compiling():
        return model._decode_memos.get(decode_dtype)
    memo = model._decode_memos.get(decode_dtype)
    params = list(model.parameters()) if memo is None else memo.params
    key = (decode_dtype, *((p._version, p.data_ptr()) for p in params))
    if memo is not None and memo.key == key:
        if model._decode_memo is not memo:  # (nn.Module.__setattr__ is not free)
            model._decode_memo = memo
        return memo
    mb, proj = model.mel_branch, model.mel_proj

    def lin(m: nn.Linear) -> FastLinear | Int8Linear:
        return decode_linear(m.weight, m.bias, decode_dtype)

    memo = model._decode_memo = model._decode_memos[decode_dtype] = DecodeWeights(
        params=params,
        key=key,
        decoder=[BlockWeights.of(b, decode_dtype) for b in model.decoder.blocks],
        mel=None
        if mb is None
        else (lin(mb.inp), [BlockWeights.of(b, decode_dtype) for b in mb.stack.blocks]),
        mel_proj=None if proj is None else lin(proj),
        head=None if model.depth is not None else decode_linear(model._head_weight(), None, decode_dtype),
        depth=None if model.depth is None else DepthWeights.of(model.depth, decode_dtype),
    )
    return memo


def warm_static_tables(model, cache: WhisperGPTCache) -> None:
    """Build the RoPE tables and the decode weight copies a static step over ``cache`` reads, so
    that a ``torch.compile``d step reads them rather than recomputing them in every call."""
    model._decode_weights(cache.decode_dtype)
    model.decoder.step_rope(cache.main[0].k.shape[2], cache.main[0].k.device)
    if model.mel_branch is not None:
        model.mel_branch.stack.step_rope(cache.max_steps, cache.main[0].k.device)
