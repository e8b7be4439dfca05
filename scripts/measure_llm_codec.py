"""Issue 30's evidence on CPU: LLM-Codec ablations x seeds, reconstruction on a held-out split
against a learned-codebook RVQ and Opus, and LLM-free 1-shot accuracy (docs/UNIAUDIO.md).

    python scripts/measure_llm_codec.py --corpus DEMO --llm runs/gpt2-llama --out runs/m30 \\
        --steps 400 --seeds 0,1,2 --jobs 2

1. Split: every 5th file of each set (speech, music; sorted names) is held out, the rest trains.
2. Train each variant x seed with ``whispergpt llm-codec train`` (the quickstart recipe, the
   given step count, one thread per job); a rerun resumes or skips finished runs.
   - ``llm``: frozen LLM tables, both teachers (``random``: the offline stand-in, see below);
   - ``learned``: the same with learned codebooks of the same sizes (the vanilla 3-layer RVQ);
   - ``no_semantic`` / ``no_consistency``: ``llm`` without that teacher's loss.
3. Evaluate on the held-out files: mel distance (speech, music), PESQ-wb and STOI (speech), each
   layer's code perplexity; Opus through libsndfile at its lowest bitrate as the second reference.
4. LLM-free 1-shot accuracy: ``whispergpt icl``'s 1-NN on bags of layer-1 tokens (the probe's
   ``instrument`` task, 4-way 1-shot, and ``speech-music``, 2-way 1-shot), same episodes everywhere.
Writes OUT/results.json and OUT/results.md (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "llm": ["teachers.semantic=random", "teachers.consistency=random"],
    "learned": ["model.codebooks=learned", "teachers.semantic=random", "teachers.consistency=random"],
    "no_semantic": ["teachers.consistency=random"],
    "no_consistency": ["teachers.semantic=random"],
}


def split(corpus: Path, out: Path) -> dict[str, dict[str, list[Path]]]:
    """Symlink the corpus into OUT/split/{train,heldout}/{speech,music}/."""
    from whispergpt.codec.corpus import find_audio_files

    sets: dict[str, dict[str, list[Path]]] = {"train": {}, "heldout": {}}
    for group in ("speech", "music"):
        files = sorted(find_audio_files([corpus / group]), key=lambda p: p.name)
        for i, f in enumerate(files):
            part = "heldout" if i % 5 == 4 else "train"
            dst = out / "split" / part / group / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(f.resolve())
            sets[part].setdefault(group, []).append(dst)
    return sets


def train_one(name: str, seed: int, args) -> Path:
    run = args.out / "runs" / f"{name}-s{seed}"
    if (run / "config.json").is_file() and (run / "DONE").is_file():
        return run
    cmd = [sys.executable, "-m", "whispergpt", "llm-codec", "train", str(args.out / "split" / "train"),
           "--llm", args.llm, "--out", str(run), "--config", "llm_codec_quickstart.yaml",
           f"train.max_steps={args.steps}", f"train.lr_decay_start={int(args.steps * 0.8)}",
           f"train.seed={seed}", "train.num_threads=1", "train.progress=false",
           f"train.ckpt_every={max(50, args.steps // 4)}", *VARIANTS[name]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    log = run.parent / f"{run.name}.log"
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {r.returncode}): see {log}")
    (run / "DONE").write_text(f"{time.time() - t0:.0f} s\n")
    return run


def opus_roundtrip(wave, sr: int = 24_000):
    """Opus (libsndfile, lowest bitrate) round trip: the decoded wave and the bits per second."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave.numpy(), sr, format="OGG", subtype="OPUS", compression_level=1.0)
    nbytes = buf.tell()
    buf.seek(0)
    dec, _ = sf.read(buf, dtype="float32")
    dec = np.pad(dec, (0, max(0, wave.numel() - len(dec))))[: wave.numel()]
    import torch

    return torch.from_numpy(dec), 8 * nbytes / (wave.numel() / sr)


def reconstruction(heldout: dict[str, list[Path]], codec=None) -> dict:
    """Per set (``codec.eval.SetMetrics``): mel distance, PESQ and STOI (speech), each layer's code
    perplexity; ``codec`` None is Opus (its bits per second instead of perplexities)."""
    import torch

    from whispergpt.audio import load_audio
    from whispergpt.codec.eval import SetMetrics

    out = {}
    for group, files in heldout.items():
        m, bps = SetMetrics(), []
        for f in files:
            w = load_audio(f)[: 10 * 24_000]
            if codec is None:
                (est, b), codes = opus_roundtrip(w), []
                bps.append(b)
            else:
                with torch.no_grad():
                    c = codec.encode(w[None])
                    est = codec.decode(c, w.numel())[0]
                codes = [ck[0] for ck in c]
            m.add(w, est, codes, speech=group == "speech")
        summary = m.summary([] if codec is None else codec.config.sizes())
        row = {k: summary[k] for k in ("files", "mel_distance", "pesq_wb", "stoi")}
        if codec is None:
            row["bits_per_second"] = statistics.mean(bps)
        else:
            row["code_perplexity"] = summary["codebook_perplexity"]
        out[group] = row
    return out


