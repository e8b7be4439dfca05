#!/usr/bin/env bash
# Does the AudioLM hierarchy help? (docs/HIERARCHY.md, "Measured"). At quickstart scale on the demo
# corpus with the shipped codec: EnCodecMAE -> semantic tokenizer -> datasets with the semantic
# stream -> acoustic models with model.semantic none | aligned | prefix (3 seeds each, same size
# and steps) -> semantic LM -> fine stage -> NLL tables -> held-out continuations through the
# three stages vs the acoustic model alone -> score and prompt consistency.
# Usage: scripts/measure_hierarchy.sh [OUT]  (default runs/hierarchy; re-running skips what exists)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
H="${1:-runs/hierarchy}"
step() { echo "== $1 $(date +%T)"; }
have() { [ -e "$1" ]; }

have "$H/corpus/SOURCES.json" || { step corpus; whispergpt data demo --install --out "$H/corpus"; }
for d in speech music; do
  have "$H/prepared/$d/manifest.json" || { step "prepare $d"
    whispergpt prepare "$H/corpus/$d" --out "$H/prepared/$d" --codec default --bandwidth 1.5 --val-fraction 0.15; }
done
have "$H/train/mae/final" || { step "train mae"
  python train.py mae_quickstart.yaml "data.dir=[$H/prepared/speech, $H/prepared/music]" out_dir="$H/train/mae"; }
have "$H/semantic/config.json" || { step "semantic fit"
  whispergpt semantic fit "$H/train/mae" "$H/prepared/speech" "$H/prepared/music" --clusters 256 --rate 25 --threads 1 --out "$H/semantic"; }
for d in speech music; do
  have "$H/prepared-semantic/$d/manifest.json" || { step "prepare --semantic $d"
    whispergpt prepare "$H/corpus/$d" --out "$H/prepared-semantic/$d" --codec default --bandwidth 1.5 --val-fraction 0.15 --semantic "$H/semantic"; }
done

DATA="data.dir=[$H/prepared-semantic/speech, $H/prepared-semantic/music]"
# validate every 50 steps and keep the best weights (final/), never stopping early: same steps for all
BEST="train.eval_every=50 train.save_every=50 train.early_stop_patience=100"
for mode in none aligned prefix; do
  for seed in 0 1 2; do
    run="$H/train/acoustic-$mode-s$seed"
    have "$run/final" || { step "train acoustic $mode seed $seed"
      python train.py quickstart.yaml model.pattern=coarse model.semantic=$mode train.seed=$seed "$DATA" out_dir="$run" $BEST; }
    for d in speech music; do
      have "$H/eval/acoustic-$mode-s$seed-$d.json" || whispergpt eval --checkpoint "$run/final" --data "$H/prepared-semantic/$d" --out "$H/eval/acoustic-$mode-s$seed-$d.json"
    done
  done
done
have "$H/train/semantic/final" || { step "train semantic LM"
  python train.py semantic_quickstart.yaml "$DATA" out_dir="$H/train/semantic" $BEST; }
have "$H/train/fine/final" || { step "train fine"
  python train.py fine_quickstart.yaml "$DATA" out_dir="$H/train/fine" $BEST; }
for d in speech music; do
  have "$H/eval/semantic-$d.json" || whispergpt eval --checkpoint "$H/train/semantic/final" --data "$H/prepared-semantic/$d" --out "$H/eval/semantic-$d.json"
done

