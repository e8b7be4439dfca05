"""``whispergpt icl``: the episode sampler, the prompt, label scoring against a hand computation on
the tiny LLM, greedy decoding, the report and the bad-input exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from whispergpt.audio import save_audio
from whispergpt.llm_codec import icl

REPO = Path(__file__).resolve().parents[2]


def test_episodes_are_seeded_and_never_show_the_query_or_its_source():
    # 3 labels x 6 clips, clips cut in pairs from 9 source files: (0,1) from file 0, (2,3) from file 1...
    labels = [i // 6 for i in range(18)]
    origins = [f"file{i // 2}" for i in range(18)]
    eps = icl.sample_episodes(labels, origins, way=2, shot=2, episodes=300, seed=3)
    assert eps == icl.sample_episodes(labels, origins, way=2, shot=2, episodes=300, seed=3)
    assert eps != icl.sample_episodes(labels, origins, way=2, shot=2, episodes=300, seed=4)
    for ep in eps:
        assert ep.query not in ep.shots
        assert origins[ep.query] not in {origins[i] for i in ep.shots}
        assert labels[ep.query] in ep.labels and len(set(ep.labels)) == 2
        assert sorted(labels[i] for i in ep.shots) == sorted([c for c in ep.labels for _ in range(2)])
    assert len({labels[ep.query] for ep in eps}) == 3  # every label is queried


@pytest.mark.parametrize(
    ("way", "shot", "message"),
    [
        (4, 1, "larger than the number of labels"),
        (2, 3, "at least 4 clips per label; too few: {'a': 3, 'b': 3}"),
    ],
)
def test_impossible_episodes_name_the_counts(way, shot, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        icl.check_episode_data(["a", "b"], [0, 0, 0, 1, 1, 1], way, shot)


def test_label_scoring_equals_a_hand_computation(tiny_llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    prompt = tok.encode("Input: the cat sat Output:", add_special_tokens=False)
    cands = icl.label_ids(tok, ["music", "people"])
    got = icl.label_logprobs(model, prompt, cands)
    for cand, score in zip(cands, got):
        total = 0.0
        for j, t in enumerate(cand):  # one token at a time, a fresh forward each
            with torch.no_grad():
                logits = model(torch.tensor([prompt + cand[:j]])).logits[0, -1]
            total += float(F.log_softmax(logits.double(), -1)[t])
        assert score == pytest.approx(total, abs=1e-4)
    # greedy restricted to the labels: its first token is the better-scored first token
    first = [c[0] for c in cands]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    pick = icl.greedy_label(model, prompt, cands)
    assert cands[pick][0] == first[int(torch.argmax(logits[first]))] or cands[0][0] == cands[1][0]


def test_prompt_layout(tiny_llm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm)
    audio = [[300, 301], [302], [303, 304, 305]]
    ep = icl.Episode(labels=[0, 1], query=2, shots=[1, 0])
    ids = icl.build_prompt(tok, audio, ["music", "people"], ep, [0, 1, 0])
    text = tok.decode(ids)
    assert text.count("Input:") == 3 and text.count("Output:") == 3 and text.rstrip().endswith("Output:")
    assert text.index("people") < text.index("music")  # shots in episode order
    assert ids[-len(tok.encode(" Output:", add_special_tokens=False)) - 3 :][:3] == [303, 304, 305]


def test_wilson_interval():
    acc, lo, hi = icl.accuracy_interval(60, 100)
    assert acc == 0.6 and lo == pytest.approx(0.502, abs=1e-3) and hi == pytest.approx(0.691, abs=1e-3)


@pytest.mark.slow
def test_icl_end_to_end_report_dry_run_and_bad_input(tiny_llm, other_llm, tmp_path):
    from whispergpt.llm_codec.model import LLMCodecConfig
    from whispergpt.llm_codec.tables import load_tables
    from whispergpt.llm_codec.train import build_codec

    torch.manual_seed(0)
    codec = build_codec(
        LLMCodecConfig(channels=[4, 8, 8, 16, 16], dim=16, layers=1, heads=2), load_tables(tiny_llm)
    )
    codec.save_pretrained(tmp_path / "codec")
    data = tmp_path / "clips"
    rng = np.random.default_rng(0)
    t = np.arange(12_000) / 24_000
    for label, f0 in (("low", 150.0), ("high", 900.0)):
        (data / label).mkdir(parents=True)
        for i in range(4):
            save_audio(data / label / f"{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * (1 + 0.05 * i) * t)
                                                   + 0.01 * rng.standard_normal(t.size)).astype(np.float32))  # fmt: skip
    (data / "low" / "broken.wav").write_bytes(b"no")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(*extra: str, llm: Path = tiny_llm) -> subprocess.CompletedProcess:
        argv = ["icl", "--codec", str(tmp_path / "codec"), "--llm", str(llm), "--data", str(data), "--seed", "0",
                "--out", str(tmp_path / "icl"), *extra]  # fmt: skip
        return subprocess.run([sys.executable, "-m", "whispergpt", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    r = run("--way", "2", "--shot", "1", "--episodes", "12")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipping" in r.stderr and "broken.wav" in r.stderr
    rep = json.loads((tmp_path / "icl" / "icl.json").read_text())
    assert rep["episodes"] == 12 and rep["chance"] == 0.5 and rep["clips"] == 8
    assert set(rep["results"]) == {"greedy", "score", "1nn_tokens", "1nn_mel"}
    assert rep["results"]["1nn_mel"]["accuracy"] == 1.0  # 150 Hz vs 900 Hz: the log-mel separates them
    assert "| 1-NN, pooled log-mel (no LLM) | 1.000 |" in (tmp_path / "icl" / "icl.md").read_text()
    r = run("--way", "2", "--shot", "1", "--episodes", "1", "--dry-run")
    assert r.returncode == 0 and "Input:" in r.stdout and "answer:" in r.stdout
    for extra, words in ((("--way", "3", "--shot", "1", "--episodes", "2"), "larger than the number of labels"),
                         (("--way", "2", "--shot", "4", "--episodes", "2"), "too few: {'high': 4, 'low': 4}")):  # fmt: skip
        r = run(*extra)
        assert (
            r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr.strip().splitlines()[-1]
        ), r.stderr
    r = run("--way", "2", "--shot", "1", "--episodes", "2", llm=other_llm)
    assert r.returncode == 2 and "not " in r.stderr and str(other_llm) in r.stderr.strip().splitlines()[-1], (
        r.stderr
    )
    # no LLM: the baselines alone, on the same seeded episodes as the run above
    from whispergpt.llm_codec.icl_run import labelled_folder, run_icl

    classes, clips, labels, origins = labelled_folder(data, 5.0)
    free = run_icl(str(tmp_path / "codec"), None, classes, clips, labels, origins, 2, 1, 12, 0)
    assert set(free["results"]) == {"1nn_tokens", "1nn_mel"}
    for k in free["results"]:
        assert free["results"][k]["correct"] == rep["results"][k]["correct"], k
