"""Measure fine-tuning (train.init_from, full and LoRA) at smoke scale, offline, on CPU.

    OMP_NUM_THREADS=1 python scripts/measure_finetune.py [--out runs/measure_finetune] [--parent-steps 150]

Two synthetic corpora prepared with the small random codec of the tests (1.5 kbps, K=2, V=1024):
A, harmonic tones at 150-300 Hz; B, a new domain: tones at 600-1200 Hz under amplitude-modulated
noise. A tiny.yaml model trained on A is the parent. On B it is then fine-tuned in full and with
LoRA (r=8), each for the same steps; a model trained from scratch on B for those steps is the
reference. Every model is scored on B's whole val split (``whispergpt eval``, mel=decoded, what
the models trained on). Prints a Markdown table. Not the quickstart's corpus: a measurement of
the mechanism, not of audio quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from whispergpt.audio import save_audio
from whispergpt.cli.train import main as train_main


def corpus(root: Path, kind: str, n: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(48000) / 24000
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if kind == "A":
            f0 = rng.uniform(150, 300)
            w = sum(0.2 / h * np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6)) for h in range(1, 5))
        else:
            f = rng.uniform(600, 1200)
            am = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 6) * t))
            w = 0.25 * np.sin(2 * np.pi * f * t) + 0.1 * am * rng.standard_normal(t.size)
        save_audio(root / f"{kind}{i:02d}.wav", np.asarray(w, np.float32), 24000)
    return root


def train(data: Path, out: Path, steps: int, *extra: str) -> Path:
    argv = ["tiny.yaml", f"data.dir={data}", f"out_dir={out}", f"train.max_steps={steps}",
            f"train.save_every={steps}", f"train.eval_every={steps}", "logging.wandb=false",
            "logging.progress=false", *extra]  # fmt: skip
    if not (out / "final" / "model.safetensors").is_file():
        assert train_main(argv) == 0
    return out / "final"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/measure_finetune")
    ap.add_argument("--parent-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    from whispergpt.codec import Codec
    from whispergpt.data.prepare import prepare
    from whispergpt.evaluation.teacher_forced import evaluate
    from whispergpt.models import load_pretrained

    out = Path(args.out)
    codec_dir = out / "codec"
    if not (codec_dir / "config.json").is_file():
        Codec.random(bandwidth=1.5, seed=0).save_pretrained(codec_dir)
    data = {}
    for kind in ("A", "B"):
        data[kind] = out / f"prepared-{kind}"
        if not (data[kind] / "manifest.json").is_file():
            prepare([corpus(out / f"wav-{kind}", kind, seed=ord(kind))], data[kind], codec_dir, bandwidth=1.5,
                    n_mels=80, val_fraction=0.25, seed=0, device="cpu", progress=False)  # fmt: skip
    parent = train(data["A"], out / "parent", args.parent_steps)
    runs = {
        "parent (trained on A), before fine-tuning": parent,
        f"full fine-tune on B ({args.steps} steps)": train(
            data["B"],
            out / "full",
            args.steps,
            f"train.init_from={parent}",
            "train.lr=1e-3",
            "train.warmup_steps=5",
        ),
        f"LoRA r=8 on B ({args.steps} steps)": train(
            data["B"],
            out / "lora",
            args.steps,
            f"train.init_from={parent}",
            "train.lora.r=8",
            "train.lora.alpha=16",
            "train.lr=3e-3",
            "train.warmup_steps=5",
        ),
        f"from scratch on B ({args.steps} steps)": train(data["B"], out / "scratch", args.steps),
    }
    report = evaluate([str(p) for p in runs.values()], str(data["B"]), mel="decoded", batch_size=8)
    (out / "eval_B.json").write_text(json.dumps(report, indent=2))
    print("| model | trainable params | val NLL on B (nats/token) |")
    print("|---|---:|---:|")
    for (name, ck), entry in zip(runs.items(), report["checkpoints"]):
        rec = json.loads((ck / "training_data.json").read_text())
        trainable = (rec.get("lora") or {}).get("trainable")
        nll = entry["evaluations"][0]["metrics"]["nll"]
        total = load_pretrained(ck).num_parameters()
        print(f"| {name} | {total if trainable is None else trainable:,} of {total:,} | {nll:.4f} |")


if __name__ == "__main__":
    main()
