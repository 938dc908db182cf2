#!/usr/bin/env bash
# Proves (or disproves) the moshi-server slot-reset fix of docs/upstream/: builds Kyutai's moshi
# crate 0.6.4 twice in a scratch folder, as published ("stock") and with
# docs/upstream/moshi-0.6.4-slot-reset.patch ("patched"), with candle_bridge and a small repro
# against each, then runs on MODEL:
#   1. scripts/upstream/slot_reset_repro: does a warmed-up, slot-reset batched Mimi encode a new
#      stream as a fresh Mimi does (and leave the batch's other slot alone)?
#   2. scripts/upstream/served_vs_fresh.py: ServerStreamer (moshi-server's semantics) against the
#      fresh Streamer on verify-candle's test audio and on CLIPS (pause within 1e-6, same text
#      tokens, same words, head 2 on at speech start);
#   3. (once) moshi's own unit tests and candle_bridge's server_streaming tests on the patched crate.
# Not part of the default build or CI. Builds once into $STT_UPSTREAM_DIR (default
# ~/.cache/stt-numerals/upstream-slot-reset, its own CARGO_TARGET_DIR); later runs reuse it.
#
# usage: scripts/upstream/slot_reset_patch.sh [--limit N] [--split S] [--out DIR] MODEL [CLIPS...]
#        scripts/upstream/slot_reset_patch.sh --build-only    (the builds and the crates' tests only)
#   --server  also build Kyutai's moshi-server 0.6.4 against the patched crate and stream through the
#          real servers, stock (MOSHI_SERVER or the project's install) and patched (a servable MODEL)
#   MODEL  checkpoint directory (an export, the organism, ...) or a preset name (`server`)
#   CLIPS  dataset folder from `invoke data` (its --split, default eval), folder of transcribed
#          audio, or audio files; --limit N takes the first N clips
#   --out  where the JSON results go (default $STT_UPSTREAM_DIR/results)
# Environment: PYTHON (the project's venv python; default python3), CARGO_BUILD_JOBS (default 2).
# Exit status: 0 when the stock crate shows the bug (Mimi repro; served streams part from the
# fresh one at its first steps) and the patched one does not (Mimi repro passes; no served stream
# parts at its first steps; a patched moshi-server equals the in-process semantics), else 1.
# Streams that part later for another reason are listed in the summary.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SCRATCH=${STT_UPSTREAM_DIR:-$HOME/.cache/stt-numerals/upstream-slot-reset}
export CARGO_TARGET_DIR=$SCRATCH/target
JOBS=${CARGO_BUILD_JOBS:-2}
PY=${PYTHON:-python3}
PATCH=$REPO/docs/upstream/moshi-0.6.4-slot-reset.patch
LIMIT=0 SPLIT=eval OUT=$SCRATCH/results BUILD_ONLY= SERVER=

while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --limit) LIMIT=$2; shift 2 ;;
    --split) SPLIT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --server) SERVER=1; shift ;;
    *) echo "error: unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
