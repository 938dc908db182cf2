#!/usr/bin/env bash
# CUDA builds of the production runtime for the GPU box (issue #19), made on a machine with no GPU
# and no system CUDA: NVIDIA's compiler, headers and libraries come from PyPI wheels pinned to
# CUDA 13.0 (the box's driver; its ptxas refuses newer PTX), kernels are compiled for sm_90 (H100,
# H200). See docs/gpu.md for why each pin and variable is there.
#
#   scripts/remote-gpu/build_cuda.sh bridge   candle_bridge (features python,cuda) -> .whl/extra/candle_bridge_cuda.tar.xz
#                                  (the package folder candle_bridge/, about 2 MB: untar it into a site dir)
#   scripts/remote-gpu/build_cuda.sh server   moshi-server 0.6.4 --features cuda  -> .whl/extra/moshi-server-cuda.xz
#   scripts/remote-gpu/build_cuda.sh wheels   the Python wheels the box lacks (moshi, invoke, websockets, ...) -> .whl/
#   scripts/remote-gpu/build_cuda.sh all      all three
#
# Slow parts are cached outside the clone under $STT_NUMERALS_CACHE (default ~/.cache/stt-numerals):
# the wheels (cuda13/, about 1.2 GB), the Rust targets (cargo-target-cuda/, server-target-cuda/).
# The outputs are small enough to travel through the channel to the box (tens of MiB; README.md here).
# On a machine with a GPU and the CUDA toolkit, build directly instead: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${STT_NUMERALS_CACHE:-$HOME/.cache/stt-numerals}
cuda=$cache/cuda13
python=${PYTHON:-.venv/bin/python}
arch=${CUDA_COMPUTE_CAP:-90}

toolchain() {
  cargo fetch -q  # cudarc's sources, for the driver stub below
  if [ ! -x "$cuda/site/nvidia/cu13/bin/nvcc" ]; then
    echo "installing the CUDA 13.0 toolchain wheels into $cuda/site" >&2
    "$python" -m pip install -q --target "$cuda/site" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
      nvidia-cuda-crt==13.0.88 "nvidia-cuda-cccl==13.0.*" nvidia-nvvm==13.0.88 "nvidia-cublas==13.0.*" \
      nvidia-curand "nvidia-cuda-nvrtc==13.0.*"
  fi
  # A CUDA_ROOT in the layout cudarc's build script searches: bin/, include/, lib/ with unversioned
  # names for the linker, lib/stubs/libcuda.so for the driver library (no wheel ships it).
  local cu13=$cuda/site/nvidia/cu13 root=$cuda/root
  mkdir -p "$root/lib/stubs"
  for d in bin include nvvm; do ln -sfn "$cu13/$d" "$root/$d"; done
  for lib in cublas cublasLt curand nvrtc cudart; do
    ln -sf "$(ls "$cu13"/lib/lib$lib.so.* | head -1)" "$root/lib/lib$lib.so"
  done
  if [ ! -f "$root/lib/stubs/libcuda.so" ]; then
    # Every driver entry point cudarc declares, as an empty function: enough to link against; the
    # box's real libcuda.so.1 (same soname) is what runs.
    local bindings
    bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.16.*/src/driver/sys/mod.rs | head -1)
    grep -o "pub fn cu[A-Za-z0-9_]*" "$bindings" | sort -u | sed 's/pub fn \(.*\)/void \1(void) {}/' >"$root/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/stub.c"
  fi
  export PATH=$root/bin:$PATH CUDA_ROOT=$root CUDA_PATH=$root CUDA_COMPUTE_CAP=$arch
  # cudarc 0.16 has no CUDA 13 bindings ("Unsupported cuda toolkit version: 13.0"); its 12.8 ones
  # work against the 13.0 driver and libraries for what candle calls.
  export CUDARC_CUDA_VERSION=12080
}

