"""bench: training throughput at the real stt-1b-en_fr shape, ours against the moshi-module peer.

Both run in the same process on the same card with random weights (speed depends on shapes):
- peer: moshi's LMModel with moshi's LoRA trained plainly (bf16 weights and LoRA, AdamW,
  text cross-entropy), as shared/research/peer_moshi_lora.py measured it;
- ours: the train stage's step (`pipeline.train`: float32 LoRA under bf16 autocast, text loss
  with padding weights, supervised pause-head loss, gradient clipping).

Each prints frames/s (80 ms frames of audio per second), peak GPU memory and model FLOP/s
counted as 4 x matmul parameters per frame plus attention (frozen base: forward + input
gradients), and MFU against the card's measured bf16 matmul rate.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

FRAME_RATE = 12.5


def _config(preset: str) -> dict:
    from .checkpoint import PRESETS, lm_config

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
    times = []
    for i in range(steps + warmup):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_train(impl: str, preset: str = "1b", batch: int = 8, seconds: float = 30.0, rank: int = 128,
                checkpointing: bool = False, steps: int = 8, warmup: int = 3, device: str = "cuda",
                compile: bool = False, lora_dtype: torch.dtype = torch.float32) -> dict:
    """Median step time of one training configuration, as a dict of figures."""
    from moshi.modules.lora import replace_all_linear_with_lora

    from . import train as tr
    from .lora import apply_lora

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
        opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)

        def step():
            _, logits = lm.forward_text(inputs)
            F.cross_entropy(logits[:, 0].float().reshape(-1, cfg["text_card"]), codes[:, 0].reshape(-1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        params = apply_lora(lm, rank, 2.0, dtype=lora_dtype)
        lm.train()
        forward = torch.compile(tr.forward_stt) if compile else tr.forward_stt
        opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)
        pause = torch.randint(0, 2, (batch, T, 4), device=device).float()
        mask = torch.ones(batch, T, device=device)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                text_logits, head_logits = forward(lm, inputs)
            loss = tr.text_loss(text_logits, codes[:, 0], 0.5) + 0.5 * tr.head_loss(head_logits, pause, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    seconds_per_step = _time(step, steps, warmup)
    frames = batch * T
    variant = impl + ("_compiled" if compile else "") + ("_bf16lora" if impl == "ours" and lora_dtype == torch.bfloat16 else "")
    result = {"what": f"train_{variant}", "preset": preset, "batch": batch, "seconds": seconds, "rank": rank,
              "checkpointing": checkpointing, "step_s": round(seconds_per_step, 4),
              "frames_per_s": round(frames / seconds_per_step),
              "model_tflops": round(flops_per_frame(cfg, T) * frames / seconds_per_step / 1e12, 1),
              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "gpu": torch.cuda.get_device_name()}
    return result


def run_train_benchmarks(out=print) -> list[dict]:
    """Peer then ours, with and without checkpointing, plus the card's matmul rate (MFU)."""
    rate = matmul_rate()
    rows = []
    for checkpointing in (False, True):
        for impl in ("peer", "ours"):
            row = bench_train(impl, checkpointing=checkpointing)
            torch.cuda.empty_cache()
            row["mfu_pct"] = round(100 * row["model_tflops"] * 1e12 / rate, 1)
            rows.append(row)
            out(json.dumps(row))
    out(json.dumps({"what": "bf16_matmul_tflops", "value": round(rate / 1e12, 1)}))
    return rows


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["variants"]:
        for kwargs in ({"compile": True}, {"lora_dtype": torch.bfloat16}, {"compile": True, "lora_dtype": torch.bfloat16},
                       {"compile": True, "batch": 16}):
            print(json.dumps(bench_train("ours", **kwargs)), flush=True)
            torch.cuda.empty_cache()
    else:
        run_train_benchmarks()
