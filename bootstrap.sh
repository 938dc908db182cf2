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
# torch from PyPI is a 900 MB CUDA wheel (plus its nvidia-* libraries); a dropped connection
# mid-download is the usual failure, so pip resumes within a run and the run is retried.
pip_install() {
  local attempt
  for attempt in 1 2 3; do
    .venv/bin/python -m pip install "$@" && return 0
    [ "$attempt" = 3 ] && break
    echo "== pip install failed (attempt $attempt of 3); retrying in 30 s" >&2
    sleep 30
  done
  echo "error: pip install $* failed 3 times; check the network or the pip cache and rerun bash bootstrap.sh" >&2
  exit 1
}
pip_install --quiet --upgrade pip
# Editable install: maturin compiles candle_bridge (release) and links the `pipeline` package.
pip_install --quiet --progress-bar off --resume-retries 20 -e ".[test]"

if [ "${1:-}" != "--no-run" ]; then
  echo "== invoke all (offline, tiny default model)"
  HF_HUB_OFFLINE=1 .venv/bin/invoke all
fi
