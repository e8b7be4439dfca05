#!/usr/bin/env bash
# Install whispergpt into ./.venv (or the active venv) and run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
exec whispergpt quickstart "$@"
