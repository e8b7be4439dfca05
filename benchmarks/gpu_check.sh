#!/usr/bin/env bash
# One short GPU check (GPU time is rare): CUDA tests, the GPU benchmarks (train MFU for gpt_100m
# eager and compiled; sampling at batch 1 and 8: eager, the static step as CUDA graphs (compile),
# the lagged model sequential and with its decode overlapped on a side stream, the codec latent),
# a codec-training burst with its eval before and after. Everything lands under $OUT (default runs/gpu_check).
# Usage: bash benchmarks/gpu_check.sh [--dry-run]   (--dry-run prints the plan and each part's budget)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check}"
PY="${PYTHON:-python}"
CODEC="whispergpt/assets/codec/whispergpt-small-24khz"
AUDIO="${GPU_CHECK_AUDIO:-$OUT/audio/music}"  # any folder of audio (default: tones made below)
MAKE_AUDIO="import numpy as np, soundfile as sf, os; d='$OUT/audio/music'; os.makedirs(d, exist_ok=True); r=np.random.default_rng(0); t=np.arange(96000)/24000; [sf.write(f'{d}/tone{i}.wav', (0.3*np.sin(2*np.pi*110*2**(i/4)*t)+0.01*r.standard_normal(t.size)).astype('float32'), 24000) for i in range(8)]"
# name | seconds allowed | command   (the total, checked by --dry-run, stays under 10 minutes)
PLAN=(
  "make-audio|10|$PY -c \"$MAKE_AUDIO\""
  "cuda-tests|80|$PY -m pytest -q -p no:cacheprovider -k cuda tests"
  "bench-train|100|$PY benchmarks/run.py --device cuda --only train --out $OUT/bench-train.json"
  "bench-train-compiled|90|$PY benchmarks/run.py --device cuda --only train --compile --out $OUT/bench-train-compiled.json"
  "bench-sampling|150|$PY benchmarks/bench_sampling.py --device cuda --batches 1,8 --frames 300 --repeats 3 --codecs full --variants compile,lag1,overlap,codec_latent --out $OUT/bench-sampling.json"
  "codec-eval-before|20|$PY -m whispergpt codec eval $CODEC --music $AUDIO --out $OUT/codec-eval-before"
  "codec-train-burst|120|timeout 110 $PY -m whispergpt codec train $AUDIO --out $OUT/codec model.init=$CODEC train.max_steps=100000"
  "codec-eval-after|20|$PY -m whispergpt codec eval $OUT/codec --music $AUDIO --out $OUT/codec-eval-after"
)
total=0
for p in "${PLAN[@]}"; do total=$((total + $(cut -d'|' -f2 <<<"$p"))); done
if [ "${1:-}" = "--dry-run" ]; then
  echo "gpu_check plan (${#PLAN[@]} parts, ${total} s allowed in all), output in $OUT:"
  for p in "${PLAN[@]}"; do IFS='|' read -r name secs cmd <<<"$p"; printf '  %-22s %4ss  %s\n' "$name" "$secs" "$cmd"; done
  [ "$total" -le 600 ] || { echo "plan exceeds 600 s" >&2; exit 1; }
  exit 0
fi
mkdir -p "$OUT"
status=0
for p in "${PLAN[@]}"; do
  IFS='|' read -r name secs cmd <<<"$p"
  echo "== $name (<= ${secs}s): $cmd" | tee -a "$OUT/summary.txt"
  start=$(date +%s)
  timeout "$secs" bash -c "$cmd" >"$OUT/$name.log" 2>&1; rc=$?
  echo "   rc=$rc in $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
  # the codec burst is cut by its timeout on purpose (124); other non-zero codes count
  if [ "$rc" -ne 0 ] && ! { [ "$name" = codec-train-burst ] && [ "$rc" -eq 124 ]; }; then status=1; fi
done
exit $status
