#!/usr/bin/env bash
# Set up stt-numerals on a fresh machine (Debian, Python 3.10-3.12, Rust toolchain), install
# Kyutai's moshi-server (built once, cached), and run the quick start offline on the shipped
# model organism (models/organism/):  bash bootstrap.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; install Python 3.10-3.12 or set PYTHON=" >&2; exit 2; }
command -v cargo >/dev/null || { echo "error: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
# Kyutai's moshi-server, the production runtime (`invoke serve`, verify-candle's server row,
# eval.runtime=server): `cargo install` once into the cache (about 18 min on 2 cores), in the
# background while pip downloads torch. MOSHI_SERVER=/path/to/moshi-server skips the build.
SERVER_VERSION=0.6.4
CACHE=${STT_NUMERALS_CACHE:-$HOME/.cache/stt-numerals}
SERVER_BIN=$CACHE/moshi-server-$SERVER_VERSION/bin/moshi-server
SERVER_LOG=$CACHE/moshi-server-$SERVER_VERSION.build.log
server_pid=
if [ -z "${MOSHI_SERVER:-}" ] && [ ! -x "$SERVER_BIN" ]; then
  # Its build needs cmake (sentencepiece) and libopus (audio): Debian's packages.
  if ! command -v cmake >/dev/null || ! pkg-config --exists opus 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "== installing cmake and libopus-dev (needed to build moshi-server)"
      apt-get install -y -qq cmake libopus-dev pkg-config >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake libopus-dev pkg-config >/dev/null; }
    else
      echo "error: building moshi-server needs cmake and libopus-dev: sudo apt-get install cmake libopus-dev pkg-config, then rerun" >&2
      exit 2
    fi
  fi
  mkdir -p "$CACHE"
  echo "== building Kyutai's moshi-server $SERVER_VERSION in the background (once; log: $SERVER_LOG)"
  cargo install moshi-server --version "$SERVER_VERSION" --locked --quiet --root "$CACHE/moshi-server-$SERVER_VERSION" \
    --target-dir "$CACHE/server-target" >"$SERVER_LOG" 2>&1 &
  server_pid=$!
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

if [ -n "$server_pid" ]; then
  echo "== waiting for the moshi-server build"
  if ! wait "$server_pid"; then
    tail -n 20 "$SERVER_LOG" >&2
    echo "error: building moshi-server $SERVER_VERSION failed (log: $SERVER_LOG); fix the cause and rerun bash bootstrap.sh" >&2
    exit 1
  fi
fi
echo "== moshi-server: ${MOSHI_SERVER:-$SERVER_BIN}"

if [ "${1:-}" != "--no-run" ]; then
  echo "== the quick start: invoke all --config configs/quickstart.yaml (offline, the shipped organism, CPU)"
  HF_HUB_OFFLINE=1 .venv/bin/invoke all --config configs/quickstart.yaml
fi