[[ $# -ge 1 || -n $BUILD_ONLY ]] || { echo "usage: $0 [--limit N] [--split S] [--out DIR] MODEL [CLIPS...]" >&2; exit 2; }
MODEL=${1:-}; shift || true
CLIPS=("$@")
mkdir -p "$OUT" "$SCRATCH"
OUT=$(cd "$OUT" && pwd)

# --- the crate's source, from the local registry cache ------------------------------------------
moshi_src() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/moshi-0.6.4 2>/dev/null | head -1; }
if [[ -z $(moshi_src) ]]; then
  echo "== fetching moshi 0.6.4 into the registry cache (cargo fetch)"
  cargo fetch --manifest-path "$REPO/Cargo.toml"
fi
SRC=$(moshi_src)

# --- one scratch workspace per variant: moshi copy, candle_bridge copy, the repro -----------------
prepare() {  # prepare VARIANT
  local dir=$SCRATCH/$1 stamp="moshi-0.6.4-$1"
  if [[ $1 == patched ]]; then stamp+=" $(sha256sum "$PATCH" | cut -c1-16)"; fi
  mkdir -p "$dir"
  # Only a changed patch re-copies the crate: a fresh copy would rebuild it (cargo goes by mtimes).
  if [[ $(cat "$dir/moshi.stamp" 2>/dev/null) != "$stamp" ]]; then
    rm -rf "$dir/moshi-0.6.4-$1"
    cp -a "$SRC" "$dir/moshi-0.6.4-$1"
    if [[ $1 == patched ]]; then
      patch -p1 --quiet -d "$dir/moshi-0.6.4-$1" <"$PATCH"
    fi
    echo "$stamp" >"$dir/moshi.stamp"
  fi
  # cp -a keeps the files' mtimes, so unchanged sources are not rebuilt.
  rm -rf "$dir/candle_bridge" "$dir/slot_reset_repro/src"
  cp -a "$REPO/candle_bridge" "$dir/candle_bridge"
  mkdir -p "$dir/slot_reset_repro"
  cp -a "$REPO/scripts/upstream/slot_reset_repro/src" "$dir/slot_reset_repro/src"
  [[ -f $dir/Cargo.lock ]] || cp "$REPO/Cargo.lock" "$dir/Cargo.lock"  # the project's versions
  # The copy's folder name differs per variant: cargo hashes a path crate by its path relative to
  # the workspace, and the two variants share one target folder.
  cat >"$dir/Cargo.toml" <<EOF
# Written by scripts/upstream/slot_reset_patch.sh: moshi 0.6.4 from ./moshi-0.6.4-$1 (a copy of
# the registry's, $1) for candle_bridge and the repro.
[workspace]
members = ["candle_bridge", "moshi-0.6.4-$1", "slot_reset_repro"]
resolver = "2"

[patch.crates-io]
moshi = { path = "moshi-0.6.4-$1" }

[profile.release]
debug = false
EOF
  cat >"$dir/slot_reset_repro/Cargo.toml" <<'EOF'
[package]
name = "slot_reset_repro"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
moshi = "=0.6.4"
candle = { package = "candle-core", version = "=0.9.1" }
candle-nn = "=0.9.1"
candle_bridge = { path = "../candle_bridge" }
anyhow = "1"
serde_json = "1"
EOF
}

build() {  # build VARIANT: the repro binary and the Python module, copied out of the shared target
  local dir=$SCRATCH/$1
  echo "== building against moshi 0.6.4 $1 (cargo -j $JOBS; $dir)"
  (cd "$dir" && MOSHI_SOURCE="moshi 0.6.4 $1" cargo build --release -j "$JOBS" -p slot_reset_repro)
  mkdir -p "$dir/bin" "$dir/py"
  cp "$CARGO_TARGET_DIR/release/slot_reset_repro" "$CARGO_TARGET_DIR/release/minimal" "$dir/bin/"
  (cd "$dir" && PYO3_PYTHON=$(command -v "$PY") cargo build --release -j "$JOBS" -p candle_bridge --lib \
    --features python,pyo3/extension-module)
  cp "$CARGO_TARGET_DIR/release/libcandle_bridge.so" "$dir/py/candle_bridge.abi3.so.tmp"
  mv "$dir/py/candle_bridge.abi3.so.tmp" "$dir/py/candle_bridge.abi3.so"
}

for v in stock patched; do prepare $v; build $v; done

# --- the crates' own tests on the patched copy (once per patch) ----------------------------------
TESTS=$SCRATCH/patched/tests.log
if [[ ! -f $TESTS || $TESTS -ot $SCRATCH/patched/moshi.stamp ]]; then
  echo "== moshi's unit tests and candle_bridge's server_streaming tests, patched ($TESTS)"
  (cd "$SCRATCH/patched" && {
    cargo test --release -j "$JOBS" -p moshi --lib 2>&1 | grep -E "^test |test result" || true
    cargo test --release -j "$JOBS" -p candle_bridge --test server_streaming 2>&1 \
      | grep -E "^test |test result|panicked|left:|right:" | cut -c1-160 || true
  }) >"$TESTS.tmp"
  mv "$TESTS.tmp" "$TESTS"
fi
cat "$TESTS"

# --- optional: moshi-server itself against the patched crate -------------------------------------
# Its own Cargo.lock (as `cargo install --locked` builds it), and a copy of the target folder of
# the project's install when there is one, so only moshi and moshi-server are compiled again.
if [[ -n $SERVER ]]; then
  SERVER_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/moshi-server-0.6.4 2>/dev/null | head -1)
  if [[ -z $SERVER_SRC ]]; then
    echo "error: moshi-server 0.6.4's source is not in the registry cache; run bash bootstrap.sh (it builds it) or" \
      "cargo install moshi-server --version 0.6.4 --locked first" >&2
    exit 1
  fi
  SDIR=$SCRATCH/server
  if [[ ! -d $SDIR/target && -d $HOME/.cache/stt-numerals/server-target/release ]]; then
    echo "== seeding $SDIR/target from the project's moshi-server build"
    mkdir -p "$SDIR/target" && cp -a "$HOME/.cache/stt-numerals/server-target/release" "$SDIR/target/release"
  fi
  if [[ ! -f $SDIR/moshi-server-0.6.4/Cargo.toml ]]; then
    mkdir -p "$SDIR" && cp -a "$SERVER_SRC" "$SDIR/moshi-server-0.6.4"
    printf '\n[patch.crates-io]\nmoshi = { path = "../../patched/moshi-0.6.4-patched" }\n' \
      >>"$SDIR/moshi-server-0.6.4/Cargo.toml"
  fi
  echo "== building moshi-server 0.6.4 against the patched crate (cargo -j $JOBS; $SDIR)"
  (cd "$SDIR/moshi-server-0.6.4" && CARGO_TARGET_DIR=$SDIR/target cargo build --release -j "$JOBS" --bin moshi-server)
  mkdir -p "$SDIR/bin" && cp "$SDIR/target/release/moshi-server" "$SDIR/bin/"
