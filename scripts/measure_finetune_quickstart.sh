#!/usr/bin/env bash
# Fine-tune the quickstart's model on a new corpus (README "Fine-tune a trained model", measured).
# The new corpus: espeak-ng speech in de, it, pl, fi, hu, tr (random numbers, read in each
# language), languages that neither the quickstart's espeak voices (English) nor its tuxpaint
# recordings (13 others) use; no file of it is in the quickstart corpus (checked below). It is
# prepared with the quickstart's codec and bandwidth (read from its manifest, and checked). Then,
# with configs/finetune_quickstart.yaml (same steps, same recipe for all): a full fine-tune, LoRA
# r=8 (at the recipe's LR and at 4x it: adapters want a higher LR), and the same run from scratch
# (train.init_from=null) as the control, one of each per seed.
# `whispergpt eval` scores those and the parent on the new corpus's whole val split (both mels;
# the table: mel=decoded, what the quickstart's delay model trains on and samples with).
# Usage: [SEEDS="0 1"] scripts/measure_finetune_quickstart.sh [QUICKSTART] [OUT]
#        (defaults runs/quickstart runs/finetune_new; re-running skips what exists)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
QS="${1:-runs/quickstart}"
OUT="${2:-runs/finetune_new}"
SEEDS="${SEEDS:-0}"
PARENT="$QS/train/hybrid"
D="$OUT/prepared"
step() { echo "== $1 $(date +%T)"; }
have() { [ -e "$1" ]; }
have "$PARENT/final/model.safetensors" || { echo "no finished quickstart model in $PARENT: run whispergpt quickstart first" >&2; exit 2; }
read -r CODEC BW < <(python -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["codec"], m["bandwidth"])' "$QS/prepared/speech/manifest.json")

have "$OUT/corpus/SOURCES.json" || { step corpus
  whispergpt data demo --out "$OUT/corpus" --sources espeak --espeak-voices de,it,pl,fi,hu,tr \
    --speech-fraction 1 --minutes 8 --seed 1; }
have "$D/manifest.json" || { step prepare
  whispergpt prepare "$OUT/corpus/speech" --out "$D" --codec "$CODEC" --bandwidth "$BW" --val-fraction 0.15; }
python - "$QS" "$OUT" <<'EOF'
import hashlib, json, sys
from pathlib import Path
qs, out = Path(sys.argv[1]), Path(sys.argv[2])
digest = lambda d: {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in (d / "corpus").rglob("*.wav")}
shared = set(digest(qs)) & set(digest(out))
assert not shared, f"{len(shared)} files of the new corpus are in the quickstart corpus"
codec = lambda d: {k: json.loads((d / "manifest.json").read_text())[k] for k in ("codec", "bandwidth", "codec_config")}
assert codec(qs / "prepared" / "speech") == codec(out / "prepared"), "the new corpus has another codec"
print(f"new corpus: {len(digest(out))} files, none in the quickstart corpus; same codec and bandwidth")
EOF

for seed in $SEEDS; do
  for kind in full lora lora-lr2e-3 scratch; do
    run="$OUT/$kind-s$seed"
    have "$run/final/model.safetensors" && continue
    case $kind in
      full) extra=("train.init_from=$PARENT") ;;
      lora) extra=("train.init_from=$PARENT" train.lora.r=8) ;;
      lora-lr2e-3) extra=("train.init_from=$PARENT" train.lora.r=8 train.lr=2e-3 train.min_lr=2e-4) ;;
      scratch) extra=(train.init_from=null) ;;
    esac
    step "train $kind seed $seed"
    whispergpt train finetune_quickstart.yaml "data.dir=$D" "out_dir=$run" "${extra[@]}" "train.seed=$seed"
  done
done

CKPTS=(--checkpoint "$PARENT/final")
for seed in $SEEDS; do for kind in full lora lora-lr2e-3 scratch; do CKPTS+=(--checkpoint "$OUT/$kind-s$seed/final"); done; done
EVAL="$OUT/eval-seeds-${SEEDS// /-}.json"  # one report per seed list
have "$EVAL" || { step eval; whispergpt eval "${CKPTS[@]}" --data "$D" --split val --out "$EVAL"; }

python - "$EVAL" "$PARENT" <<'EOF'
import json, sys
from pathlib import Path
report, parent = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
rep = json.loads(report.read_text())
lines = ["| model | trainable parameters | steps on the new corpus | train wall time | val NLL, mel=decoded (per codebook) | mel=truth |",
         "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
for ck in rep["checkpoints"]:
    run = Path(ck["checkpoint"]).parent
    rec = json.loads((run / "final" / "training_data.json").read_text())
    total, lora = ck["config"]["num_parameters"], rec.get("lora")
    trainable = f"{lora['trainable']:,} of {total:,}" if lora else f"{total:,} of {total:,}"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    wall = max((m.get("elapsed_s", 0) for m in metrics), default=0)
    by = {e["mel_source"]: e["metrics"] for e in ck["evaluations"]}
    dec, tru = by["decoded"], by["truth"]
    pcb = ", ".join(f"{c['nll']:.3f}" for c in dec["per_codebook"])
    name, steps, wall_s = run.name, rec["steps"], f"{wall:.0f} s"
    if run == parent:
        name, steps, wall_s = "parent (the quickstart's hybrid), before fine-tuning", 0, "-"
    lines.append(f"| {name} | {trainable} | {steps} | {wall_s} | {dec['nll']:.3f} ({pcb}) | {tru['nll']:.3f} |")
table = "\n".join(lines) + "\n"
report.with_suffix(".table.md").write_text(table)
print(table + f"(val split: {rep['data']['files']} files, {rep['data']['seconds']:.1f} s; all metrics: {report.with_suffix('.md')})")
EOF
