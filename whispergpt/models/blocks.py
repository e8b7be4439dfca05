"""Transformer building blocks shared by training, prefill and one-position decoding.

Every block has two entry points over the same modules: ``forward`` runs ``N`` positions
``(B, N, W)`` (training without a cache; prefill with one), ``step`` runs one position ``(B, W)``
at an absolute index against a KV cache (the sampler's hot loop). Both call the block's own
submodules (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``fc``, ``out``) and the one
``apply_rope``, so a change to a block is one edit and the two paths cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

if TYPE_CHECKING:
    from whispergpt.models.config import WhisperGPTConfig


def rope_cos_sin(
    start: int,
    length: int,
    head_dim: int,
    base: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(length, head_dim)`` for absolute positions ``start .. start+length-1``.

    Angles are computed in fp32 whatever ``dtype`` (the table's storage dtype).
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (N, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, hd), rotate-half layout
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (..., hd)`` by tables broadcastable to it; computed in the tables' dtype,
    returned in ``x``'s (so fp32 tables never leak an fp32 q/k into a bf16 attention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.to(cos.dtype) * cos + rotated.to(sin.dtype) * sin).to(x.dtype)


def step_rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, hd)`` RoPE tables -> the one-position step's ``(N, 3, 1, hd)`` tables, which rotate a
    whole ``(B, 3, H, hd)`` q/k/v projection in one multiply-add (``rope_qkv``): rows q and k carry
    the rotation, row v the identity (cos 1, sin 0). The sign of ``apply_rope``'s rotated half is
    folded into sin (``(-a) * s == a * (-s)`` exactly), so the result is bitwise ``apply_rope``'s."""
    half = cos.shape[-1] // 2
    signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
    cos3 = torch.stack([cos, cos, torch.ones_like(cos)], dim=1)[:, :, None]  # (N, 3, 1, hd)
    sin3 = torch.stack([signed, signed, torch.zeros_like(sin)], dim=1)[:, :, None]
    return cos3, sin3


