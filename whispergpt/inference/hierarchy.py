"""The AudioLM hierarchy on our stack: semantic LM -> acoustic model -> fine stage (``sample --semantic-lm``).

Stages (``docs/HIERARCHY.md``, "The three-stage sampler")
--------------------------------------------------------
1. **Prompt tokens.** The prompt audio is cut to a whole number of semantic tokens (``g = 75 /
   rate`` codec frames each; at most ``g - 1`` frames, 80 ms at 25 Hz, are dropped) so that its
   last token is pooled from a full group, then tokenized by the semantic tokenizer (its own
   EnCodecMAE copy + k-means, ``semantic/tokenizer.py``) at the semantic rate.
2. **Semantic continuation.** The semantic LM (``models/semantic_lm.py``) continues those tokens
   (or starts from nothing without a prompt) up to ``ceil(T / g)`` tokens for the ``T = prompt +
   generated`` codec frames, with ``generate.generate`` on its decoder and no codec (token-only:
   no audio is decoded). Past the LM's context the window slides as for every decoder
   (``context_keep``). A prompt longer than the LM's context feeds its last ``context - 1`` tokens.
3. **Acoustic generation.** The tokens are put on the codec grid (frame ``t`` reads token ``t //
   g``, the dataset's ``semantic`` stream layout) and the acoustic model (``model.semantic:
   prefix | aligned``) generates the codec frames conditioned on them, with its mel feedback loop.
4. **Fine stage** (``--fine``, ``inference/fine_stage.py``), then the codec decode to WAV.

Every stage draws from its own generator seeded with ``--seed``; ``generation.json`` records each
stage's checkpoint, seed, settings and time (``SemanticStage.record``).

Stage checks (before any work; ``InputError``, exit 2, naming both sides)
-------------------------------------------------------------------------
- ``--semantic-lm`` must hold a ``semantic-lm`` model and the acoustic model must read semantic
  tokens (``model.semantic`` not ``none``); an acoustic model that reads them needs ``--semantic-lm``.
- Tokenizer: the semantic LM and the acoustic model must have been trained on the same tokenizer:
  same cluster count and rate (their configs and training records), and the same tokenizer folder
  where both records name one (``check_tokenizers``).
- Codec and frame rate: the two stages' training data must come from the same codec (name and
  bandwidth) on the same frame grid (the semantic stream is defined per codec frame).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from whispergpt.audio import HOP_LENGTH
from whispergpt.errors import InputError
from whispergpt.inference.fine_stage import same_codec  # the rule `sample --fine` pairs codecs by
from whispergpt.inference.generate import DEFAULT_CONTEXT_KEEP, check_sampling_args, generate
from whispergpt.models.semantic_lm import SemanticLM, frame_tokens, rate_tokens

SEMANTIC_NONE = "none"


# -- stage checks -------------------------------------------------------------------------------------
def describe_tokenizer(t: dict[str, Any]) -> str:
    """``"6 clusters at 25 Hz (tokenizer /path)"`` from a tokenizer record (any of its keys missing)."""
    parts = []
    if t.get("clusters") is not None:
        parts.append(f"{t['clusters']} clusters")
    if t.get("rate") is not None:
        parts.append(f"at {float(t['rate']):g} Hz")
    text = " ".join(parts) or "an unknown tokenizer"
    return f"{text} (tokenizer {t['dir']})" if t.get("dir") else text


def _same_path(a: str, b: str) -> bool:
    return a == b or (os.path.exists(a) and os.path.exists(b) and Path(a).resolve() == Path(b).resolve())


Side = tuple[str, "str | os.PathLike | None", dict]  # (label, checkpoint or dataset, tokenizer record)


def check_tokenizers(a: Side, b: Side, hint: str | None = None) -> None:
    """InputError naming both sides unless the tokenizer records agree on clusters, rate and (where
    both name one) folder."""
    (la, pa, ta), (lb, pb, tb) = a, b
    hint = hint or "use stages trained on data prepared with the same `prepare --semantic TOKENIZER_DIR`"
    problem = None
    for key in ("clusters", "rate"):
        if ta.get(key) is not None and tb.get(key) is not None and float(ta[key]) != float(tb[key]):
            problem = key
            break
    if problem is None and ta.get("dir") and tb.get("dir") and not _same_path(str(ta["dir"]), str(tb["dir"])):
        problem = "tokenizer folder"
    if problem is not None:
        raise InputError(
            f"semantic tokenizers differ ({problem}): {la} ({pa}) reads {describe_tokenizer(ta)}, "
            f"{lb} ({pb}) reads {describe_tokenizer(tb)}",
            hint=hint,
        )


def check_codecs_and_grids(a: tuple[str, Path, dict | None], b: tuple[str, Path, dict | None]) -> list[str]:
    """InputError naming both sides when two stages' training records name different codecs or
    frame rates; notes for what could not be checked (a record missing)."""
    (la, pa, ra), (lb, pb, rb) = a, b
    if ra is None or rb is None:
        missing = la if ra is None else lb
        return [f"no training record for {missing}: its codec and frame rate are not checked"]
    hint = "train every stage on data prepared with the same codec (`whispergpt prepare --codec ... --bandwidth ...`)"
    if ra.get("codec") is not None and rb.get("codec") is not None:
        ca, cb = (ra["codec"], ra.get("bandwidth") or 0), (rb["codec"], rb.get("bandwidth") or 0)
        if not same_codec(ca, cb):
            raise InputError(
                f"codecs differ: {la} ({pa}) was trained on codec {ca[0]} @ {ca[1]} kbps, "
                f"{lb} ({pb}) on {cb[0]} @ {cb[1]} kbps",
                hint=hint,
            )
    fa, fb = ra.get("frame_rate"), rb.get("frame_rate")
    if fa is not None and fb is not None and float(fa) != float(fb):
        raise InputError(
            f"frame rates differ: {la} ({pa}) was trained at {fa} frames/s, {lb} ({pb}) at {fb} frames/s",
            hint=hint,
        )
    return []


def acoustic_semantic_mode(config: Any) -> str:
    """The acoustic model's ``model.semantic`` (``none`` for models from before it existed)."""
    return str(getattr(config, "semantic", SEMANTIC_NONE) or SEMANTIC_NONE)


