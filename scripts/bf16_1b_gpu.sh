#!/usr/bin/env bash
# Issue #5's bf16 gate on a full-size model that has learnt something. The random `1b` preset has
# near-flat text logits, so PyTorch bf16 and Candle disagree on near-ties (97 % tokens); a trained
# model's logits are peaked. This builds the `1b` preset, synthesizes the default espeak dataset,
# trains every weight of the 1B LM for a few hundred steps on the GPU, exports it and runs
# `invoke verify-candle` on it (Candle and PyTorch on the box's CPU, as in CI), then the same
# check on the untrained `1b` export for comparison on the same machine.
#   scripts/bf16_1b_gpu.sh [STEPS [trained-only]]   carry .whl (the wheels of scripts/organism_gpu.sh plus
#                                    espeakng-loader and soxr, and .whl/extra/candle_bridge: the
#                                    abi3 extension built here)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && cp -r .whl/extra/candle_bridge /tmp/site/ && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
steps=${1:-300}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; date -u
set -o pipefail
quiet() { tr "\r" "\n" | grep -v -E "step/s|file/s|utt/s|it/s|codebook/s" | tee "$1" | tail -4; }
[ -f artifacts/checkpoints/1b/config.json ] || time python3 -m invoke checkpoint --preset 1b 2>&1 | quiet $OUT/checkpoint.log
[ -f artifacts/data/train.jsonl ] || time python3 -m invoke data --set data.piper_fraction=0 2>&1 | quiet $OUT/data.log
time python3 -m invoke train --model 1b --set train.method=full --set train.steps=$steps --set train.lr=0.0003 \
  --set train.warmup_steps=30 --set train.compile=false --set train.out=runs/1b-full 2>&1 | quiet $OUT/train.log
python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/runs/1b-full/metrics.jsonl')]
for r in m[::50]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'], r.get('gpu_peak_gib'))"
time python3 -m invoke export --set export.source=$PWD/artifacts/runs/1b-full/final --set export.out=export-1b-trained 2>&1 | quiet $OUT/export.log
time python3 -m invoke verify-candle --model artifacts/export-1b-trained 2>&1 | tee $OUT/verify-trained.txt | tail -12
[ "${2:-}" = trained-only ] && exit 0
time python3 -m invoke export --set export.source=1b --set export.out=export-1b 2>&1 | quiet $OUT/export-random.log
time python3 -m invoke verify-candle --model artifacts/export-1b 2>&1 | tee $OUT/verify-random.txt | tail -12
date -u
