#!/usr/bin/env bash
# Install whispergpt (editable) into the active virtualenv, or into ./.venv if none is active.
# Usage: bash scripts/install.sh [EXTRAS]   e.g. "dev" (tests) or "" (runtime only)
# torch is pinned through a constraints file so that pip never swaps the torch you have for a
# multi-GB CUDA build: the installed version if torch is present, else constraints.txt (2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
extras="${1:-}"
cons=$(mktemp)
if python -c "import torch" 2>/dev/null; then
  python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$cons"
else
  cp constraints.txt "$cons"
fi
spec=$(head -n1 "$cons")
pip install -q -c "$cons" "$spec"
if [ -n "$extras" ]; then
  pip install -q -c "$cons" -e ".[$extras]"
else
  pip install -q -c "$cons" -e .
fi
# DeepSpeed builds its ops lazily; DS_BUILD_OPS=0 keeps the install quick and CPU-friendly.
if [ "${WHISPERGPT_NO_DEEPSPEED:-0}" != "1" ] && ! python -c "import deepspeed" 2>/dev/null; then
  DS_BUILD_OPS=0 pip install -q -c "$cons" --no-build-isolation "deepspeed>=0.14" \
    || echo "warning: DeepSpeed did not install; single-process and DDP training still work" >&2
fi
rm -f "$cons"
echo "installed whispergpt into $(python -c 'import sys; print(sys.prefix)')"
