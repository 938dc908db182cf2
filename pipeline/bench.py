"""bench: training throughput at the real stt-1b-en_fr shape, ours against the moshi-module peer.

Both run in the same process on the same card with random weights (speed depends on shapes):
- peer: moshi's LMModel with moshi's LoRA trained plainly (bf16 weights and LoRA, AdamW,
  text cross-entropy), as shared/research/peer_moshi_lora.py measured it; and the same peer
  with one line more, `torch.compile` on its loss function (`train_peer_compiled`), the peer a
  user who knows torch.compile would run;
- ours: the train stage's own step, `pipeline.train.train_step` on a trainer built by
  `make_trainer` with the default `train` config (float32 LoRA under bf16 autocast, text loss
  with padding weights, supervised pause-head loss, gradient clipping).

Each prints frames/s (80 ms frames of audio per second), peak GPU memory and model FLOP/s
counted as 4 x matmul parameters per frame plus attention (frozen base: forward + input
gradients), and MFU against the card's measured bf16 matmul rate.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import StageError

from .constants import FRAME_RATE


def _config(preset: str) -> dict:
    from .presets import PRESETS, lm_config

    cfg = lm_config(PRESETS[preset], preset, 0)
    return {k: v for k, v in cfg.items() if k not in ("model_id", "lm_gen_config", "stt_config", "model_type",
                                                      "mimi_name", "tokenizer_name", "mimi_config_name")}


def matmul_rate(device: str = "cuda", n: int = 8192) -> float:
    """Measured bf16 matmul FLOP/s of this card (the MFU denominator)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def flops_per_frame(cfg: dict, frames_per_window: int) -> float:
    d, layers = cfg["dim"], cfg["num_layers"]
    hidden = int(2 * cfg["hidden_scale"] * d / 3)
    matmul = layers * (4 * d * d + 3 * d * hidden) + d * cfg["text_card"]
    attention = 2 * 2 * layers * d * min(frames_per_window, cfg["context"]) / 2  # QK^T and AV, causal
    return 4 * matmul + 3 * attention


def _lm(cfg: dict, device: str, checkpointing: bool):
    from moshi.models import loaders

    torch.manual_seed(0)
    return loaders.get_moshi_lm(None, lm_kwargs=cfg | {"gradient_checkpointing": checkpointing},
                                device=device, dtype=torch.bfloat16)


