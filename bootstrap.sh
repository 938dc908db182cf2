#!/usr/bin/env bash
# Set up stt-numerals on a fresh machine (Debian, Python 3.10-3.12, Rust toolchain) and run the
# main job offline on the embedded default model:  bash bootstrap.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; install Python 3.10-3.12 or set PYTHON=" >&2; exit 2; }
command -v cargo >/dev/null || { echo "error: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "== installing stt-numerals (Python deps, torch, moshi, and the candle_bridge Rust extension)"
.venv/bin/python -m pip install --quiet --upgrade pip
# Editable install: maturin compiles candle_bridge (release) and links the `pipeline` package.
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[test]"

if [ "${1:-}" != "--no-run" ]; then
  echo "== invoke all (offline, tiny default model)"
  HF_HUB_OFFLINE=1 .venv/bin/invoke all
fi
