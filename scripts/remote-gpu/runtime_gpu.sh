#!/usr/bin/env bash
# The production runtime on the GPU box (issue #19; a remote GPU machine: README.md here; on your own GPU
# machine, the invoke commands of docs/gpu.md), with the builds of scripts/remote-gpu/build_cuda.sh:
#   scripts/remote-gpu/runtime_gpu.sh parity [EXPORT]   verify-candle --device cuda (Candle CUDA bf16 against
#                                            PyTorch CUDA bf16) on EXPORT (default: the organism's,
#                                            artifacts/organism/export, carried)
#   scripts/remote-gpu/runtime_gpu.sh parity-1b [STEPS] [cpu]
#                                            train every weight of the 1b preset for STEPS (default 150)
#                                            on the default espeak dataset, export, verify --device cuda;
#                                            `cpu`: verify on the box's CPU instead, as CI does, then the
#                                            untrained 1b export for comparison (issue #5's bf16 gate)
#   scripts/remote-gpu/runtime_gpu.sh serve [N,N,...] [both|server|peer] [PROCESSES]
#                                            `invoke bench --what serve` on a 1b-shape export (random
#                                            weights): moshi-server CUDA and the PyTorch peer in one run,
#                                            then the streams-per-GPU row; `server` or `peer`: that side only;
#                                            PROCESSES: moshi-server processes sharing the GPU (default 1)
#   scripts/remote-gpu/runtime_gpu.sh split [N,N,...]   the server's batched step in-process (Kyutai's crate on
#                                            Candle CUDA), whole and its Mimi encode alone (default N 1024)
# carry: .whl (the wheels of scripts/remote-gpu/organism_gpu.sh plus websockets and msgpack, and .whl/extra:
# candle_bridge_cuda.tar.xz, moshi-server-cuda.xz, libopus.so.0, libpython3.*.so.*), and for
# `parity` the export. Figures land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && tar -xJf .whl/extra/candle_bridge_cuda.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD || exit 1
cp -r .whl/pkgs/. /tmp/site/ 2>/dev/null
# Candle's CUDA build links cuBLAS and cuRAND 13 dynamically: PyTorch's copies; the driver's libcuda.so.1.
nvlib=$(python3 -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', 'lib'))")
export LD_LIBRARY_PATH=$nvlib:/tmp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; date -u
set -o pipefail
quiet() { tr "\r" "\n" | grep -v -E "step/s|file/s|utt/s|it/s|codebook/s" | tee "$1" | tail -4; }
server_binary() {
  mkdir -p /tmp/lib /tmp/bin
  cp .whl/extra/libopus.so.0 .whl/extra/libpython3*.so* /tmp/lib/ 2>/dev/null
  xz -dc .whl/extra/moshi-server-cuda.xz >/tmp/bin/moshi-server && chmod +x /tmp/bin/moshi-server
  ldd /tmp/bin/moshi-server | grep -E "not found" && return 1
  export MOSHI_SERVER=/tmp/bin/moshi-server
}
export_1b() {
  [ -f artifacts/checkpoints/1b/config.json ] || python3 -m invoke checkpoint --preset 1b 2>&1 | quiet $OUT/checkpoint.log
}
case "$1" in
  parity)
    model=${2:-artifacts/organism/export}
    time python3 -m invoke verify-candle --model "$model" --set verify.device=cuda --set verify.server=no 2>&1 \
      | tee $OUT/verify-cuda-$(basename "$model").txt | tail -14 ;;
  parity-1b)
    steps=${2:-150}
    export_1b
    [ -f artifacts/data/train.jsonl ] || time python3 -m invoke data --set data.piper_fraction=0 2>&1 | quiet $OUT/data.log
    time python3 -m invoke train --model 1b --set train.method=full --set train.steps=$steps --set train.lr=0.0003 \
      --set train.warmup_steps=30 --set train.compile=false --set train.out=runs/1b-full 2>&1 | quiet $OUT/train.log
    python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/runs/1b-full/metrics.jsonl')]
for r in m[::50]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'], r.get('gpu_peak_gib'))" \
      | tee $OUT/train-loss.txt
    time python3 -m invoke export --set export.source=$PWD/artifacts/runs/1b-full/final --set export.out=export-1b-trained \
      2>&1 | quiet $OUT/export.log
    if [ "$3" = cpu ]; then
      time python3 -m invoke verify-candle --model artifacts/export-1b-trained 2>&1 | tee $OUT/verify-trained.txt | tail -12
      time python3 -m invoke export --set export.source=1b --set export.out=export-1b 2>&1 | quiet $OUT/export-random.log
      time python3 -m invoke verify-candle --model artifacts/export-1b 2>&1 | tee $OUT/verify-random.txt | tail -12
    else
      server_binary && server=auto || server=no
      time python3 -m invoke verify-candle --model artifacts/export-1b-trained --set verify.device=cuda \
        --set verify.server=$server 2>&1 | tee $OUT/verify-cuda-1b-trained.txt | tail -14
    fi ;;
  serve)
    export_1b
    [ "$3" = peer ] || server_binary || exit 1
    if [ -z "$3" ] || [ "$3" = both ]; then
      python3 -m invoke bench --what serve --set serve.bench_streams="${2:-64,256,512,1024}" \
        --set serve.bench_processes="${4:-1}" 2>&1 | tee $OUT/serve.log | grep "^{"
      work=artifacts/bench/serve-work
    else
      python3 -m invoke export --set export.source=1b --set export.out=export-1b 2>&1 | quiet $OUT/export.log
      python3 -m pipeline.bench_serve artifacts/export-1b /tmp/serve-work $(echo "${2:-64,256,512,1024}" | tr , " ") \
        --only "$3" --processes "${4:-1}" 2>&1 | tee -a $OUT/serve.jsonl
      work=/tmp/serve-work
    fi
    for f in $work/server-*/server.log $work/server-*/p*/server.log; do  # a tail of each server's log
      [ -f "$f" ] && tail -c 100000 "$f" >$OUT/$(echo "${f#$work/}" | tr / - | sed 's/-server.log$//').log
    done
    ;;
  split)
    export_1b
    python3 -m invoke export --set export.source=1b --set export.out=export-1b 2>&1 | quiet $OUT/export.log
    python3 -m pipeline.bench_serve artifacts/export-1b /tmp/serve-work $(echo "${2:-1024}" | tr , " ") --only split \
      2>&1 | tee $OUT/split.jsonl ;;
  *) echo "usage: scripts/remote-gpu/runtime_gpu.sh parity [EXPORT] | parity-1b [STEPS] [cpu] | serve [N,N,...] [both|server|peer] [PROCESSES]" \
       "| split [N,N,...]" >&2; exit 2 ;;
esac
date -u