def acoustic_tokenizer(config: Any, record: dict | None) -> dict:
    """What the acoustic model says about its semantic tokenizer: its training record's
    ``semantic_tokenizer`` with the cluster count of its config (the width of its semantic table)."""
    t = dict((record or {}).get("semantic_tokenizer") or {})
    if getattr(config, "semantic_vocab", None):  # 0/None: not set (taken from the dataset in training)
        t["clusters"] = int(config.semantic_vocab)
    if getattr(config, "semantic_rate", None) is not None:
        t["rate"] = float(config.semantic_rate)
    return t


def check_acoustic_pairing(config: Any, checkpoint: Path, semantic_lm: str | None) -> None:
    """``--semantic-lm`` given iff the acoustic model reads semantic tokens (``model.semantic``)."""
    mode = acoustic_semantic_mode(config)
    if semantic_lm is not None and mode == SEMANTIC_NONE:
        raise InputError(
            f"--semantic-lm {semantic_lm} needs an acoustic model conditioned on semantic tokens, and "
            f"--checkpoint {checkpoint} has model.semantic: none",
            hint="train the acoustic model with model.semantic=prefix or aligned, or drop --semantic-lm",
        )
    if semantic_lm is None and mode != SEMANTIC_NONE:
        raise InputError(
            f"--checkpoint {checkpoint} is conditioned on semantic tokens (model.semantic: {mode}) and "
            "needs a semantic LM to generate them",
            hint="pass --semantic-lm CKPT (a model trained with a semantic recipe on the same tokenizer)",
        )