def _time(step, steps: int, warmup: int) -> float:
    """Median step time of `steps` steps run back to back, as a training loop runs them, on the
    loop's own clock (train.StepClock: a CUDA event after each step, no host sync in between; a
    sync per step would charge every step the launch latency the loop hides)."""
    from .train import StepClock

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    clock, laps = StepClock("cuda"), []
    for _ in range(steps):
        step()
        laps.append(clock.lap())
    times = sorted(clock.seconds(lap) for lap in laps)
    return times[len(times) // 2]


def row_name(impl: str, compile: bool, compile_mode: str) -> str:
    """The JSON row name of one training configuration, e.g. train_ours_compiled_cudagraphs."""
    mode = {"reduce-overhead": "_cudagraphs", "max-autotune": "_max_autotune"}.get(compile_mode, "") if compile else ""
    return f"train_{impl}{'_compiled' if compile else ''}{mode}"


def _compare(row: dict, peer: dict, name: str) -> None:
    """`row`'s speed and memory against `peer`'s, as speed_vs_<name> and memory_vs_<name>."""
    row[f"speed_vs_{name}"] = round(row["frames_per_s"] / peer["frames_per_s"], 2)
    row[f"memory_vs_{name}"] = round(row["peak_gib"] / peer["peak_gib"], 2)


def bench_train(impl: str, preset: str = "1b", batch: int = 8, seconds: float = 30.0, rank: int = 128,
                checkpointing: bool = False, steps: int = 8, warmup: int = 3, device: str = "cuda",
                compile: bool = False, world: int = 1, profile: Path | None = None,
                compile_mode: str = "default") -> dict:
    """Median step time of one training configuration, as a dict of figures. With `profile`, a
    torch.profiler table of three more steps (CUDA time per op, top 40) is written there."""
    import dataclasses

    from moshi.modules.lora import replace_all_linear_with_lora

    from . import train as tr
    from .config import load_config

    if compile:
        # A fresh compile per row: dynamo would otherwise see an earlier row's changed shape as a
        # dynamic dimension and time a shape-generic graph, not what a run of this row compiles.
        torch._dynamo.reset()
    cfg = _config(preset)
    lm = _lm(cfg, device, checkpointing)
    T = int(seconds * FRAME_RATE)
    codes = torch.randint(0, cfg["card"], (batch, cfg["n_q"] + 1, T), device=device)
    codes[:, 0] = torch.randint(0, cfg["text_card"], (batch, T), device=device)
    inputs = tr.shift_inputs(codes, cfg["text_card"], cfg["card"])
    if impl == "peer":
        for p in lm.parameters():
            p.requires_grad_(False)
        replace_all_linear_with_lora(lm, rank, 2.0, device=device, dtype=torch.bfloat16)
        params = [p for n, p in lm.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        lm.train()
        # fused: one kernel per step instead of a dozen passes (ours has it too: make_trainer)
        opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

        def loss_fn():
            _, logits = lm.forward_text(inputs)
            return F.cross_entropy(logits[:, 0].float().reshape(-1, cfg["text_card"]), codes[:, 0].reshape(-1))

        loss = torch.compile(loss_fn, mode=compile_mode) if compile else loss_fn  # the peer's one line

        def step():
            loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        tc = dataclasses.replace(load_config(None).train, lora_rank=rank, compile=compile, method="lora",
                                 compile_mode=compile_mode)
        trainer = tr.make_trainer(lm, tc, device, world)
        pause = torch.randint(0, 2, (batch, T, 4), device=device).float()
        ones, zeros = torch.ones(batch, T, device=device), torch.zeros(batch, T, device=device)
        data = tr.Batch(inputs, codes[:, 0], pause, ones, zeros, batch * T)

        def step():
            tr.train_step(trainer, data, tc.lr)

    torch.cuda.reset_peak_memory_stats()
    seconds_per_step = _time(step, steps, warmup)
    peak = torch.cuda.max_memory_allocated()
    if profile is not None:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        Path(profile).write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    frames = batch * T
    result = {"what": row_name(impl, compile, compile_mode), "preset": preset, "batch": batch, "seconds": seconds,
              "rank": rank,
              "checkpointing": checkpointing, "step_s": round(seconds_per_step, 4),
              "frames_per_s": round(frames / seconds_per_step),
              "model_tflops": round(flops_per_frame(cfg, T) * frames / seconds_per_step / 1e12, 1),
              "peak_gib": round(peak / 2**30, 2),
              "gpu": torch.cuda.get_device_name()}
    return result


# --- CPU: merge + export against a plain copy, Candle against PyTorch streaming ------------------

def _in_child(code: str, setup: str = "") -> tuple[float, int]:
    """Wall time and peak RSS (MiB) of `code` run in a fresh Python (peak RAM of one job only),
    `setup` run first, untimed.
    Each job starts with no dirty pages (`os.sync()` first, untimed) and its time includes
    flushing what it wrote (`os.sync()` last): otherwise a job pays for the writeback of the
    one before it, and the copy, run first, looks faster than it is."""
    import subprocess
    import sys

    # Peak RAM from the kernel's high-water mark of this process's own memory (VmHWM): the
    # child's ru_maxrss started at the parent's peak here (518 MiB for every job, 2026-12-06).
    peak = "next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))" \
        if Path("/proc/self/status").is_file() else "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024"
    script = f"import os, resource, time\n{setup}\nos.sync()\nstart = time.perf_counter()\n{code}\nos.sync()\n" \
             f"print(time.perf_counter() - start, {peak})"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seconds, peak = done.stdout.split()[-2:]
    return float(seconds), int(peak)


def bench_export(ckpt, work, rank: int = 32) -> dict:
    """merge (a random rank-`rank` LoRA on every Linear) then export of `ckpt`, and the one-pass
    export that merges on the way (export.source=adapter), against copying the same files with
    shutil and with direct I/O: seconds and peak RAM of each, in separate processes."""
    from .checkpoint import Checkpoint
    from .lora import apply_lora, save_adapter

    ckpt, work = Checkpoint.of(ckpt), Path(work)
    adapter = work / "adapter"
    if not (adapter / "lora.safetensors").is_file():
        lm = ckpt.load_lm(dtype=torch.bfloat16)
        apply_lora(lm, rank, 2.0)
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=1e-3)
        save_adapter(adapter, lm, dict(ckpt.config), rank, 2.0, False)
        del lm
    files = [str(p) for p in ckpt.files.values()]
    # Each job's output of an earlier run is deleted first, so every job starts from the same
    # state: on this box, overwriting a file's cached pages was several times faster than
    # writing a new file (2 GB: 1.7 s against 13.5 s), and the stages write new folders. The cost
    # is the VM's page-cache memory, not the disk: buffered writes of 2 GB into tmpfs spent
    # 6-14 s in the kernel too (2026-12-02), which is why the stages write with O_DIRECT.
    import shutil

    for name in ("copy", "copy-direct", "merged", "export", "export-1"):
        shutil.rmtree(work / name, ignore_errors=True)
    copy_s, copy_mib = _in_child(f"import shutil, os\nos.makedirs({str(work / 'copy')!r}, exist_ok=True)\n"
                                 f"for f in {files!r}: shutil.copy(f, {str(work / 'copy')!r})")
    # The strongest copy on this box: the stages' own O_DIRECT writer, fed plain reads (imported
    # before the clock starts: a copy does not need torch).
    direct = work / "copy-direct"
    copy_direct_s, _ = _in_child(
        f"for f in {files!r}:\n  w = WeightFile(os.path.join({str(direct)!r}, os.path.basename(f)))\n"
        f"  with open(f, 'rb') as fh:\n    while block := fh.read(1 << 24):\n      w.write(block)\n"
        f"  w.finish()\n  w.close()",
        setup=f"from pipeline.io import WeightFile\nos.makedirs({str(direct)!r}, exist_ok=True)")
    merge_s, merge_mib = _in_child(f"from pipeline.merge import merge\n"
                                   f"merge({str(ckpt)!r}, {str(adapter)!r}, {str(work / 'merged')!r})")
    export_s, export_mib = _in_child(f"from pipeline.export import export\n"
                                     f"export({str(work / 'merged')!r}, {str(work / 'export')!r}, 64)")
    one_pass_s, one_pass_mib = _in_child(f"from pipeline.export import export\n"
                                         f"export({str(ckpt)!r}, {str(work / 'export-1')!r}, 64, {str(adapter)!r})")
    size = sum(Path(f).stat().st_size for f in files)
    return {"what": "merge_export_vs_copy", "checkpoint": str(ckpt), "gib": round(size / 2**30, 2),
            "copy_s": round(copy_s, 2), "merge_s": round(merge_s, 2), "export_s": round(export_s, 2),
            "ratio": round((merge_s + export_s) / copy_s, 2), "one_pass_s": round(one_pass_s, 2),
            "one_pass_ratio": round(one_pass_s / copy_s, 2), "copy_direct_s": round(copy_direct_s, 2),
            "one_pass_vs_direct_copy": round(one_pass_s / copy_direct_s, 2),
            "peak_mib": {"copy": copy_mib, "merge": merge_mib, "export": export_mib, "one_pass": one_pass_mib}}


def bench_stream(ckpt, steps: int = 50, warmup: int = 5) -> dict:
    """Streaming LM steps per second on this CPU, float32, same codes: Candle vs PyTorch moshi."""
    import numpy as np

    from .verify import candle_stream, torch_stream

    rng = np.random.default_rng(0)
    from .checkpoint import Checkpoint

    config = Checkpoint.of(ckpt).config
    codes = rng.integers(0, config["card"], (steps + warmup, config["n_q"]))
    out = {"what": "stream_cpu_f32", "checkpoint": str(ckpt), "steps": steps, "threads": torch.get_num_threads()}
    for name, run in (("torch", torch_stream), ("candle", candle_stream)):
        run(Path(ckpt), codes[:warmup])  # load and warm up outside the timing
        start = time.perf_counter()
        run(Path(ckpt), codes)
        total = time.perf_counter() - start
        start = time.perf_counter()
        run(Path(ckpt), codes[:1])
        load = time.perf_counter() - start  # a one-step run: the load cost to subtract
        out[f"{name}_step_ms"] = round(1000 * (total - load) / (steps + warmup - 1), 1)
    out["candle_vs_torch_speed"] = round(out["torch_step_ms"] / out["candle_step_ms"], 2)
    return out


# (impl, compiled, compile mode, checkpointing), peers first: each of ours is compared with them
TRAIN_ROWS = (("peer", False, "default", False), ("peer", True, "default", False),
              ("peer", True, "reduce-overhead", False), ("ours", False, "default", False),
              ("ours", True, "default", False), ("ours", True, "reduce-overhead", False),
              ("peer", False, "default", True), ("ours", False, "default", True))


def run_train_benchmarks(out=print, profile_dir: Path | None = None,
                         configs: Sequence[tuple] = TRAIN_ROWS) -> list[dict]:
    """The eager peer and the compiled peer (one line of torch.compile, in the default mode and
    with CUDA graphs), then ours eager, compiled and with CUDA graphs, then both eager with
    per-layer checkpointing, in one process. Each of our rows carries its ratio to the eager
    peer and to the compiled peer at its faster mode (`speed_vs_compiled_peer`,
    `memory_vs_compiled_peer`), and MFU against the card's measured bf16 matmul rate.
    `profile_dir`: a profiler table per row without checkpointing. `configs`: a subset of TRAIN_ROWS."""
    rate = matmul_rate()
    rows, peers = [], {}
    for impl, compile, mode, checkpointing in configs:
        name = row_name(impl, compile, mode)
        profile = profile_dir / f"{name}.txt" if profile_dir is not None and not checkpointing else None
        row = bench_train(impl, checkpointing=checkpointing, compile=compile, compile_mode=mode, profile=profile)
        torch.cuda.empty_cache()
        row["mfu_pct"] = round(100 * row["model_tflops"] * 1e12 / rate, 1)
        if impl == "peer":
            key = ("compiled_peer" if compile else "peer", checkpointing)
            if key not in peers or row["frames_per_s"] > peers[key]["frames_per_s"]:
                peers[key] = row  # the compiled peer at its faster mode
        else:
            for (peer_name, with_checkpointing), peer in peers.items():
                if with_checkpointing == checkpointing:
                    _compare(row, peer, peer_name)
        rows.append(row)
        out(json.dumps(row))
    out(json.dumps({"what": "bf16_matmul_tflops", "value": round(rate / 1e12, 1)}))
    return rows


def run_batch_sweep(batches: Sequence[int], out: Callable[[str], None] = print) -> list[dict]:
    """The compiled peer and our compiled step, both with CUDA graphs, at each batch size (30 s
    windows, rank 128), with MFU against this card's measured bf16 matmul rate. Memory is also
    compared with the compiled peer at batch 8 (the issue's reference): the best batch is the
    fastest of ours that stays within 2x of that."""
    rate = matmul_rate()
    rows, reference = [], None
    for batch in sorted(set(batches) | {8}):  # batch 8 first: the memory reference
        peer = bench_train("peer", batch=batch, compile=True, compile_mode="reduce-overhead")
        torch.cuda.empty_cache()
        ours = bench_train("ours", batch=batch, compile=True, compile_mode="reduce-overhead")
        torch.cuda.empty_cache()
        reference = reference or peer
        for row in (peer, ours):
            row["mfu_pct"] = round(100 * row["model_tflops"] * 1e12 / rate, 1)
        _compare(ours, peer, "compiled_peer")
        for row in (peer, ours):
            row["memory_vs_compiled_peer_batch_8"] = round(row["peak_gib"] / reference["peak_gib"], 2)
        for row in (peer, ours):
            rows.append(row)
            out(json.dumps(row))
    out(json.dumps({"what": "bf16_matmul_tflops", "value": round(rate / 1e12, 1)}))
    return rows


def run_ddp_benchmark(gpus: int) -> list[dict]:
    """Our eager training step on 1 GPU, then on `gpus` GPUs with torchrun (DDP, batch 8 per GPU):
    total frames/s of each and the scaling, measured in the same run."""
    import subprocess
    import sys

    rows = []
    for world in (1, gpus):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}", "-m", "pipeline.bench", "ddp"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"torchrun with {world} GPU(s) failed:\n{done.stderr[-2000:]}")
        row = json.loads(lines[-1])
        if rows:
            row["scaling_vs_1_gpu"] = round(row["frames_per_s"] / rows[0]["frames_per_s"], 2)
        rows.append(row)
    return rows


