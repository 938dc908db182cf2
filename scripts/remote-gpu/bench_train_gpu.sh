#!/usr/bin/env bash
# Issue #17: the training-step benchmark on the GPU box, peers eager and compiled against ours, with a
# torch.profiler table per row (CUDA time per op) to see where each step spends its time. The box is a
# remote GPU machine (README.md here); on your own GPU machine run `invoke bench --what train` and the
# `invoke train` loop below directly.
#   scripts/remote-gpu/bench_train_gpu.sh        carry .whl (moshi, invoke and the others of scripts/remote-gpu/organism_gpu.sh)
#   scripts/remote-gpu/bench_train_gpu.sh loop [STEPS] ["true false"]
#                                     `invoke train --model 1b` (rank 128, batch 8 x 30 s, compiled) on the
#                                     default espeak dataset for STEPS (80), then the step benchmark of the same
#                                     configuration and the compiled peer in a fresh process, then the loop's
#                                     median step over steps 11+ against the benchmark's step (issue #17);
#                                     the third argument: the train.prefetch values to run the loop with;
#                                     BENCH_STEP=FILE reuses that step benchmark (an earlier call's bench-step.jsonl);
#                                     PROFILE=true adds the loop's op table and chrome trace of steps 21-23
#                                     (train.profile); MODES="auto default" runs the loop with each train.compile_mode
#                                     (auto, the default: CUDA graphs on one GPU), each against the same mode's step
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u
python3 -c "import torch; print('torch', torch.__version__)"
if [ "$1" = loop ]; then
  export TQDM_MININTERVAL=30
  python3 -m invoke checkpoint --preset 1b 2>&1 | tail -1
  time python3 -m invoke data --set data.piper_fraction=0 2>&1 | tr "\r" "\n" | tail -1
  for mode in ${MODES:-auto}; do
  for prefetch in ${3:-true}; do  # e.g. "true false": the loop with and without the batch thread
    name=$mode-prefetch-$prefetch
    time python3 -m invoke train --model 1b --set train.lora_rank=128 --set train.steps="${2:-80}" \
      --set train.warmup_steps=5 --set train.out=runs/1b-loop-$name --set train.prefetch=$prefetch \
      --set train.compile_mode=$mode --set train.profile="${PROFILE:-false}" 2>&1 | tr "\r" "\n" | tail -2
    cp artifacts/runs/1b-loop-$name/metrics.jsonl "$OUT/loop-metrics-$name.jsonl"
    cp artifacts/runs/1b-loop-$name/profile.txt "$OUT/loop-profile-$name.txt" 2>/dev/null
    cp artifacts/runs/1b-loop-$name/trace.json.gz "$OUT/loop-trace-$name.json.gz" 2>/dev/null
  done
  done
  [ -n "$BENCH_STEP" ] && cp "$BENCH_STEP" "$OUT/bench-step.jsonl"
  [ -f "$OUT/bench-step.jsonl" ] || time python3 -m pipeline.bench compiled 2>&1 | grep "^{" | tee "$OUT/bench-step.jsonl"
  for f in "$OUT"/loop-metrics-*.jsonl; do python3 - "$OUT" "$f" <<'PY' | tee -a "$OUT/loop-vs-step.jsonl"; done
import json, statistics, sys
out = sys.argv[1]
loop = [json.loads(l) for l in open(sys.argv[2])]
steady = [r for r in loop if r["step"] > 10]
rows = {r["what"]: r for r in map(json.loads, open(f"{out}/bench-step.jsonl"))}
name = "train_ours_compiled" if "-default-" in sys.argv[2] else "train_ours_compiled_cudagraphs"  # auto: CUDA graphs
name = name if name in rows else "train_ours_compiled"  # a reused step benchmark may lack the CUDA-graph row
ours = rows[name]
step_s = statistics.median(r["step_s"] for r in steady)
print(json.dumps({"what": "train_loop_vs_step", "metrics": sys.argv[2].rsplit("/", 1)[-1], "steps": [steady[0]["step"], steady[-1]["step"]],
                  "loop_step_s_p50": step_s, "loop_step_s_max": max(r["step_s"] for r in steady),
                  "loop_frames_per_s_p50": statistics.median(r["frames_per_s"] for r in steady),
                  "loop_padding_pct_max": max(r["padding_pct"] for r in steady),
                  "bench_row": name, "bench_step_s": ours["step_s"], "loop_vs_bench": round(ours["step_s"] / step_s, 3),
                  "compiled_peer_step_s": min(r["step_s"] for w, r in rows.items() if w.startswith("train_peer_compiled"))}))
PY
else
  time python3 -m pipeline.bench "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench-train.jsonl"
fi
date -u