# -- the semantic stage --------------------------------------------------------------------------------
@dataclass
class SemanticStage:
    """A loaded, checked semantic LM (+ its tokenizer for prompts): ``frame_tokens`` then ``record``."""

    model: SemanticLM
    checkpoint: Path | None = None
    tokenizer_dir: Path | None = None
    tokenizer: Any = None  # tools.semantic.SemanticTokenizer; opened on the first prompt
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    context_keep: float = DEFAULT_CONTEXT_KEEP
    decode_dtype: str = "auto"
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict(tokenize_s=0.0, semantic_s=0.0))
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def group(self) -> int:
        return self.model.group

    def trim_prompt(self, wave: torch.Tensor) -> torch.Tensor:
        """``(S,)`` prompt audio cut to a whole number of semantic tokens (module docstring)."""
        g = self.group
        frames = wave.shape[-1] // HOP_LENGTH // g * g
        if frames < g:
            raise InputError(
                f"the prompt is shorter than one semantic token ({g} codec frames, "
                f"{g * HOP_LENGTH} samples at rate {self.model.config.rate:g} Hz)",
                hint="use a longer --prompt or --prompt-seconds",
            )
        return wave[..., : frames * HOP_LENGTH]

    def _tokenizer(self, device: torch.device):
        if self.tokenizer is None:
            from whispergpt.semantic.tokenizer import SemanticTokenizer

            if self.tokenizer_dir is None:
                raise InputError(
                    "a prompt needs the semantic tokenizer, and neither the semantic LM's nor the acoustic "
                    "model's training record names one",
                    self.checkpoint,
                    "pass --semantic-tokenizer DIR (the `whispergpt semantic fit` folder they were trained on)",
                )
            if not (self.tokenizer_dir / "config.json").is_file():
                raise InputError(
                    "the semantic tokenizer folder the training record names is gone",
                    self.tokenizer_dir,
                    "pass --semantic-tokenizer DIR (a copy of it)",
                )
            self.tokenizer = SemanticTokenizer.from_pretrained(self.tokenizer_dir)
            self._check_tokenizer(self.tokenizer)
        return self.tokenizer

    def _check_tokenizer(self, tok) -> None:
        c = self.model.config
        check_tokenizers(
            ("the semantic LM", self.checkpoint, dict(clusters=c.clusters, rate=c.rate)),
            ("the tokenizer", self.tokenizer_dir, dict(clusters=tok.config.clusters, rate=tok.config.rate)),
        )

    @torch.inference_mode()
    def prompt_tokens(self, wave: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(S,)`` or ``(B, S)`` prompt audio (trimmed, ``trim_prompt``) -> ``([B,] S // 320 // g)``
        tokens at the semantic rate."""
        t0 = time.perf_counter()
        tok = self._tokenizer(device)
        out = torch.stack(
            [
                rate_tokens(tok.audio_frame_tokens(w.to(device), device), self.group)
                for w in wave.reshape(-1, wave.shape[-1])
            ]
        )  # (B, Sp)
        self.timings["tokenize_s"] += time.perf_counter() - t0
        return out if wave.dim() == 2 else out[0]

    @torch.inference_mode()
    def continue_tokens(
        self, prompt: torch.Tensor | None, total: int, num_samples: int, seed: int | None = None
    ) -> torch.Tensor:
        """``(B, total)`` semantic tokens: ``prompt (Sp,)`` (or ``(B, Sp)``, one per sample; or none)
        continued by the LM; drawn from a generator seeded with ``seed`` (default: the stage's)."""
        model = self.model.lm
        dev = model.tok_emb.weight.device
        Sp = 0 if prompt is None else int(prompt.shape[-1])
        if total <= Sp:
            raise ValueError(f"nothing to generate: {total} tokens asked, the prompt has {Sp}")
        if prompt is not None and (
            prompt.dim() not in (1, 2) or (prompt.dim() == 2 and prompt.shape[0] != num_samples)
        ):
            raise ValueError(f"prompt tokens must be (Sp,) or ({num_samples}, Sp), got {tuple(prompt.shape)}")
        fed = None if prompt is None else prompt[..., -(self.model.config.context - 1) :]  # the LM's window
        if fed is not None:
            self.model.check_tokens(fed)
            fed = fed.reshape(-1, 1, fed.shape[-1]).to(dev)  # (1 or B, K=1, Sp')
        gen = torch.Generator(device=dev).manual_seed(self.seed if seed is None else seed)
        t0 = time.perf_counter()
        result = generate(
            model, None, frames=total - Sp, prompt_codes=fed, num_samples=num_samples,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, generator=gen,
            context_keep=self.context_keep, decode_audio=False, progress=self.progress,
            decode_dtype=self.decode_dtype,
        )  # fmt: skip
        self.timings["semantic_s"] += time.perf_counter() - t0
        new = result.codes[:, 0, result.prompt_frames :]  # (B, total - Sp)
        c = self.counts
        c.update(prompt_tokens=Sp, generated_tokens=int(new.shape[-1]), calls=c.get("calls", 0) + 1)
        c["reprefills"] = c.get("reprefills", 0) + result.reprefills
        c["tokens_generated_total"] = c.get("tokens_generated_total", 0) + int(
            new.numel()
        )  # all samples, calls
        if prompt is None:
            return new
        return torch.cat([prompt.to(dev).expand(num_samples, Sp), new], dim=-1)

    def frame_tokens(
        self, wave: torch.Tensor | None, frames: int, num_samples: int, device, seed: int | None = None
    ) -> torch.Tensor:
        """Stage 1 + 2 for ``frames`` new codec frames after the (trimmed) prompt ``wave`` (``(S,)``,
        ``(B, S)`` one per sample, or none): ``(B, Tp + frames)`` semantic tokens on the codec grid,
        what ``generate(semantic=...)`` reads."""
        prompt = None if wave is None else self.prompt_tokens(wave, device)
        Tp = 0 if wave is None else wave.shape[-1] // HOP_LENGTH
        T = Tp + frames
        tokens = self.continue_tokens(prompt, math.ceil(T / self.group), num_samples, seed)  # (B, S)
        return frame_tokens(tokens, self.group, T)  # (B, T)

    def record(self) -> dict:
        c = self.model.config
        rtf = None
        if self.timings["semantic_s"] > 0 and self.counts.get("tokens_generated_total"):
            rtf = self.counts["tokens_generated_total"] / c.rate / self.timings["semantic_s"]
        return dict(
            checkpoint=None if self.checkpoint is None else str(self.checkpoint),
            tokenizer=None if self.tokenizer_dir is None else str(self.tokenizer_dir),
            model=dict(clusters=c.clusters, rate=c.rate, group=c.group, context=c.context,
                       d_model=c.d_model, n_layers=c.n_layers, parameters=self.model.num_parameters()),
            seed=self.seed, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            context_keep=self.context_keep, notes=self.notes,
            **self.counts, timing=dict(**self.timings, real_time_factor=rtf),
        )  # fmt: skip


def load_semantic_stage(
    path: str | os.PathLike,
    acoustic_config: Any,
    acoustic_ckpt: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer: str | os.PathLike | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    seed: int = 0,
    context_keep: float = DEFAULT_CONTEXT_KEEP,
    decode_dtype: str = "auto",
    progress: bool = False,
) -> SemanticStage:
    """``--semantic-lm PATH`` (a model dir or a run out_dir) opened and checked against the acoustic
    model (module docstring: stage checks)."""
    from whispergpt.training.record import open_stage, read_training_record

    check_sampling_args(temperature, top_k, top_p)
    check_acoustic_pairing(acoustic_config, acoustic_ckpt, str(path))
    ckpt, model = open_stage(
        path,
        SemanticLM,
        "--semantic-lm",
        "train one with a semantic recipe (semantic_tiny.yaml, semantic_quickstart.yaml)",
    )
    c = model.config
    rec_lm, rec_ac = read_training_record(ckpt), read_training_record(acoustic_ckpt)
    lm_tok = dict((rec_lm or {}).get("semantic_tokenizer") or {}, clusters=c.clusters, rate=c.rate)
    ac_tok = acoustic_tokenizer(acoustic_config, rec_ac)
    check_tokenizers(("--semantic-lm", ckpt, lm_tok), ("the acoustic model", acoustic_ckpt, ac_tok))
    notes = check_codecs_and_grids(
        ("--semantic-lm", ckpt, rec_lm), ("the acoustic model", acoustic_ckpt, rec_ac)
    )
    if not ac_tok.get("dir") or not lm_tok.get("dir"):
        notes.append("a training record names no tokenizer folder: only clusters and rate were compared")
    tok_dir = tokenizer if tokenizer is not None else lm_tok.get("dir") or ac_tok.get("dir")
    stage = SemanticStage(
        model.to(device, dtype).eval(), ckpt, None if tok_dir is None else Path(tok_dir), None,
        temperature, top_k, top_p, seed, context_keep, decode_dtype, progress, notes,
    )  # fmt: skip
    if tokenizer is not None:  # named explicitly: check it now, not at the first prompt
        stage._tokenizer(device)
        for side, t in (("--semantic-lm", lm_tok), ("the acoustic model", ac_tok)):
            if t.get("dir") and not _same_path(str(t["dir"]), str(tokenizer)):
                notes.append(
                    f"--semantic-tokenizer {tokenizer} is not the folder {side} was trained on ({t['dir']})"
                )
    return stage


def stages_record(
    args: Any, acoustic_ckpt: Path, acoustic_config: Any, semantic: SemanticStage, fine=None
) -> list[dict]:
    """``generation.json``'s ``stages``: each stage's checkpoint, seed and settings, in order."""
    stages = [
        dict(stage="semantic", checkpoint=str(semantic.checkpoint), tokenizer=str(semantic.tokenizer_dir),
             seed=semantic.seed, temperature=semantic.temperature, top_k=semantic.top_k, top_p=semantic.top_p,
             context_keep=semantic.context_keep),
        dict(stage="acoustic", checkpoint=str(acoustic_ckpt), semantic=acoustic_semantic_mode(acoustic_config),
             seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
             context_keep=args.context_keep, decoder=args.decoder),
    ]  # fmt: skip
    if fine is not None:
        stages.append(dict(stage="fine", checkpoint=str(fine.checkpoint), seed=fine.seed,
                           temperature=fine.temperature))  # fmt: skip
    return stages
