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

# 32 held-out prompts per domain (2 s prompt, 4 s continuation), seed-0 acoustic models
S="--prompt-seconds 2 --seconds 4 --num-prompts 32 --batch-size 8 --seed 0 --no-progress --fine $H/train/fine"
for d in speech music; do
  P="--data $H/prepared-semantic/$d $S"
  have "$H/samples/alone-$d/generation.json" || { step "sample alone $d"
    python sample.py --checkpoint "$H/train/acoustic-none-s0" $P --out "$H/samples/alone-$d"; }
  for mode in aligned prefix; do
    have "$H/samples/$mode-$d/generation.json" || { step "sample hierarchy ($mode) $d"
      python sample.py --semantic-lm "$H/train/semantic" --checkpoint "$H/train/acoustic-$mode-s0" $P --out "$H/samples/$mode-$d"; }
  done
  for s in alone aligned prefix; do
    have "$H/score/$s-$d/score.json" || whispergpt score "$H/samples/$s-$d" --out "$H/score/$s-$d"
  done
  have "$H/consistency/$d/consistency.json" || { step "consistency $d"
    whispergpt consistency "$H/samples/alone-$d" "$H/samples/aligned-$d" "$H/samples/prefix-$d" --mae "$H/train/mae" --layer 1 --out "$H/consistency/$d"; }
done
step done
