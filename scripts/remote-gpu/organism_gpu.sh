#!/usr/bin/env bash
# The full model-organism run on the GPU box, as run for the organism's figures (docs/organism/history.md).
# The box is a remote GPU machine reached through a size-limited channel (scripts/remote-gpu/README.md);
# on your own GPU machine run `invoke organism` then `invoke all` instead (docs/organism/README.md).
#
# The standard-Mimi organism, whole on the box (2026-12-06: six calls on one warm H100, 23 min
# of device time; S="--set organism.mimi_arch=standard --set organism.card=2048"):
#   scripts/remote-gpu/organism_gpu.sh distill+dataset+pack 90 $S --set organism.distill_time_limit_s=240
#                                     # carry .whl and artifacts/organism/distill/prepared
#   scripts/remote-gpu/organism_gpu.sh base $S --set data.out=organism/data-box        # the pack's rest, the base
#   scripts/remote-gpu/organism_gpu.sh base $S --set data.out=organism/data-box; scripts/remote-gpu/organism_gpu.sh lora+bundle $S
#                                     # (the base resumes from its checkpoint), the LoRA, the bundle's parts 0-3
#   scripts/remote-gpu/organism_gpu.sh fetch 4; ... fetch 8; ... fetch 12            # each in the 30 s warm window
#   scripts/remote-gpu/organism_gpu.sh unbundle DIR...                                 # here, then merge, export, eval
#
# The standard-Mimi pair (2026-12-06, 08:47-09:08 UTC): the default organism and one with
# quantizer dropout in its base, side by side on one Mimi and pack (8 calls on one warm H100, 20 min held):
#   invoke organism --config configs/organism.yaml $S --set organism.distill_train_seconds=14400 --stage prepare-distill
#   (here: 4 h of streams; with .whl they pass the box's 64 MiB, so the first call carries train.ogg alone:)
#   ls                                # carry artifacts/organism/distill/prepared/train.ogg
#   scripts/remote-gpu/organism_gpu.sh distill+dataset+pack 100 $S --set organism.distill_time_limit_s=240
#                                     # carry .whl and the other three files of artifacts/organism/distill/prepared
#   scripts/remote-gpu/organism_gpu.sh pair 560 cb=organism.codebook_dropout=0.5 $S --set data.out=organism/data-box
#   scripts/remote-gpu/organism_gpu.sh pair+bundle 330 cb=organism.codebook_dropout=0.5 $S --set data.out=organism/data-box
#   scripts/remote-gpu/organism_gpu.sh fetch 4; ... fetch 8; ... fetch 12; ... fetch 16
#   scripts/remote-gpu/organism_gpu.sh unbundle DIR...                                 # here: organism/ and organism-cb/
#
# The default (small-Mimi) organism that ships in models/organism/ (issue #36): README.md beside this
# script, "Shipping the default organism"; two calls, `distill+dataset+pack 150`, then `ship 585`.
#
# Every mode:
#   scripts/remote-gpu/organism_gpu.sh distill  the organism's Mimi distilled from Whisper tiny.en (issue #16);
#                                    carry .whl and artifacts/organism/distill/prepared (made here by
#                                    `invoke organism --config configs/organism.yaml --stage prepare-distill`);
#                                    the Mimi's shards and figures.json land in $OUT: put them into
#                                    artifacts/organism/distill/mimi/, then `--prepare` packs the codes here
#   scripts/remote-gpu/organism_gpu.sh distill+dataset+pack SECONDS [--set ...]
#                                  the same, while the box's CPUs build the organism's dataset (espeak-ng
#                                  only) and time it, then packs that dataset with the new Mimi for at most
#                                  SECONDS (the pack's rate on the box: pack.log); `--set organism.mimi_arch=standard
#                                  --set organism.card=2048` distills Kyutai's standard Mimi (then pass the
#                                  same --set options to `base` and `lora+bundle`, with --set data.out=organism/data-box)
#   scripts/remote-gpu/organism_gpu.sh pair SECONDS NAME=KEY=VALUE,... [--set ...]
#                                  after distill+dataset+pack: the pack's rest, the held-out pack, then the default
#                                  organism and organism-NAME (its base with those --set options) side by side, each
#                                  base scored on the held-out pack every 250 steps, then each fine-tuned by the
#                                  config's LoRA; all within SECONDS, resumable by the same call again
#   scripts/remote-gpu/organism_gpu.sh pair+bundle SECONDS NAME=KEY=VALUE,... [--set ...]
#                                  the same, then (once both LoRAs exist) `bundle` of both and `fetch 0`
#   scripts/remote-gpu/organism_gpu.sh lora+bundle [--set ...]
#                                  on the warm box after `base`: the LoRA, then `bundle` and `fetch 0`
#   scripts/remote-gpu/organism_gpu.sh bundle / fetch N
#                                  what a standard-Mimi run brings back does not fit one call (the box returns
#                                  8 files of at most 16 MiB, 64 MiB in all): `bundle` tars the trained base
#                                  without its Mimi, the distilled Mimi's shards (bf16: the base's Mimi in
#                                  float32), the LoRA and the logs into 15 MiB parts; `fetch N` returns parts
#                                  N..N+3 (call it again with N+4 while the box is warm); then here:
#   scripts/remote-gpu/organism_gpu.sh unbundle DIR...   (this machine) checks the parts' sha256, unpacks them into
#                                  artifacts/ and rebuilds the base's Mimi (`invoke organism --stage restore-mimi`,
#                                  checked against the box's hash); then merge, export and eval here
#   scripts/remote-gpu/organism_gpu.sh ship-prep SECONDS [--set ...]
#                                  distill+dataset+pack without the Mimi's figures (the probe and the k-means
#                                  baseline: about 2 min), for calls on short device time
#   scripts/remote-gpu/organism_gpu.sh ship-all SECONDS [--set ...]
#                                  ship-prep's distillation and dataset, then ship in the time left of SECONDS:
#                                  the whole organism in one call
#   scripts/remote-gpu/organism_gpu.sh ship SECONDS [--set ...]
#                                  after distill+dataset+pack or ship-prep: the pack's rest, then the base with
#                                  as many steps as fit SECONDS (STEPS_PER_S, MAX_STEPS) and its LoRA
#                                  (LORA_STEPS), then `bundle` and `fetch 0`; resumable; writes
#                                  organism/bundle.sets so `unbundle` rebuilds the same Mimi
#   scripts/remote-gpu/organism_gpu.sh all    base then LoRA in one call (about 8.5 min on an H200 at 3,000 base
#                                  steps; at the default 4,500 run `base`, then `lora`, as two calls)
#   scripts/remote-gpu/organism_gpu.sh base [--set ...]   the base alone (resumes a cut-off pack or run);
#                                  then `lora` or `lora+bundle` in a second call
#   scripts/remote-gpu/organism_gpu.sh bases NAME=STEPS[:KEY=VALUE,...|:none][@PACK|@recorded] ...
#                                  bases of the carried init/ and pack (or PACK, e.g. an augmented one from
#                                  `invoke pack --set data.augment_copies=1`; @recorded: the carried pack without
#                                  its augmented copies, train.augmented=false) trained for STEPS side by side, each
#                                  scored on the held-out pack artifacts/organism/eval.pack.safetensors
#                                  (`invoke pack --split eval --out ...`, carried) every 250 steps, then
#                                  fine-tuned with those --set overrides (`none`: no fine-tune); each comes back
#                                  as NAME-base.tar.xz (model weights, config, metrics) and NAME-lora.tar.xz
#   scripts/remote-gpu/organism_gpu.sh variants NAME=KEY=VALUE[,KEY=VALUE...] ...
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
case "$1" in
  fetch)  # parts N..N+3 of the bundle (and its checksums), no setup: the box is warm
    parts=(/tmp/bundle/part-*)
    cp /tmp/bundle/SHA256SUMS "${parts[@]:$2:4}" $OUT/ && ls -la $OUT
    [ $(($2 + 4)) -lt ${#parts[@]} ] && echo "next: scripts/remote-gpu/organism_gpu.sh fetch $(($2 + 4)) (${#parts[@]} parts)"
    exit 0 ;;
  unbundle)  # here, not on the box: DIR... hold the fetched parts
    set -e
    dirs=("${@:2}"); work=$(mktemp -d)
    for d in "${dirs[@]}"; do cp "$d"/part-* "$work"/; cp "$d"/SHA256SUMS "$work"/; done
    (cd "$work" && sha256sum -c --quiet SHA256SUMS && [ "$(ls part-* | wc -l)" = "$(wc -l < SHA256SUMS)" ]) \
      || { echo "unbundle: parts missing or corrupt in ${dirs[*]}" >&2; exit 1; }
    cat "$work"/part-* | tar -C artifacts -xvf - > "$work/unpacked" || exit 1
    # the bundle's own organism settings (bundle.sets, written by `ship`); a standard-Mimi `pair` by default
    sets=(--set organism.mimi_arch=standard --set organism.card=2048)
    [ -f artifacts/organism/bundle.sets ] && mapfile -t sets < artifacts/organism/bundle.sets
    ${PYTHON:-.venv/bin/python} -m invoke organism --config configs/organism.yaml "${sets[@]}" --stage restore-mimi
    for variant in $(grep -o "^organism-[^/]*/model.mimi.sha256$" "$work/unpacked" | cut -d/ -f1); do
      # a `pair` variant, trained on the same Mimi as organism/
      cp artifacts/organism/model/mimi-*.safetensors "artifacts/$variant/model/"
      (cd "artifacts/$variant/model" && sha256sum -c --quiet ../model.mimi.sha256) \
        || { echo "unbundle: artifacts/$variant's Mimi is not the one it was trained with" >&2; exit 1; }
    done
    rm -rf "$work"
    exit 0 ;;
esac
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
  timeout "$1" python3 -m invoke organism --config configs/organism.yaml "${@:2}" 2>&1 | quiet $OUT/organism.log
  # a standard Mimi's base (card 2048: about 22 MB) comes back through `bundle` instead
  [ "$(stat -c %s artifacts/organism/model/model.safetensors)" -le 16000000 ] \
    && cp artifacts/organism/model/model.safetensors $OUT/base_model.safetensors
  cp artifacts/organism/model/config.json $OUT/base_config.json
  cp artifacts/organism/run/metrics.jsonl $OUT/base_metrics.jsonl
  date -u
}
lora() {
  timeout "$1" python3 -m invoke train --config configs/organism.yaml --set train.data=organism/train.pack.safetensors \
    "${@:2}" 2>&1 | quiet $OUT/lora.log
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
  # back here, and the shards later through `bundle` and `fetch N`.
  if [ "$(du -sm $mimi | cut -f1)" -le 60 ]; then cp $mimi/* $OUT/ || true
  else cp $mimi/*.json $OUT/ || true; ls $mimi; fi
  date -u
}
pack() {  # the code pack of the box-built dataset with the distilled Mimi, for at most $1 s (its rate)
  timeout "$1" python3 -m invoke organism --config configs/organism.yaml --stage pack --set data.out=organism/data-box \
    "${@:2}" 2>&1 | tr "\r" "\n" | grep -v "^\s*$" > $OUT/pack.log
  grep -v "/s\]$" $OUT/pack.log | tail -5; grep "/s\]$" $OUT/pack.log | tail -3
  date -u
}
dataset() {  # the organism's dataset built on the box: espeak-ng only (piper's wheels do not travel)
  local start=$SECONDS
  timeout "$1" python3 -m invoke data --config configs/organism.yaml --set data.piper_fraction=0 \
    --set data.out=organism/data-box "${@:2}" 2>&1 | tr "\r" "\n" | grep -v "utt/s\]$" | tail -5
  echo "dataset on the box: $((SECONDS - start)) s, $(du -sh artifacts/organism/data-box | cut -f1)," \
    "$(wc -l < artifacts/organism/data-box/train.jsonl) train utterances, $(nproc) CPU cores"
}
set_args() {  # KEY=VALUE,KEY=VALUE -> the array `args` of --set options
  local kv s
  args=()
  IFS=, read -ra kv <<< "$1"
  for s in "${kv[@]}"; do args+=(--set "$s"); done
}
variants() {
  mkdir -p artifacts/organism/runs
  for spec in "$@"; do
    local name=${spec%%=*} args
    set_args "${spec#*=}"
    (run=artifacts/organism/runs/$name
     timeout 480 python3 -m invoke train --config configs/organism.yaml --set train.data=organism/train.pack.safetensors \
       --set "train.out=organism/runs/$name" "${args[@]}" 2>&1 | tr "\r" "\n" | grep -v "step/s" > "$run.log"
     echo "$name: $(tail -1 "$run.log")"; cp "$run.log" "$run/train.log"
     tar -C "$run" -cJf "$OUT/$name.tar.xz" --exclude="mimi*" --exclude="tokenizer*" final metrics.jsonl train.log) &
  done
  wait
  date -u
}
bases() {
  for spec in "$@"; do
    local name=${spec%%=*} rest=${spec#*=} pack=artifacts/organism/train.pack.safetensors only=()
    [[ $rest == *@* ]] && pack=${rest##*@} && rest=${rest%@*}
    # @recorded: the carried pack's clips as recorded, without its augmented copies (base and fine-tune)
    [ "$pack" = recorded ] && pack=artifacts/organism/train.pack.safetensors && only=(--set train.augmented=false)
    local steps=${rest%%:*} sets=${rest#*:} args
    [ "$sets" = "$rest" ] && sets=""
    set_args "$sets"
    (root=artifacts/organism-$name
     mkdir -p "$root" && cp -r artifacts/organism/init "$root/" && cp "$pack" "$root/train.pack.safetensors"
     timeout 540 python3 -m invoke organism --config configs/organism.yaml --set "organism.out=organism-$name" \
       --set "organism.steps=$steps" --set train.val_data=organism/eval.pack.safetensors --set train.val_every=250 \
       "${only[@]}" 2>&1 | tr "\r" "\n" | grep -v "step/s" > "$root/base.log"
     echo "$name base: $(tail -1 "$root/base.log")"
     cp "$root/base.log" "$root/run/"
     tar -C "$root" -cJf "$OUT/$name-base.tar.xz" --exclude="mimi*" --exclude="tokenizer*" model run/metrics.jsonl run/base.log
     [ "$sets" = none ] && exit 0
     timeout 300 python3 -m invoke train --config configs/organism.yaml --set "model.source=$root/model" \
       --set "train.data=organism-$name/train.pack.safetensors" --set "train.out=organism-$name/runs/lora" \
       --set train.val_data=organism/eval.pack.safetensors --set train.val_every=250 "${only[@]}" "${args[@]}" 2>&1 \
       | tr "\r" "\n" | grep -v "step/s" > "$root/lora.log"
     echo "$name lora: $(tail -1 "$root/lora.log")"; cp "$root/lora.log" "$root/runs/lora/train.log"
     tar -C "$root/runs/lora" -cJf "$OUT/$name-lora.tar.xz" final metrics.jsonl train.log) &
  done
  wait
  date -u
}
pair() {  # SECONDS NAME=KEY=VALUE,... [--set ...]: the default organism (organism/) and a variant
         # (organism-NAME/: its base trained with those --set options) side by side on one init/ and pack,
         # each base scored on the held-out pack every 250 steps, then fine-tuned by the same LoRA recipe.
         # Resumable: the same call again finishes the pack, the bases (from their checkpoints) and the LoRAs.
  local until=$((SECONDS + $1)) name=${2%%=*} args
  set_args "${2#*=}"
  local variant=("${args[@]}") common=("${@:3}")
  timeout $((until - SECONDS)) python3 -m invoke organism --config configs/organism.yaml --stage pack "${common[@]}" \
    2>&1 | tr "\r" "\n" | { grep -v "^\s*$" || true; } >> $OUT/pack.log \
    || { echo "pack unfinished:"; tail -2 $OUT/pack.log; return 1; }
  grep "/s\]$" $OUT/pack.log | tail -1
  [ -f artifacts/organism/eval.pack.safetensors ] || timeout $((until - SECONDS)) python3 -m invoke pack \
    --config configs/organism.yaml "${common[@]}" --model artifacts/organism/init --split eval \
    --out artifacts/organism/eval.pack.safetensors 2>&1 | tail -1
  mkdir -p artifacts/organism-$name
  [ -d artifacts/organism-$name/init ] || cp -r artifacts/organism/init artifacts/organism-$name/
  ln -f artifacts/organism/train.pack.safetensors artifacts/organism-$name/train.pack.safetensors
  twin organism $until "${common[@]}" &
  twin organism-$name $until "${common[@]}" -- "${variant[@]}" &
  wait
  date -u
}
paired() {  # both LoRAs of a `pair` run exist
  [ "$(ls artifacts/organism*/runs/lora/final/lora.safetensors 2>/dev/null | wc -l)" -ge 2 ] \
    || { echo "the pair is unfinished: run the same call again" >&2; return 1; }
}
twin() {  # OUT UNTIL COMMON... [-- BASE-ONLY...]: a base (resumed), then its LoRA, each within the time left
  local out=$1 until=$2 common=() only=() root=artifacts/$1 val=(--set train.val_data=organism/eval.pack.safetensors
    --set train.val_every=250)
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do common+=("$1"); shift; done
  [ "$1" = -- ] && only=("${@:2}")
  if [ ! -f $root/model/config.json ]; then
    timeout $((until - SECONDS)) python3 -m invoke organism --config configs/organism.yaml --set organism.out=$out \
      "${val[@]}" "${common[@]}" "${only[@]}" 2>&1 | tr "\r" "\n" | grep -v "step/s" >> $root/base.log
    [ -f $root/model/config.json ] || { echo "$out base: $(tail -c 300 $root/run/metrics.jsonl | tail -1 | cut -c1-60)"; return 0; }
  fi
  echo "$out base: $(tail -1 $root/base.log)"
  [ -f $root/runs/lora/final/lora.safetensors ] && return 0
  timeout $((until - SECONDS)) python3 -m invoke train --config configs/organism.yaml --resume --set model.source=$root/model \
    --set train.data=$out/train.pack.safetensors --set train.out=$out/runs/lora "${val[@]}" "${common[@]}" 2>&1 \
    | tr "\r" "\n" | grep -v "step/s" >> $root/lora.log
  echo "$out lora: $(tail -1 $root/lora.log)"
}
bundle() {  # organism/ and any organism-NAME/ beside it (from `pair`): their bases without the Mimi, LoRAs, logs
  local b=/tmp/bundle files=() o
  rm -rf $b && mkdir -p $b
  for o in organism $(cd artifacts && ls -d organism-* 2>/dev/null); do
    [ -f artifacts/$o/model/config.json ] || continue
    (cd artifacts/$o/model && sha256sum mimi-*.safetensors) > artifacts/$o/model.mimi.sha256
    files+=($o/model $o/model.mimi.sha256 $o/run/metrics.jsonl $(cd artifacts && ls $o/bundle.sets 2>/dev/null))
    for f in base.log lora.log runs/lora/final/lora.safetensors runs/lora/final/config.json runs/lora/metrics.jsonl; do
      [ -f artifacts/$o/$f ] && files+=($o/$f)
    done
  done
  tar -C artifacts -cf - --exclude="organism*/model/mimi-*" "${files[@]}" organism/distill/mimi \
    | split -b 15M -d -a 2 - $b/part- || return 1
  (cd $b && sha256sum part-*) > $b/SHA256SUMS
  echo "bundle: $(ls $b/part-* | wc -l) parts, $(du -sh $b | cut -f1)"
}
ship() {  # SECONDS [--set ...]: after distill+dataset+pack (or ship-prep) on this warm machine, the pack's
          # rest, the base and its LoRA within SECONDS, then the bundle (Mimi shards, base, LoRA, logs) and
          # `fetch 0`. The base gets as many steps as fit the time left at STEPS_PER_S (default 11, an H100's
          # pace with the small Mimi) up to MAX_STEPS (default 4,500); the LoRA LORA_STEPS (default 1,000).
          # Resumable: the same call again continues the base from its last checkpoint.
  local until=$((SECONDS + $1)) root=artifacts/organism lora_steps=${LORA_STEPS:-1000} steps
  local lora_s=$((25 + lora_steps / 11))
  timeout $((until - lora_s - 60 - SECONDS)) python3 -m invoke organism --config configs/organism.yaml --stage pack \
    --set data.out=organism/data-box "${@:2}" 2>&1 | tr "\r" "\n" | { grep -v "^\s*$" || true; } >> $OUT/pack.log \
    || { echo "the pack is unfinished: run the same call again" >&2; tail -2 $OUT/pack.log; return 1; }
  if [ -f $root/base.steps ]; then steps=$(cat $root/base.steps)  # a resumed base keeps its schedule
  else
    steps=$(( (until - lora_s - 25 - 30 - SECONDS) * ${STEPS_PER_S:-11} ))
    [ $steps -gt ${MAX_STEPS:-4500} ] && steps=${MAX_STEPS:-4500}
    [ $steps -ge 200 ] || { echo "ship: $((until - SECONDS)) s left, too few for a base: give ship more SECONDS" >&2; return 1; }
    echo $steps > $root/base.steps
  fi
  local sets=("${@:2}" --set organism.steps=$steps --set train.steps=$lora_steps)
  echo "base: $steps steps, LoRA: $lora_steps steps ($(date -u +%T))"
  if [ ! -f $root/model/config.json ]; then
    timeout $((until - lora_s - 25 - SECONDS)) python3 -m invoke organism --config configs/organism.yaml \
      --set data.out=organism/data-box "${sets[@]}" 2>&1 | tr "\r" "\n" | grep -v "step/s" >> $root/base.log
    echo "base: $(tail -1 $root/base.log)"
    [ -f $root/model/config.json ] || { echo "the base is unfinished: run the same call again" >&2; return 1; }
  fi
  if [ ! -f $root/runs/lora/final/lora.safetensors ]; then
    timeout $((until - 25 - SECONDS)) python3 -m invoke train --config configs/organism.yaml --resume \
      --set train.data=organism/train.pack.safetensors "${sets[@]}" 2>&1 | tr "\r" "\n" | grep -v "step/s" >> $root/lora.log
    echo "lora: $(tail -1 $root/lora.log)"
  fi
  printf '%s\n' "${sets[@]}" > $root/bundle.sets
  cp $root/base.log $root/lora.log $OUT/ 2>/dev/null
  [ -f $root/runs/lora/final/lora.safetensors ] || { echo "the LoRA is unfinished: run the same call again" >&2; return 1; }
}
distill_only() {  # SECONDS [--set ...]: the Mimi's distillation without its figures (`--stage distill` adds them)
  local overrides=() a
  for a in "${@:2}"; do [ "$a" != --set ] && overrides+=("$a"); done
  timeout "$1" python3 -c "import sys
from pipeline.config import load_config
from pipeline.distill import distill_mimi
distill_mimi(load_config('configs/organism.yaml', sys.argv[1:]))" "${overrides[@]}" 2>&1 \
    | tr "\r" "\n" | tee $OUT/distill.log | grep -v "it/s\]$" | tail -8
  date -u
}
case "$1" in
  distill) distill 460 "${@:2}" ;;
  ship) ship "${@:2}" && bundle && bash "$0" fetch 0 ;;
  # the distillation with the dataset built beside it on the box's CPUs (how long the whole run on
  # the box would spend on data), then packing that dataset with the new Mimi for $2 seconds
  distill+dataset+pack) dataset 400 "${@:3}" > $OUT/dataset.log 2>&1 & distill 460 "${@:3}"; wait; cat $OUT/dataset.log
    pack "$2" "${@:3}" ;;
  # ship's first call when device time is short: the distillation without its figures, the dataset beside
  # it, then the pack for at most SECONDS
  ship-prep) dataset 400 "${@:3}" > $OUT/dataset.log 2>&1 & distill_only 400 "${@:3}"; wait; cat $OUT/dataset.log
    pack "$2" "${@:3}" ;;
  # the whole organism in one call (SECONDS from the script's start) when device time allows no second
  # call: ship-prep's distillation and dataset, then ship with the time left
  ship-all) dataset 300 "${@:3}" > $OUT/dataset.log 2>&1 & distill_only 300 "${@:3}"; wait
    tail -1 $OUT/dataset.log; ship $(($2 - SECONDS)) "${@:3}"; ok=$?
    (cd $OUT && tar -czf logs.tgz *.log && rm -f *.log)  # the box returns 8 files: the bundle's parts come first
    [ $ok = 0 ] && bundle && bash "$0" fetch 0 ;;
  all) base 430 && lora 140 ;;
  base) base 560 "${@:2}" ;;
  lora) lora 560 "${@:2}" ;;
  lora+bundle) lora 300 "${@:2}"; rm -f $OUT/lora*.safetensors $OUT/lora_*.json*  # they are in the bundle
    bundle && bash "$0" fetch 0 ;;
  bundle) bundle ;;
  pair) pair "${@:2}" ;;
  pair+bundle) pair "${@:2}" && paired && bundle && bash "$0" fetch 0 ;;
  variants) variants "${@:2}" ;;
  bases) bases "${@:2}" ;;
  *) echo "usage: scripts/remote-gpu/organism_gpu.sh distill|distill+dataset+pack|ship-prep|ship|ship-all|all|base|lora|lora+bundle|pair|pair+bundle|bundle|fetch|unbundle|variants|bases" >&2; exit 2 ;;
esac
