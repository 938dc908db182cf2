#!/usr/bin/env bash
# Issue #17: the training-step benchmark on the GPU box, peers eager and compiled against ours,
# with a torch.profiler table per row (CUDA time per op) to see where each step spends its time.
#   scripts/bench_train_gpu.sh      carry .whl (moshi, invoke and the others of scripts/organism_gpu.sh)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
python3 -c "import torch; print('torch', torch.__version__)"
time python3 -m pipeline.bench "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench-train.jsonl"
date -u
