#!/usr/bin/env bash
# System packages for `whispergpt data demo` (all sources). Without root, use
# `whispergpt data demo --install`, which unpacks the data packages into ~/.cache/whispergpt.
set -euo pipefail
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends espeak-ng fluidsynth tuxpaint-stamps-default ufoai-music "$@"
