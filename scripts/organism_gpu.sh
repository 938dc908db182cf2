#!/usr/bin/env bash
# The full model-organism run on the GPU box (device tool), as run for the README figures:
#   scripts/organism_gpu.sh distill  the organism's Mimi distilled from Whisper tiny.en (issue #16);
#                                    carry .whl and artifacts/organism/distill/prepared (made here by
#                                    `invoke organism --config configs/organism.yaml --stage prepare-distill`);
#                                    the Mimi's shards and figures.json land in $OUT: put them into
#                                    artifacts/organism/distill/mimi/, then `--prepare` packs the codes here
#   scripts/organism_gpu.sh distill+dataset+pack SECONDS [--set ...]
#                                  the same, while the box's CPUs build the organism's dataset (espeak-ng
#                                  only) and time it, then packs that dataset with the new Mimi for at most
#                                  SECONDS (the pack's rate on the box: pack.log); `--set organism.mimi_arch=standard
#                                  --set organism.card=2048` distills Kyutai's standard Mimi, whose shards come
#                                  back over several calls (`shards N`, below)
#   scripts/organism_gpu.sh shards N
#                                  on the warm box, the distilled Mimi's shards N..N+3 (4 a call: the box returns
#                                  8 files of at most 16 MiB); put them into artifacts/organism/distill/mimi/
#   scripts/organism_gpu.sh all    base then LoRA in one call (about 8.5 min on an H200 at 3,000 base
#                                  steps; at the default 4,500 run `base`, then `lora`, as two calls)
#   scripts/organism_gpu.sh base   the base alone; then `lora` in a second call
#   scripts/organism_gpu.sh bases NAME=STEPS[:KEY=VALUE,...|:none][@PACK|@recorded] ...
#                                  bases of the carried init/ and pack (or PACK, e.g. an augmented one from
#                                  `invoke pack --set data.augment_copies=1`; @recorded: the carried pack without
#                                  its augmented copies, train.augmented=false) trained for STEPS side by side, each
#                                  scored on the held-out pack artifacts/organism/eval.pack.safetensors
#                                  (`invoke pack --split eval --out ...`, carried) every 250 steps, then
#                                  fine-tuned with those --set overrides (`none`: no fine-tune); each comes back
#                                  as NAME-base.tar.xz (model weights, config, metrics) and NAME-lora.tar.xz
#   scripts/organism_gpu.sh variants NAME=KEY=VALUE[,KEY=VALUE...] ...
#                                  fine-tunes of the carried base with those --set overrides, run side by side
#                                  on the one GPU (the organism is too small to fill it); carry .whl (without
#                                  extra/ and espeak: 64 MiB), artifacts/organism/model and the pack; each comes
#                                  back as NAME.tar.xz (final/ without the Mimi and tokenizer, metrics.jsonl,
#                                  train.log): untar into artifacts/organism/runs/NAME, then
#                                  `invoke merge --set merge.adapter=organism/runs/NAME ...` here
# carry: .whl, artifacts/organism/init, artifacts/organism/train.pack.safetensors (and, for
# `lora` alone, artifacts/organism/model). With the augmented pack (21 MB) init/ (42 MB) no longer
# fits in the 64 MiB: carry artifacts/organism/init.tar.xz instead (20 MB: the Mimi's float32 copy of
# bf16 weights halves under xz), made by `tar -C artifacts/organism -cJf artifacts/organism/init.tar.xz init`;
# the script unpacks it. The pack and init/ are made here by
# `invoke organism --config configs/organism.yaml --prepare`; .whl holds the moshi, invoke and
# num2words wheels (the box has the rest). Results land in $OUT (8 files: the box's limit); put
# base_model.safetensors and base_config.json into a copy of init/ named model/, and lora.* into
# runs/lora/final/, then merge, export and eval here.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
cp -r .whl/pkgs/. /tmp/site/ 2>/dev/null  # packages with no wheel on PyPI (openai-whisper is an sdist)
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
if [ -f artifacts/organism/init.tar.xz ] && [ ! -d artifacts/organism/init ]; then
  tar -C artifacts/organism -xJf artifacts/organism/init.tar.xz || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u
set -o pipefail
quiet() { tr "\r" "\n" | grep -v "step/s" | tee "$1" | tail -4; }
base() {
  timeout "$1" python3 -m invoke organism --config configs/organism.yaml 2>&1 | quiet $OUT/organism.log
  cp artifacts/organism/model/model.safetensors $OUT/base_model.safetensors
  cp artifacts/organism/model/config.json $OUT/base_config.json
  cp artifacts/organism/run/metrics.jsonl $OUT/base_metrics.jsonl
  date -u
}
lora() {
  timeout "$1" python3 -m invoke train --config configs/organism.yaml --set train.data=organism/train.pack.safetensors \
    2>&1 | quiet $OUT/lora.log
  cp artifacts/organism/runs/lora/final/lora.safetensors $OUT/
  cp artifacts/organism/runs/lora/final/config.json $OUT/lora_config.json
  cp artifacts/organism/runs/lora/metrics.jsonl $OUT/lora_metrics.jsonl
  date -u
}
distill() {
  timeout "$1" python3 -m invoke organism --config configs/organism.yaml --stage distill "${@:2}" 2>&1 \
    | tr "\r" "\n" | tee $OUT/distill.log | grep -v "it/s\]$" | tail -30
  local mimi=artifacts/organism/distill/mimi
  # The standard Mimi's shards (about 190 MB in bf16) do not fit one call: then its figures come
  # back, and its shards over the next calls on the warm box (`shards N`).
  if [ "$(du -sm $mimi | cut -f1)" -le 60 ]; then cp $mimi/* $OUT/ || true
  else cp $mimi/*.json $OUT/ || true; ls $mimi; fi
  date -u
}
shards() {  # shards N: the Mimi's shards N, N+1, ... (and heads.safetensors last), 4 a call:
            # the box returns 8 files of at most 16 MiB, 64 MiB in all; shards are 15 MiB
  local files=(artifacts/organism/distill/mimi/mimi-*.safetensors artifacts/organism/distill/mimi/heads.safetensors)
  cp "${files[@]:$1:4}" $OUT/ && ls $OUT
  [ $(($1 + 4)) -lt ${#files[@]} ] && echo "next: scripts/organism_gpu.sh shards $(($1 + 4)) (${#files[@]} files)"
}
case "$1" in
  distill) distill 420 "${@:2}" ;;
  # the distillation with the dataset built beside it on the box's CPUs (how long the whole run on
  # the box would spend on data), then packing that dataset with the new Mimi for $2 seconds
  distill+dataset+pack) dataset 400 > $OUT/dataset.log 2>&1 & distill 420 "${@:3}"; wait; cat $OUT/dataset.log
    pack "$2" "${@:3}" ;;
  all) base 430 && lora 140 ;;
  base) base 560 ;;
  lora) lora 560 ;;
  shards) shards "$2" ;;
  variants) variants "${@:2}" ;;
  bases) bases "${@:2}" ;;
  *) echo "usage: scripts/organism_gpu.sh distill|distill+dataset+pack|shards|all|base|lora|variants|bases" >&2; exit 2 ;;
esac