def _ddp_child() -> None:
    """One torchrun process of `run_ddp_benchmark`; rank 0 prints the total frames/s."""
    import torch.distributed as dist

    dist.init_process_group("nccl")
    device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    torch.cuda.set_device(device)
    world = dist.get_world_size()
    row = bench_train("ours", device=device, world=world)
    if dist.get_rank() == 0:
        print(json.dumps({**row, "what": "train_ours_ddp", "gpus": world,
                          "frames_per_s": row["frames_per_s"] * world}), flush=True)
    dist.destroy_process_group()


# --- `invoke bench` ---------------------------------------------------------------------------------

BENCHES = ("data", "export", "stream", "train", "ddp", "serve")


class BenchUnavailable(StageError):
    """A benchmark asked for by name that this machine cannot run (no GPU, too few GPUs)."""

    exit_code = 3


def run_benchmarks(cfg, chosen: Sequence[str], one_b: Callable[[], object], explicit: bool) -> Path:
    """The benchmarks in `chosen`, each row printed and appended to a dated JSONL under
    artifacts/bench (returned). `one_b` gives the 1b checkpoint (built on first use). A GPU
    benchmark this machine cannot run is skipped with a line, or refused if `explicit`ly asked for."""
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        raise StageError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHES)}")
    log = cfg.artifacts_dir / "bench" / f"{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        line = json.dumps({**row, "date": time.strftime("%Y-%m-%d")})
        print(line, flush=True)
        with open(log, "a") as fh:
            fh.write(line + "\n")

    if "data" in chosen:
        from .data import bench_data, measure_annotation

        whisper_cache = cfg.artifacts_dir / "whisper"
        emit({"what": "data_speed", **bench_data(cache_dir=whisper_cache, whisper=cfg.data.whisper)})
        quality = measure_annotation(cfg.data.whisper, n_piper=100, n_espeak=60, cache_dir=whisper_cache)
        emit({"what": "annotation_quality", **{k: v for k, v in quality.items() if k != "piper_misses"}})
    if "export" in chosen:
        emit(bench_export(one_b(), cfg.artifacts_dir / "bench" / "export-work"))
    if "stream" in chosen:
        emit(bench_stream(one_b()))
    if "train" in chosen:
        if torch.cuda.is_available():
            run_train_benchmarks(out=lambda line: emit(json.loads(line)))
        elif explicit:
            raise BenchUnavailable("the train benchmark times GPU training and needs a CUDA GPU; figures measured "
                                   "on the GPU box are in docs/benchmarks.md")
        else:
            print("train: skipped (no CUDA GPU here; GPU figures are in docs/benchmarks.md)")
    if "ddp" in chosen:
        if torch.cuda.device_count() >= 2:
            for row in run_ddp_benchmark(torch.cuda.device_count()):
                emit(row)
        elif explicit:
            raise BenchUnavailable("the ddp benchmark compares 1 GPU with several and needs 2 or more CUDA GPUs")
        else:
            print("ddp: skipped (fewer than 2 CUDA GPUs here)")
    if "serve" in chosen:
        if torch.cuda.is_available():
            from .bench_serve import run_serve_benchmarks
            from .export import export

            work = cfg.artifacts_dir / "bench" / "serve-work"
            streams = [int(n) for n in cfg.serve.bench_streams.split(",")]
            run_serve_benchmarks(export(one_b(), work / "export-1b", device="cuda"), work, streams, emit,
                                 processes=cfg.serve.bench_processes)
        elif explicit:
            raise BenchUnavailable("the serve benchmark counts real-time streams per GPU and needs a CUDA GPU and "
                                   "moshi-server built with --features cuda (docs/gpu.md, then "
                                   "MOSHI_SERVER=<its binary>); GPU figures are in docs/benchmarks.md")
        else:
            print("serve: skipped (no CUDA GPU here; GPU figures are in docs/benchmarks.md)")
    return log


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["ddp"]:
        _ddp_child()
    elif sys.argv[1:] == ["compiled"]:  # the compiled peer against our compiled step, both modes each
        run_train_benchmarks(configs=[row for row in TRAIN_ROWS if row[1]])
    elif sys.argv[1:2] == ["batches"]:  # python -m pipeline.bench batches 8,16,24
        run_batch_sweep([int(b) for b in sys.argv[2].split(",")])
    else:  # python -m pipeline.bench [PROFILE_DIR]: the train rows, with profiler tables if given
        run_train_benchmarks(profile_dir=Path(sys.argv[1]) if sys.argv[1:] else None)