def rope_qkv(qkv: torch.Tensor, cos3: torch.Tensor, sin3: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` on q and k of ``qkv (B, 3, H, hd)`` and v unchanged, in 5 ops instead of ~12:
    the half swap is a ``flip`` of the ``(2, hd/2)`` view (tables: ``step_rope_tables``)."""
    B, three, H, hd = qkv.shape
    x = qkv if qkv.dtype == cos3.dtype else qkv.to(cos3.dtype)
    swapped = x.view(B, three, H, 2, hd // 2).flip(-2).view(B, three, H, hd)
    out = x * cos3 + swapped * sin3
    return out if out.dtype == qkv.dtype else out.to(qkv.dtype)


DECODE_DTYPES = ("auto", "fp32", "bf16", "int8")  # auto: decoding.resolve_decode_dtype


@dataclass
class FastLinear:
    """A ``nn.Linear`` for inference on CPU: its weight detached as ``addmm``'s right operand.

    MKL's sgemm with a transposed right operand (what ``F.linear`` passes) is ~1.3x slower at
    batch 1 and ~3x slower at batch 8 for these small-row products (benchmarks/
    bench_decode_compile.py), so the one-position decode path keeps an ``(in, out)`` copy.
    A bf16 copy (``decode_dtype="bf16"``) takes inputs of any dtype: they are cast to bf16 for
    the product and the result cast back.
    """

    wt: torch.Tensor  # (in, out), contiguous
    b: torch.Tensor | None

    @classmethod
    def of(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> FastLinear:
        """From a ``(out, in)`` weight (and bias), e.g. ``FastLinear.of(lin.weight, lin.bias)``."""
        dtype = weight.dtype if dtype is None else dtype
        wt = weight.detach().t().to(dtype).contiguous()
        return cls(wt, None if bias is None else bias.detach().to(dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.wt.dtype:
            return self(x.to(self.wt.dtype)).to(x.dtype)
        return torch.mm(x, self.wt) if self.b is None else torch.addmm(self.b, x, self.wt)


class Int8Linear:
    """A ``nn.Linear`` with int8 weights (symmetric, one scale per output channel) for inference
    on CPU: weight-only quantization through ``torch._weight_int8pack_mm`` (bf16 activations, the
    AVX-512 kernel gpt-fast uses). At batch 1 a decode step mostly streams weights from cache: a
    quarter of fp32's bytes; measured 2.3x faster than fp32 over the 16 products of a D256 L4
    step (benchmarks/bench_decode_dtype.py measures speed and quality). The kernel needs the
    input width to be a multiple of 16 (other widths give wrong values): such layers keep a
    bf16 ``FastLinear``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        w = weight.detach().float()  # (out, in)
        self.fallback = None if w.shape[1] % 16 == 0 else FastLinear.of(w, bias, torch.bfloat16)
        if self.fallback is not None:
            return
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # (out,)
        self.q = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)
        self.b = None if bias is None else bias.detach().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback is not None:
            return self.fallback(x)
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale)  # (B, out) bf16
        # the fp32 bias promotes the sum to fp32: the cast back and the add in one op
        out = y if self.b is None else torch.add(y, self.b)
        return out.to(x.dtype)  # a no-op for fp32 inputs with a bias


def decode_linear(
    weight: torch.Tensor, bias: torch.Tensor | None = None, decode_dtype: str = "fp32"
) -> FastLinear | Int8Linear:
    """The one-position decode path's copy of a linear layer's weights in ``decode_dtype``
    (``fp32``: the weights' own dtype)."""
    if decode_dtype == "int8":
        return Int8Linear(weight, bias)
    return FastLinear.of(weight, bias, torch.bfloat16 if decode_dtype == "bf16" else None)


@dataclass
class BlockWeights:
    """A ``Block``'s linears as decode copies (``decode_linear``); its norms are used as they are."""

    qkv: FastLinear | Int8Linear
    proj: FastLinear | Int8Linear
    fc: FastLinear | Int8Linear
    out: FastLinear | Int8Linear

    @classmethod
    def of(cls, block: Block, decode_dtype: str = "fp32") -> BlockWeights:
        a = block.attn
        lin = (a.qkv, a.proj, block.fc, block.out)
        return cls(*(decode_linear(m.weight, m.bias, decode_dtype) for m in lin))


@dataclass
class StaticPos:
    """A decode position held on the device, for static-shape steps (no host value read, so a
    step can be traced once or captured in a CUDA graph): ``index (1,)`` long and ``mask (1, L)``
    bool, True at the cache positions ``<= index``; attention reads the first ``L`` positions."""

    index: torch.Tensor
    mask: torch.Tensor


def _drop(m: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``, skipping the module call where it is the identity (the decode hot loop)."""
    return m(x) if m.training and m.p > 0 else x


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` without the module call, which costs about as much as the op in the decode loop."""
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class LayerKV:
    """Preallocated keys/values of one attention layer: ``k``/``v (B, H, L, hd)`` each, views of one
    ``kv (B, 2, H, L, hd)`` buffer, so that a decode step writes its key and value in one copy."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int, device, dtype) -> None:
        self.kv = torch.zeros(batch, 2, heads, length, head_dim, device=device, dtype=dtype)
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]


