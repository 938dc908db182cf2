#!/usr/bin/env bash
# The full model-organism run on the GPU box (device tool), as run for the README figures, in
# two calls (each fits the box's 10-minute limit):
#   scripts/organism_gpu.sh base   carry .whl, artifacts/organism/init, artifacts/organism/train.pack.safetensors
#   scripts/organism_gpu.sh lora   carry .whl, artifacts/organism/model, artifacts/organism/train.pack.safetensors
# The pack and init/ are made here by `invoke organism --config configs/organism.yaml --prepare`;
# put $OUT's base_model.safetensors and base_config.json into a copy of init/ named model/
# between the calls. Results land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u
set -o pipefail
quiet() { tr "\r" "\n" | grep -v "step/s" | tee "$1" | tail -5; }
if [ "$1" = base ]; then
  timeout 560 python3 -m invoke organism --config configs/organism.yaml 2>&1 | quiet $OUT/organism.log
  python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/organism/run/metrics.jsonl')]
for r in m[::300]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'], r.get('gpu_peak_gib'))"
  cp artifacts/organism/model/model.safetensors $OUT/base_model.safetensors
  cp artifacts/organism/model/config.json $OUT/base_config.json
  cp artifacts/organism/run/metrics.jsonl $OUT/base_metrics.jsonl
else
  timeout 560 python3 -m invoke train --config configs/organism.yaml --set train.data=organism/train.pack.safetensors 2>&1 | quiet $OUT/lora.log
  python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/organism/runs/lora/metrics.jsonl')]
for r in m[::100]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'])"
  cp artifacts/organism/runs/lora/final/lora.safetensors $OUT/
  cp artifacts/organism/runs/lora/final/config.json $OUT/lora_config.json
  cp artifacts/organism/runs/lora/metrics.jsonl $OUT/lora_metrics.jsonl
fi
date -u