fi
[[ -z $BUILD_ONLY ]] || exit 0

# --- the runs --------------------------------------------------------------------------------------
if [[ ! -d $MODEL ]]; then  # a preset name: its directory (built there if missing)
  MODEL=$(cd "$REPO" && "$PY" -c "import sys; from pipeline.models import resolve_model; \
print(resolve_model(sys.argv[1], 'artifacts'))" "$MODEL" | tail -1)
fi
NAME=$(basename "$MODEL")
status=0
echo "== PyTorch moshi's per-slot reset on $MODEL's Mimi"
(cd "$REPO" && HF_HUB_OFFLINE=1 "$PY" scripts/upstream/python_reset.py "$MODEL" | tee "$OUT/$NAME-python-reset.json")
declare -A SERVER_BIN=([stock]=${MOSHI_SERVER:-$HOME/.cache/stt-numerals/moshi-server-0.6.4/bin/moshi-server}
                       [patched]=$SCRATCH/server/bin/moshi-server)
cp "$TESTS" "$OUT/crate-tests-patched.log"
# Every stream's audio (verify-candle's test signal, then each clip as streamed) as raw f32: the
# Rust repro's inputs.
PCM=$SCRATCH/pcm/$NAME
(cd "$REPO" && HF_HUB_OFFLINE=1 "$PY" scripts/upstream/served_vs_fresh.py "$MODEL" \
  ${CLIPS[@]:+--clips "${CLIPS[@]}"} --split "$SPLIT" --limit "$LIMIT" --dump-pcm "$PCM")
