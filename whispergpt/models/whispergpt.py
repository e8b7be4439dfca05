"""The Whisper-GPT hybrid decoder (Verma 2024) and its token-only baseline.

At every pattern step (see ``whispergpt.patterns``) the model reads the tokens placed at the
previous step (codebook embeddings summed, MusicGen-style, or concatenated: ``token_input``) and, unless ``fusion="none"``, the
lagged log-mel frame passed through a small causal transformer (the "mel branch", width
``mel_dim``). The two are fused (``concat`` | ``sum`` | ``interleave``), a pre-norm GPT decoder
runs over the steps, and ``Ks`` heads predict the tokens placed at the current step.

Fusions: ``concat`` (paper) = [token embedding (d_model - mel_dim) ; mel branch (mel_dim)];
``sum`` = token embedding + Linear(mel_dim -> d_model)(mel branch); ``interleave`` = two decoder
positions per step, [mel position, token position], logits taken from the token position only
(the decoder runs over 2P positions); ``none`` = token-only baseline, no mel parameters at all.
With RoPE, windows longer than ``context`` run (positions are not tabulated); learned positions
cover exactly ``context`` frames (plus delay's K - 1 steps, doubled for interleave).

Public API:

- ``WhisperGPTConfig``: validated dataclass, saved as ``config.json``.
- ``WhisperGPT(config)``: ``model(codes (B,K,T), mel (B,M,T) | None) -> WhisperGPTOutput`` with
  ``logits (B, Ks, T, V)`` where ``logits[:, k, t]`` scores ``codes[:, k, t]``.
- ``nll_per_codebook(logits, codes, mask=None) -> (nll_sum (Ks,) float64, count (Ks,) int64)``.
- Incremental decoding in step space: ``new_cache``, ``forward_steps`` (prefill), ``step``. ``step``
  runs one position through the same ``Block``/``Stack`` modules (``blocks.py``) as
  ``forward_steps``, via their ``step`` methods: same values up to float rounding.
- Pattern ``depth`` (``models/depth.py``): the decoder runs once per frame and a small depth
  transformer predicts the frame's K codebooks in order; ``step`` gives codebook 0, ``depth_step``
  codebooks 1..K-1.
- ``model.semantic`` (``models/semantic.py``): ``none`` | ``prefix`` | ``aligned`` conditioning on
  semantic tokens, ``semantic (B, T)`` one per codec frame, passed to ``forward``/``nll``.
- ``save_pretrained(dir)`` / ``WhisperGPT.from_pretrained(dir_or_hub_id)`` / ``push_to_hub``:
  ``config.json`` + ``model.safetensors`` (``models.registry.HubModel``, the Hub mixin).

Parameter counts (``num_parameters()``) include every parameter: embeddings, heads, mel branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from whispergpt.models import patterns as pt
from whispergpt.models.blocks import (
    DECODE_DTYPES,
    MelBranch,
    Stack,
    StaticPos,
)
from whispergpt.models.config import WhisperGPTConfig
from whispergpt.models.decoding import DecodeWeights, WhisperGPTCache, decode_weights, resolve_decode_dtype
from whispergpt.models.depth import DepthTransformer
from whispergpt.models.loss import chunked_nll
from whispergpt.models.registry import HubModel
from whispergpt.models.semantic import (
    SemanticEmbedding,
    aligned_tokens,
    check_semantic_input,
    num_prefix,
    prefix_tokens,
)
from whispergpt.models.token_input import embed_tokens, table_width


@dataclass
class WhisperGPTOutput:
    """``logits (B, Ks, T, V)``: ``logits[:, k, t]`` scores ``codes[:, k, t]``."""

    logits: torch.Tensor


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class WhisperGPT(HubModel, nn.Module):
    """Hybrid mel + token GPT decoder (see the module docstring and ``whispergpt.patterns``)."""

    model_type = "whispergpt"  # config.json's "model_type" (see models.registry)
    config_class, config_section = WhisperGPTConfig, "model"  # save/load: models.registry.HubModel

    def __init__(self, config: WhisperGPTConfig) -> None:
        super().__init__()
        if not isinstance(config, WhisperGPTConfig):
            raise ValueError(f"WhisperGPT needs a WhisperGPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.num_input_codebooks = c.input_codebooks
        self.num_scored_codebooks = c.scored_codebooks
        self.pad_id = c.codebook_size
        # Room for delay's extra steps; RoPE is not limited by it, learned positions are.
        max_steps = c.max_steps
        tok_dim = c.d_model - c.mel_dim if c.fusion == "concat" else c.d_model
        # Kin tables of V + 1 rows (id V = BOS/pad) in one Embedding, addressed with offsets.
        width = table_width(c.token_input, tok_dim, self.num_input_codebooks)
        self.tok_emb = nn.Embedding(self.num_input_codebooks * (c.codebook_size + 1), width)
        self.register_buffer(
            "tok_offsets", torch.arange(self.num_input_codebooks) * (c.codebook_size + 1), persistent=False
        )
        self.mel_branch = MelBranch(c, max_steps) if c.fusion != "none" else None
        self.mel_proj = (
            nn.Linear(c.mel_dim, c.d_model, bias=c.bias) if c.fusion in ("sum", "interleave") else None
        )
        self.drop = nn.Dropout(c.dropout)
        self.decoder = Stack(
            c.d_model, c.n_layers, c.n_heads, c, max_steps * c.positions_per_step + c.max_prefix
        )
        # semantic conditioning (models/semantic.py): prefix positions or a per-step addend
        self.semantic = SemanticEmbedding(c.semantic_vocab, c.d_model) if c.semantic != "none" else None
        # depth: the K codebooks of a frame come from the depth transformer, which has the heads
        self.depth = DepthTransformer(c) if c.pattern == "depth" else None
        # Ks heads in one matrix; tied heads reuse rows 0..V-1 of each codebook's table.
        self.head = (
            None
            if c.tie_weights or self.depth is not None
            else nn.Linear(c.d_model, self.num_scored_codebooks * c.codebook_size, bias=False)
        )
        self._init_weights()
        self._decode_memo: DecodeWeights | None = None  # the last used; all: _decode_memos[dtype]
        self._decode_memos: dict[str, DecodeWeights] = {}

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 * layers).
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                layers = self.config.n_layers
                if name.split(".")[0] in ("mel_branch", "depth"):
                    layers = self.config.mel_layers if name.startswith("mel") else self.config.depth_layers
                std = 0.02 / math.sqrt(2 * max(1, layers)) if getattr(m, "residual", False) else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
        if self.mel_branch is not None:
            nn.init.normal_(self.mel_branch.pad, 0.0, 0.02)

    def num_parameters(self) -> int:
        """All parameters, embeddings, heads and mel branch included."""
        return sum(p.numel() for p in self.parameters())

    # -- step space ---------------------------------------------------------------------------
    def _head_weight(self) -> torch.Tensor:
        if self.head is not None:
            return self.head.weight
        V = self.config.codebook_size
        table = self.tok_emb.weight.view(self.num_input_codebooks, V + 1, -1)
        return table[:, :V].reshape(self.num_scored_codebooks * V, -1)

    def forward_steps(
        self,
        step_tokens: torch.Tensor,
        step_mel: torch.Tensor | None,
        cache: WhisperGPTCache | None = None,
        semantic: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run P consecutive input positions; returns step logits ``(B, Ks, P, V)``.

        ``step_tokens (B, Kin, P)``: at input position ``p`` the tokens placed at step ``p - 1``
        (pad id ``V`` at ``p = 0`` and wherever the pattern places nothing), see
        ``patterns.build_inputs``. ``step_mel (B, M, P)``: mel frame ``p - 1 - lag`` at position
        ``p`` (ignored, may hold anything, for ``p < 1 + lag``; may be None when every position
        is such a pad position or with ``fusion="none"``). Output ``[:, :, i]`` predicts the
        tokens placed at step ``start + i``.

        ``semantic`` (``models/semantic.py``): with ``semantic="prefix"`` the window's prefix
        ``(B, S)`` (``prefix_tokens``), in the call that starts at step 0 only (a cache keeps it);
        with ``"aligned"`` the token each of the P positions reads, ``(B, P)`` (``aligned_tokens``).

        Without a cache the positions start at 0 (training). With a cache they start at
        ``cache.steps`` and the cache advances by P: call it once with the prompt (prefill), then
        ``step`` one position at a time; the logits equal those of one full call.

        Pattern ``depth``: ``(B, 1, P, V)``, codebook 0 only (codebook ``k`` needs codebooks ``< k``
        of its own step: ``depth_step``).
        """
        h = self._hidden_steps(step_tokens, step_mel, cache, semantic)  # (B, P, D)
        if self.depth is not None:  # codebook 0 per step; the cache's depth state starts the last step
            if cache is not None:
                self.depth.begin(h[:, -1], cache.depth)
            return self.depth(h, None)  # (B, 1, P, V)
        B, P = h.shape[:2]
        logits = F.linear(h, self._head_weight())  # (B, P, Ks*V)
        return logits.view(B, P, self.num_scored_codebooks, self.config.codebook_size).transpose(1, 2)

    def _check_step_semantic(self, semantic: torch.Tensor | None, B: int, P: int | None, start: int) -> None:
        """The ``semantic`` argument of ``forward_steps`` (``P`` positions) or ``step`` (``P=None``)."""
        mode = self.config.semantic
        if mode == "none" or (mode == "prefix" and start > 0):
            if semantic is not None:
                why = (
                    "the cache holds the prefix after the first call" if mode == "prefix" else "semantic=none"
                )
                raise ValueError(f"pass no semantic tokens here ({why})")
            return
        want = (
            "(B, S): the window's prefix"
            if mode == "prefix"
            else ("(B,)" if P is None else f"(B, P) = {(B, P)}")
        )
        if semantic is None:
            raise ValueError(f"semantic={mode!r} needs semantic tokens {want}")
        if mode == "prefix":
            ok = semantic.dim() == 2 and semantic.shape[0] == B
        else:
            ok = tuple(semantic.shape) == ((B,) if P is None else (B, P))
        if not ok or semantic.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"semantic must be integer {want}, got {tuple(semantic.shape)} {semantic.dtype}")

    def _hidden_steps(
        self,
        step_tokens: torch.Tensor,
        step_mel: torch.Tensor | None,
        cache: WhisperGPTCache | None,
        semantic: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward_steps`` up to the final norm: hidden states ``(B, P, D)``; advances ``cache``."""
        c = self.config
        if step_tokens.dim() != 3 or step_tokens.shape[1] != self.num_input_codebooks:
            raise ValueError(
                f"step_tokens must be (B, {self.num_input_codebooks}, P), got shape {tuple(step_tokens.shape)}"
            )
        B, _, P = step_tokens.shape
        start = 0 if cache is None else cache.steps
        if cache is not None and start + P > cache.max_steps:
            raise ValueError(f"cache holds {cache.max_steps} steps, this call needs {start + P}")
        self._check_step_semantic(semantic, B, P, start)
        # token embedding of the Kin codebooks (summed or concatenated) -> (B, P, E)
        x = embed_tokens(self.tok_emb, step_tokens + self.tok_offsets[None, :, None], c.token_input)
        m = None
        if self.mel_branch is not None:
            if step_mel is None:
                if start + P > 1 + c.mel_lag:
                    raise ValueError(f"fusion {c.fusion!r} needs step_mel for steps >= {1 + c.mel_lag}")
                step_mel = x.new_zeros(B, c.n_mels, P)
            if step_mel.shape != (B, c.n_mels, P):
                raise ValueError(
                    f"step_mel must be (B, M, P) = {(B, c.n_mels, P)}, got {tuple(step_mel.shape)}"
                )
            m = self.mel_branch(
                step_mel.to(x.dtype), None if cache is None else cache.mel, start
            )  # (B, P, mel_dim)
            if c.fusion == "concat":
                x = torch.cat([x, m.to(x.dtype)], dim=-1)
            elif c.fusion == "sum":
                x = x + self.mel_proj(m)
        if c.semantic == "aligned":  # on the token position, after the mel fusion
            x = x + self.semantic(semantic).to(x.dtype)
        if c.fusion == "interleave":  # positions [mel_p, token_p] per step -> (B, 2P, D)
            x = torch.stack([self.mel_proj(m).to(x.dtype), x], dim=2).reshape(B, 2 * P, c.d_model)
        pps = c.positions_per_step
        S = 0  # prefix positions in front of the steps of this call
        if c.semantic == "prefix" and start == 0 and P:
            pre = self.semantic(semantic).to(x.dtype)  # (B, S, D)
            S = pre.shape[1]
            x = torch.cat([pre, x], dim=1)
        held = 0 if cache is None or start == 0 else cache.prefix  # prefix positions already cached
        if cache is not None and S + held + (start + P) * pps > cache.main_positions:
            raise ValueError(
                f"the cache holds {cache.main_positions} decoder positions, this call needs "
                f"{S + held + (start + P) * pps} (a semantic prefix of {S + held})"
            )
        h = self.decoder(self.drop(x), None if cache is None else cache.main, held + start * pps)
        h = h[:, S:]
        if pps == 2:
            h = h[:, 1::2]  # logits only at the token position of each step
        if cache is not None:
            if start == 0:
                cache.prefix = S
            cache.steps += P
            if cache.static:
                cache.pos.fill_(cache.steps)  # a host value written, nothing read back
        return h

    def _frame_logits(self, h: torch.Tensor, T: int) -> torch.Tensor:
        """Step hidden states ``h (B, P, D)`` -> frame logits ``(B, Ks, T, V)``.

        Equal to ``revert_logits(forward_steps(...))``, but the head runs only on the (codebook,
        frame) pairs that exist: delay's padded steps get no logits, and the backward pass does
        not write one zero-filled full-size logits gradient per codebook (as slicing the step
        logits per codebook would: the largest cost of a CPU training step before).
        """
        Ks, V = self.num_scored_codebooks, self.config.codebook_size
        W = self._head_weight()  # (Ks*V, D)
        if self.config.pattern != "delay":
            return F.linear(h[:, :T], W).view(h.shape[0], T, Ks, V).transpose(1, 2)
        # codes[:, k, t] is predicted at step t + k
        idx = torch.arange(T, device=h.device)[:, None] + torch.arange(Ks, device=h.device)  # (T, Ks)
        return torch.einsum("btkd,kvd->bktv", h[:, idx], W.view(Ks, V, -1))

    def new_cache(
        self,
        batch_size: int,
        max_steps: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        decode_dtype: str = "fp32",
        static: bool = False,
    ) -> WhisperGPTCache:
        """An empty cache for ``max_steps`` pattern steps (defaults: the model's device and dtype).

        ``decode_dtype`` (``auto`` | ``fp32`` | ``bf16`` | ``int8``): the weight copies ``step`` reads
        in inference on CPU (``fp32`` = the weights' own dtype; see ``blocks.decode_linear``;
        ``auto``: ``decoding.resolve_decode_dtype``, int8 for models whose step weights are >= 8 MiB).
        ``static``: static-shape steps (see ``WhisperGPTCache``).
        """
        if batch_size < 1 or max_steps < 1:
            raise ValueError(f"batch_size and max_steps must be >= 1, got {batch_size}, {max_steps}")
        if decode_dtype not in DECODE_DTYPES:
            raise ValueError(f"decode_dtype must be one of {list(DECODE_DTYPES)}, got {decode_dtype!r}")
        if static and self.depth is not None:
            raise ValueError(
                "static steps (sample --compile) do not cover pattern 'depth' yet; use the default step"
            )
        ref = self.tok_emb.weight
        device = ref.device if device is None else torch.device(device)
        decode_dtype = resolve_decode_dtype(self, decode_dtype, device)
        if decode_dtype != "fp32" and device.type != "cpu":
            raise ValueError(
                f"decode_dtype {decode_dtype!r} is for CPU decoding; on {device.type} use bf16 weights "
                "(sample --precision bf16)"
            )
        dtype = ref.dtype if dtype is None else dtype
        c = self.config
        prefix = num_prefix(max_steps, c.semantic_group) if c.semantic == "prefix" else 0  # >= any window's
        main = self.decoder.new_kv(batch_size, max_steps * c.positions_per_step + prefix, device, dtype)
        mel = (
            None
            if self.mel_branch is None
            else self.mel_branch.stack.new_kv(batch_size, max_steps, device, dtype)
        )
        depth = None if self.depth is None else self.depth.new_state(batch_size, device, dtype)
        return WhisperGPTCache(main, mel, max_steps, decode_dtype=decode_dtype, static=static, depth=depth)

    def step(
        self,
        step_tokens: torch.Tensor,
        step_mel: torch.Tensor | None,
        cache: WhisperGPTCache,
        semantic: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One input position: ``step_tokens (B, Kin)``, ``step_mel (B, M)`` or None -> ``(B, Ks, V)``.

        Feed at position ``p = cache.steps`` the tokens placed at step ``p - 1`` (pad id ``V`` at
        ``p = 0``) and mel frame ``p - 1 - lag`` (None while that is negative, see
        ``patterns.mel_frame_at_step``). The returned logits predict the tokens placed at step
        ``p`` (``patterns.predicted_at_step``); the cache advances by one. Pattern ``depth``:
        ``(B, 1, V)``, codebook 0 of frame ``p``; ``depth_step`` then gives codebooks 1..K-1.
        ``semantic``: ``(B,)``, the token position ``p`` reads with ``semantic="aligned"``
        (``aligned_tokens``); None otherwise (``prefix``: the prefill put the prefix in the cache).
        """
        c = self.config
        if step_tokens.dim() != 2 or step_tokens.shape[1] != self.num_input_codebooks:
            raise ValueError(
                f"step_tokens must be (B, {self.num_input_codebooks}), got shape {tuple(step_tokens.shape)}"
            )
        B = step_tokens.shape[0]
        if cache.steps + 1 > cache.max_steps:
            raise ValueError(f"cache holds {cache.max_steps} steps, this call needs {cache.steps + 1}")
        if cache.main and cache.main[0].k.shape[0] != B:
            raise ValueError(
                f"the cache was made for batch {cache.main[0].k.shape[0]}, got step_tokens of batch {B}"
            )
        if self.mel_branch is not None:
            if step_mel is None and cache.steps + 1 > 1 + c.mel_lag:
                raise ValueError(f"fusion {c.fusion!r} needs step_mel for steps >= {1 + c.mel_lag}")
            if step_mel is not None and step_mel.shape != (B, c.n_mels):
                raise ValueError(f"step_mel must be (B, M) = {(B, c.n_mels)}, got {tuple(step_mel.shape)}")
        if c.semantic == "prefix" and cache.steps == 0:
            raise ValueError("semantic='prefix': start the cache with forward_steps(..., semantic=prefix)")
        self._check_step_semantic(semantic, B, None, cache.steps)
        return self.step_unchecked(step_tokens, step_mel, cache, semantic)

    def step_unchecked(
        self,
        step_tokens: torch.Tensor,
        step_mel: torch.Tensor | None,
        cache: WhisperGPTCache,
        semantic: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``step`` without its argument checks, for samplers that checked them once per run: the same ``Block``/``Stack`` modules as
        ``forward_steps``, through their one-position ``step`` entry points."""
        if cache.static:
            if step_mel is None and self.mel_branch is not None:  # a pad step: any values
                step_mel = torch.zeros(step_tokens.shape[0], self.config.n_mels, device=step_tokens.device)
            logits = self.step_static(step_tokens, step_mel, cache, cache.static_span(), semantic)
            cache.steps += 1
            return logits
        c, start, B = self.config, cache.steps, step_tokens.shape[0]
        w = cache.weights
        if w is None or torch.is_grad_enabled():
            w = self._decode_weights(cache.decode_dtype)
            cache.weights = None if torch.is_grad_enabled() else w
        pps, pre = c.positions_per_step, cache.prefix  # after the semantic prefix (0 unless semantic=prefix)
        # interleave (pps 2): the mel position first (its output is not scored), then the tokens
        h = self._step_body(
            step_tokens, step_mel, semantic, cache, w, start, pre + start * pps + pps - 1, pre + start * pps
        )  # (B, D)
        cache.steps = start + 1
        if self.depth is not None:  # codebook 0 of the frame; depth_step gives the others
            return self.depth.begin(h, cache.depth, w and w.depth)[:, None]
        logits = F.linear(h, self._head_weight()) if w is None else w.head(h)  # (B, Ks*V)
        return logits.view(B, self.num_scored_codebooks, c.codebook_size)

    def _step_body(
        self, step_tokens: torch.Tensor, step_mel: torch.Tensor | None, semantic: torch.Tensor | None,
        cache: WhisperGPTCache,
        w: DecodeWeights | None, at_mel: int | StaticPos, at: int | StaticPos, at_interleave: int | StaticPos | None,
    ) -> torch.Tensor:  # fmt: skip
        """One position through the mel branch, the fusion and the decoder, for the dynamic cache
        (int positions) and the static one (``StaticPos``): ``at_mel`` in the mel stack, ``at`` the
        tokens' position in the main stack, ``at_interleave`` the mel's there (fusion interleave);
        ``semantic (B,)``: the aligned semantic tokens of the step, else None."""
        c, B = self.config, step_tokens.shape[0]
        x = embed_tokens(self.tok_emb, step_tokens + self.tok_offsets, c.token_input)  # (B, Kin) -> (B, E)
        if self.mel_branch is not None:
            m = self.mel_branch.step(step_mel, cache.mel, at_mel, B, w and w.mel)  # (B, mel_dim)
            mel_proj = self.mel_proj if w is None else w.mel_proj
            if c.fusion == "concat":
                x = torch.cat([x, m.to(x.dtype)], dim=-1)
            elif c.fusion == "sum":
                x = x + mel_proj(m)
            else:
                self.decoder.step(
                    self.drop(mel_proj(m).to(x.dtype)), cache.main, at_interleave, w and w.decoder
                )
        if semantic is not None:  # aligned: on the token position, after the mel fusion
            x = x + self.semantic(semantic).to(x.dtype)
        return self.decoder.step(self.drop(x), cache.main, at, w and w.decoder)  # (B, D)

    def depth_step(self, tokens: torch.Tensor, cache: WhisperGPTCache) -> torch.Tensor:
        """Pattern ``depth``: ``tokens (B,)`` of codebook ``k - 1`` of the current frame -> logits
        ``(B, V)`` of its codebook ``k``. The frame is the one whose codebook 0 the last ``step``
        (or ``forward_steps`` prefill) predicted; call this K - 1 times per frame."""
        if self.depth is None:
            raise ValueError(
                f"depth_step needs pattern 'depth', the model has pattern {self.config.pattern!r}"
            )
        B = cache.depth.kv[0].k.shape[0] if cache.depth.kv else None
        if tokens.dim() != 1 or (B is not None and tokens.shape[0] != B):
            raise ValueError(f"tokens must be (B,) = ({B},), got shape {tuple(tokens.shape)}")
        return self.depth.step(tokens, cache.depth)  # with the weights the frame's ``step`` chose

    def step_static(
        self,
        step_tokens: torch.Tensor,
        step_mel: torch.Tensor | None,
        cache: WhisperGPTCache,
        span: int,
        semantic: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``step_unchecked`` of a static cache, device ops only: the position is ``cache.pos`` (advanced
        here, in place), ``cache.steps`` and ``span`` (``cache.static_span()``) are the caller's;
        ``step_mel`` is required (any values) with a mel branch. One trace per ``span`` (and per
        semantic prefix length, a host value fixed within a window)."""
        c, B = self.config, step_tokens.shape[0]
        w = self._decode_weights(cache.decode_dtype)
        pps, pre = c.positions_per_step, cache.prefix
        at_mel, at = cache.static_pos(span, pps, pps - 1, pre)
        at_interleave = cache.static_pos(span, 2, 0, pre)[1] if c.fusion == "interleave" else None
        h = self._step_body(step_tokens, step_mel, semantic, cache, w, at_mel, at, at_interleave)  # (B, D)
        cache.pos.add_(1)
        logits = F.linear(h, self._head_weight()) if w is None else w.head(h)  # (B, Ks*V)
        return logits.view(B, self.num_scored_codebooks, c.codebook_size)

    def _decode_weights(self, decode_dtype: str = "fp32") -> DecodeWeights | None:
        """Decode copies (``blocks.decode_linear``) for ``step_unchecked``, memoised: ``decoding.decode_weights``."""
        return decode_weights(self, decode_dtype)

    # -- frame space --------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor) -> None:
        """ValueError unless every id in ``codes`` lies in ``[0, codebook_size)``.

        ``forward`` checks shapes and dtypes only (a range check costs a host-device sync per
        step); call this on codes that did not come from a ``PreparedDataset``. An id out of range
        would otherwise index the neighbouring codebook's embedding table, or the device asserts.
        """
        V = self.config.codebook_size
        if codes.numel():
            lo, hi = torch.stack(torch.aminmax(codes)).tolist()  # one host-device sync, not two
            if lo < 0 or hi >= V:
                raise ValueError(f"codes must lie in [0, {V - 1}], got [{lo}, {hi}]")

    def _check_frame_inputs(
        self, codes: torch.Tensor, mel: torch.Tensor | None, semantic: torch.Tensor | None = None
    ) -> None:
        c = self.config
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, K, T), got shape {tuple(codes.shape)}")
        B, K, T = codes.shape
        need = 1 if c.pattern == "coarse" else c.num_codebooks
        if K < need or (c.pattern != "coarse" and K != need):
            raise ValueError(f"pattern {c.pattern!r} needs codes with K={need} codebooks, got K={K}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"codes must be integer (long), got {codes.dtype}")
        # No range check here: it would stop the device every step. Data is checked where it is
        # loaded (PreparedDataset, per shard at open); other callers use ``check_codes``.
        if c.fusion != "none":
            if mel is None:
                raise ValueError(f"fusion {c.fusion!r} needs mel (B, M, T); pass fusion=none for token-only")
            if mel.shape != (B, c.n_mels, T):
                raise ValueError(f"mel must be (B, M, T) = {(B, c.n_mels, T)}, got {tuple(mel.shape)}")
        check_semantic_input(semantic, c.semantic, B, T)

    def step_semantic(self, semantic: torch.Tensor | None, start: int, steps: int) -> torch.Tensor | None:
        """Per-codec-frame ``semantic (B, T)`` of a window -> what ``forward_steps`` takes for its
        positions ``start .. start + steps - 1``: the prefix (``prefix``, only when ``start`` is 0),
        the token of each position (``aligned``), or None."""
        c = self.config
        if semantic is None or c.semantic == "none" or (c.semantic == "prefix" and start > 0):
            return None
        if c.semantic == "prefix":
            return prefix_tokens(semantic, c.semantic_group)
        return aligned_tokens(semantic, c.semantic_group, c.semantic_lookahead, start, steps)

    def _frame_hidden(
        self, codes: torch.Tensor, mel: torch.Tensor | None, semantic: torch.Tensor | None
    ) -> torch.Tensor:
        c = self.config
        self._check_frame_inputs(codes, mel, semantic)
        tokens, step_mel = pt.build_inputs(
            codes.long(), mel if c.fusion != "none" else None, c.pattern, self.pad_id, c.mel_extra_lag
        )
        sem = self.step_semantic(semantic, 0, tokens.shape[-1])
        return self._hidden_steps(tokens, step_mel, None, sem)  # (B, P, D)

    def forward(
        self, codes: torch.Tensor, mel: torch.Tensor | None = None, semantic: torch.Tensor | None = None
    ) -> WhisperGPTOutput:
        """``codes (B, K, T)`` long + ``mel (B, M, T)`` [+ ``semantic (B, T)``, one token per codec
        frame, with ``config.semantic != "none"``] -> logits ``(B, Ks, T, V)`` aligned with ``codes``."""
        h = self._frame_hidden(codes, mel, semantic)  # (B, P, D)
        if self.depth is not None:  # P = T: every frame and every codebook in one depth pass
            return WhisperGPTOutput(logits=self.depth(h, codes.long()))
        return WhisperGPTOutput(logits=self._frame_logits(h, codes.shape[-1]))

    def nll(
        self,
        codes: torch.Tensor,
        mel: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        chunk_rows: int = 8192,
        semantic: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``nll_per_codebook(self(codes, mel, semantic).logits, codes, mask)`` without the full
        logits: the heads and the cross-entropy run over chunks of scored rows (``loss.chunked_nll``)."""
        c = self.config
        T = codes.shape[-1]
        h = self._frame_hidden(codes, mel, semantic)  # (B, P, D)
        if mask is not None and tuple(mask.shape) != (codes.shape[0], T):
            raise ValueError(f"mask must be (B, T) = {(codes.shape[0], T)}, got {tuple(mask.shape)}")
        if self.depth is not None:  # each codebook's head over its own depth position
            y, w = self.depth.hidden(h, codes.long()), self.depth.head  # (B, T, K, Dd), (K, V, Dd)
            parts = [
                chunked_nll(y[:, :, k], w[k], codes[:, k : k + 1], 1, False, mask, chunk_rows)
                for k in range(c.num_codebooks)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return chunked_nll(
            h, self._head_weight(), codes, self.num_scored_codebooks, c.pattern == "delay", mask, chunk_rows
        )
