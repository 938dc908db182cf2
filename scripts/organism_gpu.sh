#!/usr/bin/env bash
# The full model-organism run on the GPU box (device tool), as run for the README figures:
# base from scratch (invoke organism) then the word-form LoRA (invoke train), both from the code pack.
# Carry: .whl (wheels), artifacts/organism/init, artifacts/organism/train.pack.safetensors
# (made here by `invoke organism --config configs/organism.yaml --prepare`). Results land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u
set -o pipefail
timeout 480 python3 -m invoke organism --config configs/organism.yaml 2>&1 | tr "\r" "\n" | grep -v "step/s" | tee $OUT/organism.log | tail -5
python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/organism/run/metrics.jsonl')]
for r in m[::400]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'], r.get('gpu_peak_gib'))"
cp artifacts/organism/model/model.safetensors $OUT/base_model.safetensors; cp artifacts/organism/model/config.json $OUT/base_config.json; cp artifacts/organism/run/metrics.jsonl $OUT/base_metrics.jsonl
date -u
timeout 240 python3 -m invoke train --config configs/organism.yaml --set train.data=organism/train.pack.safetensors 2>&1 | tr "\r" "\n" | grep -v "step/s" | tee $OUT/lora.log | tail -5
python3 -c "
import json; m=[json.loads(l) for l in open('artifacts/organism/runs/lora/metrics.jsonl')]
for r in m[::100]+m[-1:]: print(r['step'], round(r['text_loss'],3), round(r['head_loss'],3), r['frames_per_s'])"
cp artifacts/organism/runs/lora/final/lora.safetensors $OUT/; cp artifacts/organism/runs/lora/final/config.json $OUT/lora_config.json; cp artifacts/organism/runs/lora/metrics.jsonl $OUT/lora_metrics.jsonl
date -u