# The report's minimal repro runs on Kyutai's Mimi architecture only (what moshi-server loads), with
# its 32 codebooks as stt-1b-en_fr uses them.
MIMI=$("$PY" -c "import json, sys; c = json.load(open(sys.argv[1])); \
print('' if 'mimi_config_name' in c else c['mimi_name'], 32)" "$MODEL/config.json")
for v in stock patched; do
  if [[ -n ${MIMI% *} ]]; then
    echo "== $v: minimal $MODEL/${MIMI% *} ${MIMI#* }"
    RUST_BACKTRACE=0 "$SCRATCH/$v/bin/minimal" "$MODEL/${MIMI% *}" "${MIMI#* }" >"$OUT/$NAME-minimal-$v.log" 2>&1 \
      && echo "exit 0 (passes)" | tee -a "$OUT/$NAME-minimal-$v.log" \
      || echo "exit $? (fails)" | tee -a "$OUT/$NAME-minimal-$v.log"
  fi
  echo "== $v: slot_reset_repro $MODEL"
  set +e
  "$SCRATCH/$v/bin/slot_reset_repro" "$MODEL" 32 "$PCM"/*.f32 | tee "$OUT/$NAME-repro-$v.log"
  rc=${PIPESTATUS[0]}
  set -e
  # Stock must show the bug (exit 1), patched must not (exit 0).
  if [[ ($v == stock && $rc != 1) || ($v == patched && $rc != 0) ]]; then
    echo "!! $v: slot_reset_repro exited $rc" >&2; status=1
  fi
  echo "== $v: served vs fresh on $MODEL${CLIPS[*]:+ and ${CLIPS[*]}}"
  (cd "$REPO" && PYTHONPATH=$SCRATCH/$v/py HF_HUB_OFFLINE=1 "$PY" scripts/upstream/served_vs_fresh.py "$MODEL" \
    ${CLIPS[@]:+--clips "${CLIPS[@]}"} --split "$SPLIT" --limit "$LIMIT" --label "moshi 0.6.4 $v" \
    ${SERVER:+--server-bin "${SERVER_BIN[$v]}"} --out "$OUT/$NAME-served-vs-fresh-$v.json")
done
"$PY" - "$OUT/$NAME-served-vs-fresh-stock.json" "$OUT/$NAME-served-vs-fresh-patched.json" \
  "$OUT/$NAME-repro-patched.log" <<'EOF' || status=1
# Verdict: the slot reset's effect is the first frame, so served streams part from fresh ones at
# step 0 or 1 with it. Streams that part later do so for another reason (the repro's check 3 shows
# batched and unbatched Mimi breaking a near-tie code differently); they are listed, not failed.
import json, sys
stock, patched = (json.load(open(p))["summary"] for p in sys.argv[1:3])
# The Rust repro's streams, in the same order (its first entry holds check 2): a stream that parts
# later is explained when its first batched-vs-unbatched Mimi code difference, at frame f, is what
# the LM first reads at step f + 1.
repro = [s for s in json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])["streams"] if "input" in s]
rows = json.load(open(sys.argv[2]))["streams"]
later = [(r, s) for r, s in zip(rows, repro) if (r["first_step_over_tolerance"] or 0) > 1]
explained = [r["id"] for r, s in later if s["batched_vs_unbatched_frames_different"]
             and s["batched_vs_unbatched_frames_different"][0] + 1 == r["first_step_over_tolerance"]]
print(f"patched: {len(later)} streams part later than step 1; {len(explained)} of them at the step after a code "
      f"a fresh batched and a fresh unbatched Mimi break differently")
for name, s in (("stock", stock), ("patched", patched)):
    print(f"{name}: {s['streams_within_tolerance']} of {s['streams']} streams served == fresh (max |dpause| "
          f"{s['max_pause_delta']:.3g}); {s['streams_apart_from_step_0_or_1']} part at step 0-1; later: "
          f"{s['streams_apart_later'] or 'none'}")
real = patched.get("moshi_server_max_pause_delta_vs_fresh")
if real is not None:
    print(f"moshi-server: stock max |dpause| vs fresh {stock['moshi_server_max_pause_delta_vs_fresh']:.3g}, "
          f"patched {real:.3g}; patched vs ServerStreamer {patched['moshi_server_max_pause_delta_vs_server_streamer']:.3g}")
ok = (stock["streams_apart_from_step_0_or_1"] > 0 and patched["streams_apart_from_step_0_or_1"] == 0
      and len(explained) == len(later) and (real is None or patched["moshi_server_max_pause_delta_vs_server_streamer"] <= 1e-6))
sys.exit(0 if ok else 1)
EOF
echo "== results in $OUT"
exit $status
