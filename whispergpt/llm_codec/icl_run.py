"""``whispergpt icl``'s run: encode the clips once, answer every episode with the LLM (both modes)
and the two LLM-free baselines, and write the JSON + markdown report."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from whispergpt.audio import load_audio, log_mel
from whispergpt.errors import InputError
from whispergpt.llm_codec import icl
from whispergpt.llm_codec.model import LLMCodec

MODES = ("greedy", "score")


def labelled_folder(folder: str | os.PathLike, max_seconds: float) -> tuple[list[str], list[torch.Tensor], list[int], list[str]]:  # fmt: skip
    """``(classes, clips, labels, origins)`` of a folder with one subfolder per label; unreadable
    files are reported and skipped."""
    from whispergpt.codec.corpus import find_audio_files

    root = Path(folder)
    if not root.is_dir():
        raise InputError("--data is not a folder", root, "give a folder with one subfolder per label")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    clips, labels, origins = [], [], []
    for c, name in enumerate(classes):
        for f in find_audio_files([root / name]):
            try:
                wave = load_audio(f)
            except ValueError as e:
                print(f"skipping {e}", file=sys.stderr)
                continue
            clips.append(wave[: int(max_seconds * 24_000)])
            labels.append(c)
            origins.append(str(f))
    if not classes:
        raise InputError(
            "--data has no label subfolders", root, "put each label's clips in a subfolder named after it"
        )
    return classes, clips, labels, origins


def open_llm(name: str, codec: LLMCodec):
    """The frozen LLM and its tokenizer; ``InputError`` unless its tokenizer is the codec's."""
    from transformers import AutoModelForCausalLM

    from whispergpt.llm_codec.tables import load_tokenizer, tokenizer_fingerprint

    tok = load_tokenizer(name)
    sha = tokenizer_fingerprint(tok)
    if sha != codec.config.tokenizer_sha:
        raise InputError(f"the codec's tokens are {codec.config.llm!r}'s (tokenizer {codec.config.tokenizer_sha}), "
                         f"not {name!r}'s (tokenizer {sha})", None,
                         f"use --llm {codec.config.llm} or an LLM with the same tokenizer")  # fmt: skip
    try:
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise InputError(f"--llm {name}: not a causal LM ({str(e).splitlines()[0][:160]})") from e
    return model.eval().requires_grad_(False), tok


def run_icl(codec_dir: str, llm: str | None, classes: Sequence[str], clips: Sequence[torch.Tensor], labels: Sequence[int],
            origins: Sequence[str], way: int, shot: int, episodes: int, seed: int, layers: int = 1,
            out: str | os.PathLike | None = None, dry_run: bool = False, task: str = "") -> dict:  # fmt: skip
    from whispergpt.hub import resolve_model_dir

    icl.check_episode_data(classes, labels, way, shot)
    codec = LLMCodec.from_pretrained(resolve_model_dir(codec_dir)).eval()
    # llm None: the LLM-free baselines only (ablations that read the codec, not an LLM)
    model, tok = open_llm(llm, codec) if llm is not None else (None, None)
    if model is None and dry_run:
        raise ValueError("a dry run prints the LLM's prompt: it needs an LLM")
    eps = icl.sample_episodes(labels, origins, way, shot, episodes, seed)
    t0 = time.perf_counter()
    audio, bags, mels = [], [], []
    for wave in clips:
        codes = codec.encode(wave[None], layers)
        audio.append([t for i, c in enumerate(codes) for frame in codec.llm_ids(i, c[0]) for t in frame])
        bags.append(icl.bag_of_tokens(codes[0][0].tolist(), codec.config.num_words))
        mels.append(log_mel(wave[None], 80)[0].mean(-1))
    encode_s = time.perf_counter() - t0
    names = list(classes)
    if dry_run:
        prompt = icl.build_prompt(tok, audio, names, eps[0], labels)
        print(tok.decode(prompt))
        print(f"\n[{len(prompt)} tokens; answer: {names[labels[eps[0].query]]}]")
        return {"prompt_tokens": len(prompt)}
    correct = {k: 0 for k in (*(MODES if model is not None else ()), "1nn_tokens", "1nn_mel")}
    lengths = []
    t1 = time.perf_counter()
    for ep in eps:
        truth = labels[ep.query]
        if model is not None:
            prompt = icl.build_prompt(tok, audio, names, ep, labels)
            lengths.append(len(prompt))
            cands = icl.label_ids(tok, [names[c] for c in ep.labels])
            scores = icl.label_logprobs(model, prompt, cands)
            correct["score"] += ep.labels[max(range(len(cands)), key=scores.__getitem__)] == truth
            correct["greedy"] += ep.labels[icl.greedy_label(model, prompt, cands)] == truth
        shot_labels = [labels[i] for i in ep.shots]
        correct["1nn_tokens"] += (
            icl.nearest_label(bags[ep.query], torch.stack([bags[i] for i in ep.shots]), shot_labels) == truth
        )
        correct["1nn_mel"] += (
            icl.nearest_label(mels[ep.query], torch.stack([mels[i] for i in ep.shots]), shot_labels) == truth
        )
    llm_s = time.perf_counter() - t1
    rows = {}
    for k, n in correct.items():
        acc, lo, hi = icl.accuracy_interval(int(n), len(eps))
        rows[k] = dict(correct=int(n), accuracy=acc, ci95=[lo, hi])
    report = dict(
        task=task, codec=str(codec_dir), llm=llm, way=way, shot=shot, episodes=len(eps), seed=seed, layers=layers,
        classes=names, clips=len(clips), chance=1.0 / way, results=rows,
        prompt_tokens_mean=sum(lengths) / max(len(lengths), 1),
        llm_parameters=sum(p.numel() for p in model.parameters()) if model is not None else 0,
        seconds=dict(encode=encode_s, episodes=llm_s, per_episode=llm_s / len(eps)),
    )  # fmt: skip
    report["markdown"] = markdown(report)
    if out is not None:
        from whispergpt.runtime import write_atomic

        Path(out).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(out) / "icl.json", json.dumps(report, indent=1) + "\n", "the ICL report")
        write_atomic(Path(out) / "icl.md", report["markdown"], "the ICL table")
    return report


def markdown(r: dict) -> str:
    label = {"greedy": "LLM, greedy over label words (the paper)", "score": "LLM, label log-likelihood",
             "1nn_tokens": "1-NN, bag of layer-1 tokens (no LLM)", "1nn_mel": "1-NN, pooled log-mel (no LLM)"}  # fmt: skip
    lines = [f"{r['way']}-way {r['shot']}-shot, {r['episodes']} episodes (seed {r['seed']}), {r['task'] or 'labelled folder'}; "
             f"LLM {r['llm']} ({r['llm_parameters']:,} parameters); codec layers 1..{r['layers']}; "
             f"prompt {r['prompt_tokens_mean']:.0f} tokens on average", "",
             "| answerer | accuracy | 95 % interval |", "|---|---:|---|"]  # fmt: skip
    for k, row in r["results"].items():
        lines.append(f"| {label[k]} | {row['accuracy']:.3f} | {row['ci95'][0]:.3f}-{row['ci95'][1]:.3f} |")
    lines.append(f"| chance | {r['chance']:.3f} | |")
    return "\n".join(lines) + "\n"
