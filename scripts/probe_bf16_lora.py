"""Issue #17 probe: what does a bfloat16 LoRA (the peer's: moshi's LoRA in the model's dtype) lose
against ours in float32? Our LoRA weights, gradients and AdamW moments are float32, 0.53 GiB more than
the peer's at the 1B shape, rank 128. This measures whether that memory buys anything.

Two LoRA trainings of the 1B's layer shapes (width 2048, 16 heads, its FFN, 8,000-way text head;
fewer layers so it runs on a CPU), from the same random base and the same batches, with
`invoke train`'s optimizer and schedule (AdamW betas 0.9/0.95, weight decay 0.1, lr 1e-4 peak,
20 warm-up steps, cosine to 10 %) and LoRA init (pipeline.lora.apply_lora): one with float32 LoRA
parameters, one with bfloat16. The base is bfloat16 and the forward runs under bfloat16 autocast in
both, as in `invoke train` on a GPU, so only the LoRA's dtype differs.
Each step of the bfloat16 run, the update AdamW meant to make is recomputed in float32 from its
own moments, and the share of LoRA weights it did not move at all (the update rounded away) is
recorded, for lora_A and lora_B apart. At the end: how far apart the two runs' merged updates
scaling * B @ A are, and their losses.

The batches are random audio codes whose text target is a fixed function of them, so the loss can
fall and gradients have a direction; a real model's gradients differ, AdamW's step size (which is
what rounds away) depends on them only through m / sqrt(v).

    python scripts/probe_bf16_lora.py [--layers 2] [--steps 150] [--out probe-bf16-lora.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from moshi.models import loaders
from moshi.modules.lora import LoRALinear

from pipeline.bench import _config
from pipeline.lora import apply_lora
from pipeline.train import forward_stt, text_loss, use_window_attention, warmup_cosine

BETAS, EPS, WEIGHT_DECAY = (0.9, 0.95), 1e-8, 0.1  # pipeline.train.make_trainer


def make_lm(layers: int, lora_dtype: torch.dtype, rank: int, seed: int):
    cfg = _config("1b") | {"num_layers": layers}
    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=cfg, device="cpu", dtype=torch.bfloat16)
    torch.manual_seed(seed + 1)  # the same LoRA init in both runs (drawn in float32, then cast)
    params = apply_lora(lm, rank, 2.0)
    for p in params:
        p.data = p.data.to(lora_dtype)
    lm.train()
    use_window_attention(lm)
    return lm, cfg, params


def batch(cfg: dict, step: int, size: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio codes at random; the text target at t is a fixed function of codebooks 0 and 1 at t."""
    gen = torch.Generator().manual_seed(1000 + step)
    audio = torch.randint(0, cfg["card"], (size, cfg["n_q"], frames), generator=gen)
    target = (audio[:, 0] * 7 + audio[:, 1]) % (cfg["text_card"] - 4) + 4
    text_in = torch.cat([torch.full((size, 1), cfg["text_card"]), target[:, :-1]], dim=1)  # teacher forcing
    return torch.cat([text_in[:, None], audio], dim=1), target


def intended_update(p: torch.Tensor, state: dict, lr: float, step: int) -> torch.Tensor:
    """AdamW's step for `p` computed in float32 from its moments (torch's formula)."""
    m, v = state["exp_avg"].float(), state["exp_avg_sq"].float()
    bc1, bc2 = 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
    return -lr * WEIGHT_DECAY * p.float() - lr / bc1 * m / ((v / bc2).sqrt() + EPS)


def run(args, lora_dtype: torch.dtype, out) -> tuple[dict, list[float]]:
    lm, cfg, params = make_lm(args.layers, lora_dtype, args.rank, args.seed)
    names = {id(p): n for n, p in lm.named_parameters()}
    opt = torch.optim.AdamW(params, lr=args.lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    losses = []
    for step in range(1, args.steps + 1):
        lr = warmup_cosine(step - 1, args.steps, args.lr, args.warmup, floor=0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, target = batch(cfg, step, args.batch, args.frames)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as `invoke train` runs on CUDA
            logits, _ = forward_stt(lm, inputs)
        loss = text_loss(logits, target, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        losses.append(loss.item())
        row = {"dtype": str(lora_dtype).split(".")[-1], "step": step, "lr": lr, "loss": round(loss.item(), 4)}
        if lora_dtype != torch.float32:
            for kind in ("lora_A", "lora_B"):
                lost = moved = total = 0
                err = norm = 0.0
                for p, b in zip(params, before):
                    if kind not in names[id(p)] or p not in opt.state:  # no gradient reaches it
                        continue
                    u = intended_update(b, opt.state[p], lr, step)
                    done = p.detach().float() - b.float()
                    want = u != 0
                    lost += int(((done == 0) & want).sum())
                    moved += int(want.sum())
                    total += p.numel()
                    err += float(((done - u) ** 2).sum())
                    norm += float((u ** 2).sum())
                row[f"{kind}_rounded_away"] = round(lost / max(moved, 1), 4)
                row[f"{kind}_update_error"] = round(math.sqrt(err / max(norm, 1e-30)), 4)
        out.write(json.dumps(row) + "\n")
        out.flush()
        if step % 10 == 0 or step == 1:
            print(json.dumps(row), flush=True)
    deltas = {n: (m.scaling * m.lora_B.weight.float() @ m.lora_A.weight.float()).detach()
              for n, m in lm.named_modules() if isinstance(m, LoRALinear)}
    return deltas, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=125)  # 10 s at 12.5 Hz
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="probe-bf16-lora.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    start = time.time()
    with open(args.out, "w") as out:
        ref, ref_losses = run(args, torch.float32, out)
        got, got_losses = run(args, torch.bfloat16, out)
        apart = math.sqrt(sum(float(((got[n] - ref[n]) ** 2).sum()) for n in ref))
        size = math.sqrt(sum(float((ref[n] ** 2).sum()) for n in ref))
        tail = min(10, args.steps)
        summary = {"what": "summary", "args": vars(args),
                   "merged_update_apart": round(apart / size, 4),
                   "loss_last10_float32": round(sum(ref_losses[-tail:]) / tail, 4),
                   "loss_last10_bfloat16": round(sum(got_losses[-tail:]) / tail, 4),
                   "seconds": round(time.time() - start, 1)}
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