class CausalSelfAttention(nn.Module):
    """Self-attention; ``causal=False`` (no cache only) lets every position see the whole window."""

    def __init__(self, dim: int, heads: int, dropout: float, bias: bool, causal: bool = True) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj.residual = True  # scaled init
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple | None, kv: LayerKV | None, start: int) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (
            self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3x (B,H,N,hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        p = self.dropout if self.training else 0.0
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            assert self.causal, "a KV cache is for causal attention"
            end = start + N
            if end > kv.k.shape[2]:
                raise ValueError(
                    f"KV cache holds {kv.k.shape[2]} positions, this call needs {end}: make a larger cache"
                )
            kv.k[:, :, start:end] = k.to(kv.k.dtype)
            kv.v[:, :, start:end] = v.to(kv.v.dtype)
            keys, values = kv.k[:, :, :end].to(q.dtype), kv.v[:, :, :end].to(q.dtype)
            if N == 1:  # one new query sees every cached position
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p)
            elif start == 0:
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=p, is_causal=True)
            else:  # query i sits at absolute position start + i
                allowed = torch.ones(N, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, N, D)
        return self.resid_drop(self.proj(y))

    def step(
        self,
        x: torch.Tensor,
        rope: tuple | None,
        kv: LayerKV,
        pos: int | StaticPos,
        w: BlockWeights | None = None,
    ) -> torch.Tensor:
        """One position ``x (B, D)`` at absolute index ``pos``: writes its K/V, attends to ``0..pos``.

        ``w``: this block's ``BlockWeights`` (inference on CPU) or None (the modules themselves).
        ``pos``: a host int, or a ``StaticPos`` (static shapes: the K/V written with
        ``index_copy_``, attention over the mask's span with positions after ``pos`` masked).
        """
        B, D = x.shape
        qkv_lin, proj_lin = (self.qkv, self.proj) if w is None else (w.qkv, w.proj)
        qkv = qkv_lin(x).view(B, 3, self.heads, D // self.heads)  # (B, 3, H, hd)
        if rope is not None:  # q and k rotated, v passed through: one multiply-add
            qkv = rope_qkv(qkv, *rope)
        p = self.dropout if self.training else 0.0
        if isinstance(pos, StaticPos):  # write at a device index, attend over the first L, masked
            kv.kv.index_copy_(3, pos.index, qkv[:, 1:, :, None].to(kv.kv.dtype))  # (B, 2, H, 1, hd)
            n, mask = pos.mask.shape[-1], pos.mask
        else:
            kv.kv.select(3, pos).copy_(qkv[:, 1:])  # key and value of this position, one copy
            n, mask = pos + 1, None
        keys, values = kv.k.narrow(2, 0, n), kv.v.narrow(2, 0, n)
        if keys.dtype != qkv.dtype:
            keys, values = keys.to(qkv.dtype), values.to(qkv.dtype)
        q = qkv[:, 0, :, None]  # (B, H, 1, hd)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)  # (B,H,1,hd)
        return _drop(self.resid_drop, proj_lin(y.reshape(B, D)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, bias: bool, causal: bool = True
    ) -> None:
        super().__init__()
        hidden = int(round(mlp_ratio * dim))
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = CausalSelfAttention(dim, heads, dropout, bias, causal)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.out = nn.Linear(hidden, dim, bias=bias)
        self.out.residual = True
        self.drop = nn.Dropout(dropout)

    def _mlp(self, h: torch.Tensor, w: BlockWeights | None = None) -> torch.Tensor:
        """The MLP on ``h``, the already normed input (``ln2``)."""
        fc, out = (self.fc, self.out) if w is None else (w.fc, w.out)
        return _drop(self.drop, out(F.gelu(fc(h))))

    def forward(self, x: torch.Tensor, rope: tuple | None, kv: LayerKV | None, start: int) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, kv, start)
        return x + self._mlp(self.ln2(x))

    def step(
        self,
        x: torch.Tensor,
        rope: tuple | None,
        kv: LayerKV,
        pos: int | StaticPos,
        w: BlockWeights | None = None,
    ) -> torch.Tensor:
        """``forward`` for one position ``x (B, D)`` at absolute index ``pos`` (``w``: see
        ``CausalSelfAttention.step``)."""
        x = x + self.attn.step(_layer_norm(self.ln1, x), rope, kv, pos, w)
        return x + self._mlp(_layer_norm(self.ln2, x), w)


class Stack(nn.Module):
    """Blocks + final norm, with RoPE or learned positions; causal unless ``causal=False``.

    ``cfg``: any config with ``mlp_ratio``, ``dropout``, ``bias``, ``pos_emb``, ``rope_base``.
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        cfg: WhisperGPTConfig,
        max_positions: int,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.heads, self.rope_base, self.max_positions = heads, cfg.rope_base, max_positions
        self.pos = nn.Embedding(max_positions, dim) if cfg.pos_emb == "learned" else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.dropout, cfg.bias, causal) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim, bias=cfg.bias)
        self.grad_checkpointing = False  # a training setting (train.grad_checkpointing), not saved
        # (device, dtype) -> (cos, sin) for positions 0..n-1: built once, not per call or per step
        self._rope_tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._step_tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _check_positions(self, end: int) -> None:
        if end > self.max_positions and self.pos is not None:
            raise ValueError(
                f"learned positions cover {self.max_positions} positions, got {end}: "
                "raise context or use pos_emb=rope"
            )

    def rope(self, end: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple | None:
        """RoPE tables ``(>= end, hd)`` for positions ``0..``, memoised per device and dtype
        (they depend on no weight); None with learned positions or no blocks."""
        if self.pos is not None or len(self.blocks) == 0:
            return None
        hd = self.ln_f.normalized_shape[0] // self.heads
        key = (device, dtype)
        tables = self._rope_tables.get(key)
        if torch.compiler.is_compiling():  # a traced graph reads a memo built before, never writes one
            ok = tables is not None and tables[0].shape[0] >= end
            return tables if ok else rope_cos_sin(0, end, hd, self.rope_base, device, dtype)
        if tables is None or tables[0].shape[0] < end:
            # normal tensors even when first built under inference_mode: training reuses them
            with torch.inference_mode(False), torch.no_grad():
                tables = rope_cos_sin(0, max(end, self.max_positions), hd, self.rope_base, device, dtype)
            self._rope_tables[key] = tables
        return tables

    def step_rope(self, end: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple | None:
        """``rope``'s tables in the one-position step's form (``step_rope_tables``: ``(>= end, 3, 1,
        hd)``), memoised alongside them."""
        tables = self.rope(end, device, dtype)
        if tables is None:
            return None
        key = (device, dtype)
        memo = self._step_tables.get(key)
        if memo is not None and memo[0].shape[0] == tables[0].shape[0]:
            return memo
        if torch.compiler.is_compiling():  # a traced graph reads a memo built before, never writes one
            return step_rope_tables(*tables)
        with torch.inference_mode(False), torch.no_grad():
            memo = self._step_tables[key] = step_rope_tables(*tables)
        return memo

    def forward(self, x: torch.Tensor, kvs: list[LayerKV] | None, start: int) -> torch.Tensor:
        N = x.shape[1]
        self._check_positions(start + N)
        if self.pos is not None:
            x = x + self.pos(torch.arange(start, start + N, device=x.device))
        rope = self.rope(start + N, x.device)
        if rope is not None:
            rope = (rope[0][start : start + N], rope[1][start : start + N])  # (N, hd)
        checkpointed = self.grad_checkpointing and kvs is None and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if checkpointed:  # activations recomputed in backward (RNG kept: same dropout masks)
                x = torch.utils.checkpoint.checkpoint(block, x, rope, None, start, use_reentrant=False)
            else:
                x = block(x, rope, None if kvs is None else kvs[i], start)
        return self.ln_f(x)

    def step(
        self,
        x: torch.Tensor,
        kvs: list[LayerKV],
        pos: int | StaticPos,
        weights: list[BlockWeights] | None = None,
    ) -> torch.Tensor:
        """One position ``x (B, W)`` at absolute index ``pos`` -> final-norm output ``(B, W)``.

        ``weights``: one ``BlockWeights`` per block (inference on CPU), or None. ``pos``: a host
        int or a ``StaticPos`` (see ``CausalSelfAttention.step``; its range is the caller's to keep).
        """
        if isinstance(pos, StaticPos):
            if self.pos is not None:
                x = x + self.pos.weight.index_select(0, pos.index)
            rope = self.step_rope(pos.mask.shape[-1], x.device)
            if rope is not None:  # (1, 3, 1, hd)
                rope = (rope[0].index_select(0, pos.index), rope[1].index_select(0, pos.index))
        else:
            self._check_positions(pos + 1)
            if self.pos is not None:
                x = x + self.pos.weight[pos]
            rope = self.step_rope(pos + 1, x.device)
            if rope is not None:
                rope = (rope[0][pos], rope[1][pos])  # (3, 1, hd)
        for i, (block, kv) in enumerate(zip(self.blocks, kvs)):
            x = block.step(x, rope, kv, pos, None if weights is None else weights[i])
        return self.ln_f(x)

    def new_kv(self, batch: int, length: int, device, dtype) -> list[LayerKV]:
        dim = self.ln_f.normalized_shape[0]
        return [LayerKV(batch, self.heads, length, dim // self.heads, device, dtype) for _ in self.blocks]


class MelBranch(nn.Module):
    """The paper's lightweight causal decoder over mel slices: Linear(M -> mel_dim) + causal blocks.

    Input positions whose mel frame index is negative (the first ``1 + lag`` steps) use a learned
    pad vector instead of the projected mel.
    """

    def __init__(self, cfg: WhisperGPTConfig, max_steps: int) -> None:
        super().__init__()
        self.lag = cfg.mel_lag
        self.inp = nn.Linear(cfg.n_mels, cfg.mel_dim, bias=cfg.bias)
        self.pad = nn.Parameter(torch.zeros(cfg.mel_dim))
        self.stack = Stack(cfg.mel_dim, cfg.mel_layers, cfg.mel_heads, cfg, max_steps)

    def forward(self, mel: torch.Tensor, kvs: list[LayerKV] | None, start: int) -> torch.Tensor:
        # mel: (B, M, P) at input positions start .. start+P-1 -> (B, P, mel_dim)
        x = self.inp(mel.transpose(1, 2))
        steps = torch.arange(start, start + x.shape[1], device=x.device)
        is_pad = (steps < 1 + self.lag)[None, :, None]
        x = torch.where(is_pad, self.pad.to(x.dtype), x)
        return self.stack(x, kvs, start)

    def step(
        self,
        mel: torch.Tensor | None,
        kvs: list[LayerKV],
        pos: int | StaticPos,
        batch: int,
        fast: tuple[FastLinear | Int8Linear, list[BlockWeights]] | None = None,
    ) -> torch.Tensor:
        """One position: ``mel (B, M)`` (None while the frame index is negative) -> ``(B, mel_dim)``.

        ``fast``: ``(inp, stack weights)`` as ``decode_linear``/``BlockWeights`` copies (inference on
        CPU), or None. With a ``StaticPos`` the pad vector is chosen on the device (``mel`` required).
        """
        inp, weights = (self.inp, None) if fast is None else fast
        if isinstance(pos, StaticPos):
            x = torch.where(pos.index < 1 + self.lag, self.pad, inp(mel.to(self.inp.weight.dtype)))
        elif pos < 1 + self.lag or mel is None:
            x = self.pad.expand(batch, -1)
        else:
            x = inp(mel.to(self.inp.weight.dtype))
        return self.stack.step(x, kvs, pos, weights)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Recompute every ``Stack`` block of ``model`` in the backward pass (``train.grad_checkpointing``):
    activation memory per block drops to its input; returns how many stacks were switched."""
    stacks = [m for m in model.modules() if isinstance(m, Stack)]
    for m in stacks:
        m.grad_checkpointing = enabled
    return len(stacks)