bridge() {
  toolchain
  "$python" -c "import maturin" 2>/dev/null || "$python" -m pip install -q "maturin>=1.5,<2"
  # The project's wheel (pipeline + candle_bridge); only the extension travels. The CUDA libraries
  # stay out of it (--auditwheel skip): the box loads PyTorch's copies of them.
  rm -rf "$cache/cuda-wheels"
  CARGO_TARGET_DIR=$cache/cargo-target-cuda "$python" -m maturin build --release -q \
    -m candle_bridge/Cargo.toml --features python,cuda,pyo3/extension-module --auditwheel skip --out "$cache/cuda-wheels"
  local unpacked=$cache/cuda-wheels/unpacked out=.whl/extra/candle_bridge_cuda.tar.xz
  "$python" -m zipfile -e "$cache"/cuda-wheels/*.whl "$unpacked"
  mkdir -p .whl/extra && tar -C "$unpacked" -cJf "$out.tmp" candle_bridge && mv "$out.tmp" "$out"
  ls -la "$out"
}

server() {
  toolchain
  local root=$cache/moshi-server-0.6.4-cuda src=$cache/moshi-server-0.6.4-src
  if [ ! -x "$root/bin/moshi-server" ]; then
    # The published crate and its lock file, with one patch-level bump: the locked cudarc 0.16.2
    # finds the CUDA version by parsing `nvcc --version` and refuses 13.0; cudarc 0.16.6 (what
    # candle_bridge builds with) takes CUDARC_CUDA_VERSION instead.
    if [ ! -f "$src/Cargo.lock" ]; then
      rm -rf "$src.tmp" && mkdir -p "$src.tmp"
      curl -sSfL https://static.crates.io/crates/moshi-server/moshi-server-0.6.4.crate | tar -xz -C "$src.tmp"
      mv "$src.tmp/moshi-server-0.6.4" "$src" && rm -rf "$src.tmp"
    fi
    (cd "$src" && cargo update -q -p cudarc --precise 0.16.6)
    CARGO_TARGET_DIR=$cache/server-target-cuda cargo install --path "$src" --locked --features cuda --root "$root"
  fi
  mkdir -p .whl/extra
  xz -T2 -6 -c "$root/bin/moshi-server" >.whl/extra/moshi-server-cuda.xz.tmp
  mv .whl/extra/moshi-server-cuda.xz.tmp .whl/extra/moshi-server-cuda.xz
  # What the box lacks of the server's shared libraries: opus (and the Python it was built with).
  for lib in libopus.so.0 "$(ldd "$root/bin/moshi-server" | grep -o 'libpython[0-9.]*\.so[0-9.]*' | head -1)"; do
    cp -L "$(ldconfig -p | grep -m1 "$lib " | sed 's/.*=> //')" .whl/extra/
  done
  ls -la .whl/extra
}

wheels() {
  # The Python packages the box lacks (it has torch, numpy, safetensors, huggingface_hub), as
  # cp312 wheels at the versions of this .venv: scripts/remote-gpu/runtime_gpu.sh installs them offline.
  local pkgs=() name
  for name in moshi invoke num2words soundfile cffi pycparser soxr espeakng-loader websockets msgpack; do
    pkgs+=("$name==$("$python" -m pip show "$name" | awk '/^Version:/{print $2}')")
  done
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pkgs[@]}"
  # openai-whisper ships only as an sdist (pure Python): its installed package is copied as is;
  # the scripts put .whl/pkgs on the box's path (the distill stage needs Whisper tiny.en's code).
  local site
  site=$("$python" -c "import whisper, pathlib; print(pathlib.Path(whisper.__file__).parent)")
  rm -rf .whl/pkgs/whisper && mkdir -p .whl/pkgs && cp -r "$site" .whl/pkgs/ && find .whl/pkgs -name __pycache__ -prune -exec rm -rf {} +
  ls .whl/*.whl .whl/pkgs
}

case "${1:-}" in
  bridge) bridge ;;
  server) server ;;
  wheels) wheels ;;
  all) wheels && bridge && server ;;
  *) echo "usage: scripts/remote-gpu/build_cuda.sh bridge|server|wheels|all" >&2; exit 2 ;;
esac