def one_shot(run: Path, tasks: dict) -> dict:
    """``whispergpt icl``'s LLM-free baselines on 200 seeded episodes per task (the LLM is random
    here, so its modes would say nothing about the codec)."""
    from whispergpt.llm_codec.icl_run import run_icl

    res = {}
    for name, (t, way) in tasks.items():
        r = run_icl(str(run), None, t.classes, t.clips, [int(x) for x in t.labels], t.origins, way, 1,
                    200, 0, task=name)  # fmt: skip
        res[name] = {k: r["results"][k]["accuracy"] for k in r["results"]} | {"chance": r["chance"]}
    return res


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.mean(xs)
    return f"{m:.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{m:.3f}"


def markdown(results: dict) -> str:
    lines = ["| codec | seeds | speech mel ↓ | music mel ↓ | PESQ-wb ↑ | STOI ↑ | layer-1 ppl (speech) | layer-2 ppl | "
             "layer-3 ppl | 1-NN tokens, instrument 4-way | 1-NN tokens, speech-music 2-way |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in results["variants"].items():
        r = list(runs.values())
        g = lambda k, s="speech", r=r: [x["recon"][s][k] for x in r]  # noqa: E731
        ppl = [spread([x["recon"]["speech"]["code_perplexity"][k] for x in r]) for k in range(3)]
        acc = [spread([x["one_shot"][t]["1nn_tokens"] for x in r]) for t in ("instrument", "speech-music")]
        lines.append(f"| {name} | {len(r)} | {spread(g('mel_distance'))} | {spread(g('mel_distance', 'music'))} | "
                     f"{spread(g('pesq_wb'))} | {spread(g('stoi'))} | {' | '.join(ppl)} | {' | '.join(acc)} |")  # fmt: skip
    o = results["opus"]
    lines.append(f"| Opus {o['speech']['bits_per_second'] / 1000:.1f} / {o['music']['bits_per_second'] / 1000:.1f} kbit/s "
                 f"(speech / music) | - | {o['speech']['mel_distance']:.3f} | {o['music']['mel_distance']:.3f} | "
                 f"{spread([o['speech']['pesq_wb']])} | {spread([o['speech']['stoi']])} | - | - | - | - | - |")  # fmt: skip
    mel = results.get("one_shot_mel", {})
    if mel:
        lines.append("")
        lines.append("1-NN on pooled log-mel, same episodes: " +
                     ", ".join(f"{t} {v:.3f} (chance {results['chance'][t]:.3f})" for t, v in mel.items()))  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--llm", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--clips-per-class", type=int, default=12)
    args = p.parse_args()
    args.corpus, args.out = args.corpus.resolve(), args.out.resolve()  # the runs start in the repo
    if Path(args.llm).exists():
        args.llm = str(Path(args.llm).resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from whispergpt.experiments.probe_tasks import load_task
    from whispergpt.llm_codec import LLMCodec

    torch.set_num_threads(max(1, args.jobs))
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    sets = split(args.corpus, args.out)
    print({k: {g: len(v) for g, v in s.items()} for k, s in sets.items()}, flush=True)
    jobs = [(n, s) for s in seeds for n in names]
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda j: train_one(*j, args), jobs)))
    print(f"trained {len(jobs)} runs in {time.time() - t0:.0f} s", flush=True)
    tasks = {"instrument": (load_task("instrument", args.clips_per_class), 4),
             "speech-music": (load_task("speech-music", args.clips_per_class), 2)}  # fmt: skip
    results: dict = {"steps": args.steps, "split": {k: {g: [f.name for f in v] for g, v in s.items()}
                                                   for k, s in sets.items()}, "variants": {}}  # fmt: skip
    for (n, s), run in runs.items():
        codec = LLMCodec.from_pretrained(run).eval()
        row = {"recon": reconstruction(sets["heldout"], codec), "one_shot": one_shot(run, tasks),
               "train_seconds": (run / "DONE").read_text().strip()}  # fmt: skip
        results["variants"].setdefault(n, {})[str(s)] = row
        print(n, s, json.dumps(row), flush=True)
    results["opus"] = reconstruction(sets["heldout"], None)
    first = next(iter(results["variants"].values()))
    any_run = next(iter(first.values()))
    results["one_shot_mel"] = {t: any_run["one_shot"][t]["1nn_mel"] for t in tasks}
    results["chance"] = {t: any_run["one_shot"][t]["chance"] for t in tasks}
    results["markdown"] = markdown(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(results["markdown"])
    print(results["markdown"])


if __name__ == "__main__":
    main()
