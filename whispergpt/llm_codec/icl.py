"""In-context audio classification with a frozen LLM (UniAudio 1.5's N-way K-shot episodes).

An episode picks N labels, a query clip of one of them, and K shots of each label. The prompt is
``Input: <audio ids> Output: <label>`` per shot (in a shuffled order), then ``Input: <query ids>
Output:``; the audio is its LLM-Codec codes as the LLM's token ids. The LLM answers by

- ``greedy``: the paper's greedy decoding, restricted at every step to tokens that continue some
  label of the episode, until one label is complete;
- ``score``: the label whose tokens have the highest log-likelihood after the prompt.

Episodes are drawn from a seeded ``random.Random``; a shot is never the query, nor any clip cut
from the query's source file (``origins``). Two LLM-free baselines answer the same episodes:
1-nearest-neighbour on bags of layer-1 tokens (cosine) and on time-pooled log-mel (cosine).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Episode:
    labels: list[int]  # the N class indices of this episode
    query: int  # item index
    shots: list[int]  # item indices, N*K, in prompt order


def check_episode_data(classes: Sequence[str], labels: Sequence[int], way: int, shot: int) -> None:
    """``ValueError`` when an N-way K-shot episode cannot be drawn (the counts in the message)."""
    if way < 2 or shot < 1:
        raise ValueError(f"--way must be >= 2 and --shot >= 1, got {way} and {shot}")
    if way > len(classes):
        raise ValueError(f"--way {way} is larger than the number of labels ({len(classes)}: {list(classes)})")
    counts = Counter(labels)
    small = {classes[c]: counts.get(c, 0) for c in range(len(classes)) if counts.get(c, 0) < shot + 1}
    if small:
        raise ValueError(f"{shot}-shot episodes need at least {shot + 1} clips per label; too few: {small}")


def sample_episodes(labels: Sequence[int], origins: Sequence[str], way: int, shot: int, episodes: int,
                    seed: int) -> list[Episode]:  # fmt: skip
    """``episodes`` seeded episodes; shots never share the query's origin (module docstring)."""
    rng = random.Random(f"icl-{seed}")
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    out: list[Episode] = []
    for _ in range(100 * episodes):
        if len(out) == episodes:
            break
        chosen = rng.sample(sorted(by_class), way)
        query = rng.choice(by_class[rng.choice(chosen)])
        pools = [[i for i in by_class[c] if i != query and origins[i] != origins[query]] for c in chosen]
        if any(len(p) < shot for p in pools):  # the query's source holds most of a class: draw again
            continue
        shots = [i for p in pools for i in rng.sample(p, shot)]
        rng.shuffle(shots)
        out.append(Episode(chosen, query, shots))
    if len(out) < episodes:
        raise ValueError(f"could draw only {len(out)} of {episodes} episodes whose shots avoid the query's "
                         "source file: too few source files per label")  # fmt: skip
    return out


def label_ids(tokenizer, names: Sequence[str]) -> list[list[int]]:
    """Each label's token ids as it follows ``Output:`` (with its leading space)."""
    return [tokenizer.encode(" " + n, add_special_tokens=False) for n in names]


def build_prompt(tokenizer, audio: Sequence[list[int]], names: Sequence[str], episode: Episode,
                 labels: Sequence[int]) -> list[int]:  # fmt: skip
    """The episode's prompt as token ids (the query's answer left out)."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for i in episode.shots:
        ids += enc("Input:") + list(audio[i]) + enc(" Output:") + enc(" " + names[labels[i]]) + enc("\n")
    return ids + enc("Input:") + list(audio[episode.query]) + enc(" Output:")


@torch.no_grad()
def label_logprobs(model, prompt: list[int], candidates: Sequence[list[int]]) -> list[float]:
    """log p(candidate | prompt) summed over each candidate's tokens (one forward per candidate)."""
    device = next(model.parameters()).device
    scores = []
    for cand in candidates:
        ids = torch.tensor([prompt + list(cand)], device=device)
        logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (L-1, V): position t predicts t+1
        n = len(prompt)
        scores.append(float(sum(logp[n - 1 + j, t] for j, t in enumerate(cand))))
    return scores


@torch.no_grad()
def greedy_label(model, prompt: list[int], candidates: Sequence[list[int]]) -> int:
    """Greedy decoding restricted to continuations of the candidates; the index of the one completed."""
    device = next(model.parameters()).device
    alive, made = list(range(len(candidates))), []
    while True:
        done = [c for c in alive if len(candidates[c]) == len(made)]
        if done:
            return done[0]
        allowed = sorted({candidates[c][len(made)] for c in alive})
        logits = model(torch.tensor([prompt + made], device=device)).logits[0, -1]
        nxt = allowed[int(torch.argmax(logits[allowed]))]
        made.append(nxt)
        alive = [
            c for c in alive if len(candidates[c]) > len(made) - 1 and candidates[c][len(made) - 1] == nxt
        ]


def nearest_label(query: torch.Tensor, shots: torch.Tensor, shot_labels: Sequence[int]) -> int:
    """1-NN by cosine similarity: ``query (E,)``, ``shots (M, E)``."""
    sims = F.cosine_similarity(shots, query[None], dim=-1)
    return int(shot_labels[int(torch.argmax(sims))])


def bag_of_tokens(codes: Sequence[int], size: int) -> torch.Tensor:
    return torch.bincount(torch.as_tensor(list(codes), dtype=torch.long), minlength=size).float()


def accuracy_interval(correct: int, n: int) -> tuple[float, float, float]:
    """Accuracy and its 95 % Wilson interval."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p, z = correct / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)