# 32 held-out prompts per domain (2 s prompt, 4 s continuation, sampling seed 0), for each seed's
# acoustic models: the acoustic model alone vs the three-stage sampler (one semantic LM, one fine stage)
S="--prompt-seconds 2 --seconds 4 --num-prompts 32 --batch-size 8 --seed 0 --no-progress --fine $H/train/fine"
for d in speech music; do
  P="--data $H/prepared-semantic/$d $S"
  for seed in 0 1 2; do
    have "$H/samples/alone-s$seed-$d/generation.json" || { step "sample alone seed $seed $d"
      python sample.py --checkpoint "$H/train/acoustic-none-s$seed" $P --out "$H/samples/alone-s$seed-$d"; }
    for mode in aligned prefix; do
      have "$H/samples/$mode-s$seed-$d/generation.json" || { step "sample hierarchy ($mode) seed $seed $d"
        python sample.py --semantic-lm "$H/train/semantic" --checkpoint "$H/train/acoustic-$mode-s$seed" $P --out "$H/samples/$mode-s$seed-$d"; }
    done
    for s in alone aligned prefix; do
      have "$H/score/$s-s$seed-$d/score.json" || whispergpt score "$H/samples/$s-s$seed-$d" --out "$H/score/$s-s$seed-$d"
    done
    have "$H/consistency/s$seed-$d/consistency.json" || { step "consistency seed $seed $d"
      whispergpt consistency "$H/samples/alone-s$seed-$d" "$H/samples/aligned-s$seed-$d" "$H/samples/prefix-s$seed-$d" \
        --mae "$H/train/mae" --layer 1 --out "$H/consistency/s$seed-$d"; }
  done
done
# the tables of docs/HIERARCHY.md ("Measured"), from the JSON files above
python - "$H" <<'PY' | tee "$H/summary.md"
import json, statistics as st, sys
from pathlib import Path
H, seeds, modes = Path(sys.argv[1]), (0, 1, 2), ("none", "aligned", "prefix")
ms = lambda v: f"{st.mean(v):.3f} ± {st.stdev(v):.3f}"
def nll(mode, seed, d, src):
    c = json.loads((H / "eval" / f"acoustic-{mode}-s{seed}-{d}.json").read_text())["checkpoints"][0]
    return next(e["metrics"]["nll"] for e in c["evaluations"] if e["mel_source"] == src)
print("Acoustic NLL, codebook 0, nats (mean ± sd over seeds)\n\n| domain | mel | " + " | ".join(modes) + " |\n|---|---|---|---|---|")
for d in ("speech", "music"):
    for src in ("decoded", "truth"):
        print(f"| {d} | {src} | " + " | ".join(ms([nll(m, s, d, src) for s in seeds]) for m in modes) + " |")
print("\nContinuations vs the real continuation (mean ± sd over the acoustic models' seeds)\n")
print("| domain | system | mel distance | chroma similarity | MMD² |\n|---|---|---|---|---|")
for d in ("speech", "music"):
    for x in ("alone", "aligned", "prefix"):
        r = [json.loads((H / "score" / f"{x}-s{s}-{d}" / "score.json").read_text()) for s in seeds]
        cells = [ms([e["paired"][k]["value"] for e in r]) for k in ("mel_distance", "chroma_similarity")]
        cells.append(ms([e["distribution"]["mmd"]["value"] for e in r]))
        print(f"| {d} | {x} | " + " | ".join(cells) + " |")
metrics = ("language_agreement", "language_prob", "mae_similarity", "chroma_continuity")
print("\nPrompt consistency: alone's value, then the paired difference of each mode (mean over seeds;"
      " in brackets, the seeds whose 95 % interval excludes 0)\n")
print("| domain | system | " + " | ".join(metrics) + " |\n|---|---|---|---|---|---|")
for d in ("speech", "music"):
    f = [json.loads((H / "consistency" / f"s{s}-{d}" / "consistency.json").read_text())["folders"] for s in seeds]
    print(f"| {d} | alone | " + " | ".join(f"{st.mean(r[0]['clips']['continuation'][m]['value'] for r in f):.3f}" for m in metrics) + " |")
    for i, x in ((1, "aligned"), (2, "prefix")):
        cells = []
        for m in metrics:
            p = [r[i]["paired"][m] for r in f]
            k = sum(1 for b in p if b["ci"] and (b["ci"][0] > 0 or b["ci"][1] < 0))
            cells.append(f"{st.mean(b['value'] for b in p):+.3f} ({k} of {len(p)})")
        print(f"| {d} | Δ {x} | " + " | ".join(cells) + " |")
    print(f"| {d} | real continuation | " + " | ".join(f"{f[0][0]['clips']['reference'][m]['value']:.3f}" for m in metrics) + " |")
PY
step done
