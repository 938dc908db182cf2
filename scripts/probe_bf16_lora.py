"""Issue #17 probe: what does a bfloat16 LoRA (the peer's: moshi's LoRA in the model's dtype) lose
against ours in float32? Our LoRA weights, gradients and AdamW moments are float32, 0.53 GiB more than
the peer's at the 1B shape, rank 128. This measures whether that memory buys anything.

Each probe trains the same LoRA twice, from the same base, the same LoRA init and the same batches,
with `invoke train`'s trainer (pipeline.train.make_trainer: LoRA init, AdamW), its defaults (rank 32,
gradient clipping at 1) and its schedule (20 warm-up steps, cosine to 10 %): once with
float32 LoRA parameters, once with bfloat16. The base is bfloat16 and the forward runs under bfloat16
autocast in both, as `invoke train` runs on a GPU, so only the LoRA's dtype differs. Each step of
the bfloat16 run, the update AdamW meant to make is recomputed in float32 from its own moments, and
the share of LoRA weights it did not move at all (the update rounded away) is recorded, for lora_A
and lora_B apart. At the end: how far apart the two runs' merged updates scaling * B @ A are.

--task shapes (default): the 1B's layer shapes (width 2048, 16 heads, its FFN, the 8,000-way text
  head; `--layers` of them, so it runs on a CPU) at `invoke train`'s lr 1e-4. The batches are random
  codes whose text target is a fixed function of them: the rounding is real, the loss is not.
--task organism: a real fine-tune, the CI organism's (`invoke organism --config
  configs/organism-ci.yaml` first) on its own data, scored on its held-out clips. Its layers are
  narrower (width 128), and a LoRA A of fan-in d starts at |w| <= 1/sqrt(d), so the learning rate is
  scaled by sqrt(2048 / 128) = 4 (`--lr 4e-4`): AdamW's step is then the same fraction of A's
  weights, and of its bf16 rounding step, as at lr 1e-4 on the 1B.

    python scripts/probe_bf16_lora.py [--task shapes|organism] [--steps 150] [--out probe.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from moshi.models import loaders
from moshi.modules.lora import LoRALinear

from pipeline.bench import _config
from pipeline.config import load_config
from pipeline.constants import FRAME_RATE
from pipeline.train import forward_stt, head_loss, make_trainer, text_loss, warmup_cosine

TRAIN = load_config(None).train  # `invoke train`'s defaults: LoRA rank and scaling, loss weights, clipping


class Shapes:
    """The 1B's layer shapes, random base, random codes."""

    def __init__(self, args):
        self.cfg = _config("1b") | {"num_layers": args.layers}
        self.size, self.frames, self.seed = args.batch, args.frames, args.seed

    def base(self):
        torch.manual_seed(self.seed)
        return loaders.get_moshi_lm(None, lm_kwargs=self.cfg, device="cpu", dtype=torch.bfloat16)

    def batch(self, step: int):
        """Audio codes at random; the text target at t is a fixed function of codebooks 0 and 1 at t."""
        cfg, gen = self.cfg, torch.Generator().manual_seed(1000 + step)
        audio = torch.randint(0, cfg["card"], (self.size, cfg["n_q"], self.frames), generator=gen)
        target = (audio[:, 0] * 7 + audio[:, 1]) % (cfg["text_card"] - 4) + 4
        text_in = torch.cat([torch.full((self.size, 1), cfg["text_card"]), target[:, :-1]], dim=1)
        return torch.cat([text_in[:, None], audio], dim=1), target, None

    def evaluate(self, lm) -> dict:
        return {}


class Organism:
    """The CI organism's fine-tune: its base, its training clips in `invoke train`'s batches, its
    held-out clips for the score."""

    def __init__(self, args):
        from pipeline.checkpoint import Checkpoint
        from pipeline.train import batch_stream, load_samples

        self.cfg = load_config("configs/organism-ci.yaml", [f"train.seed={args.seed}"])
        tc = self.cfg.train
        if not Path(self.cfg.model.source).is_dir():
            raise SystemExit(f"error: {self.cfg.model.source} does not exist; build it first with "
                             "`invoke organism --config configs/organism-ci.yaml`")
        self.ckpt = Checkpoint.of(self.cfg.model.source)
        self.samples = load_samples(self.cfg, self.ckpt, "cpu")
        self.held_out = load_samples(self.cfg, self.ckpt, "cpu", data=self.cfg.data.out, split="eval")
        self.window = round(tc.window_seconds * FRAME_RATE)
        stream = batch_stream(self.samples, self.window, tc.batch_size, tc.seed)
        self.batches = [next(stream) for _ in range(args.steps)]  # the same batches for both runs

    def base(self):
        return self.ckpt.load_lm(dtype=torch.bfloat16)

    def batch(self, step: int):
        from pipeline.train import make_batch

        config = self.ckpt.config
        b = make_batch(self.batches[step - 1], self.samples, self.window, self.ckpt.tokenizer.encode,
                       config["text_card"], config["card"], self.ckpt.text_delay)
        return b.inputs, b.text, (b.pause, b.head_mask)

    def evaluate(self, lm) -> dict:
        """`invoke train`'s own held-out score (pipeline.train.validate), under CPU autocast."""
        from types import SimpleNamespace

        from pipeline.train import validate

        trainer = SimpleNamespace(tc=self.cfg.train, device="cpu", lm=lm, autocast=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = validate(trainer, self.held_out, self.window, self.ckpt.tokenizer.encode, self.ckpt.text_delay)
        return {k: round(v, 4) for k, v in scores.items() if v is not None}


def make_trainer_in(task, lora_dtype: torch.dtype, seed: int):
    """`invoke train`'s trainer (LoRA, attention path, AdamW) on the task's base, its LoRA cast to
    `lora_dtype` before the first step, so AdamW's moments take that dtype too."""
    lm = task.base()
    torch.manual_seed(seed + 1)  # the same LoRA init in both runs (drawn in float32, then cast)
    trainer = make_trainer(lm, TRAIN, "cpu")
    for p in trainer.params:
        p.data = p.data.to(lora_dtype)
    return trainer


def intended_update(p: torch.Tensor, state: dict, group: dict, step: int) -> torch.Tensor:
    """AdamW's step for `p` computed in float32 from its moments (torch's formula)."""
    (beta1, beta2), lr = group["betas"], group["lr"]
    m, v = state["exp_avg"].float(), state["exp_avg_sq"].float()
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    return -lr * group["weight_decay"] * p.float() - lr / bc1 * m / ((v / bc2).sqrt() + group["eps"])


def rounding(params, before, names, opt, step: int) -> dict:
    """Per kind of LoRA weight: the share whose nonzero update rounded away, and the relative error
    of the step taken against the step meant."""
    row = {}
    for kind in ("lora_A", "lora_B"):
        lost = moved = 0
        err = norm = 0.0
        for p, b in zip(params, before):
            if kind not in names[id(p)] or p not in opt.state:  # no gradient reaches it
                continue
            u = intended_update(b, opt.state[p], opt.param_groups[0], step)
            done = p.detach().float() - b.float()
            lost += int(((done == 0) & (u != 0)).sum())
            moved += int((u != 0).sum())
            err += float(((done - u) ** 2).sum())
            norm += float((u ** 2).sum())
        row[f"{kind}_rounded_away"] = round(lost / max(moved, 1), 4)
        row[f"{kind}_update_error"] = round(math.sqrt(err / max(norm, 1e-30)), 4)
    return row


def run(task, args, lora_dtype: torch.dtype, out) -> tuple[dict, list[dict]]:
    trainer = make_trainer_in(task, lora_dtype, args.seed)
    lm, params, opt = trainer.lm, trainer.params, trainer.optimizer
    names = {id(p): n for n, p in lm.named_parameters()}
    rows = []
    for step in range(1, args.steps + 1):
        lr = warmup_cosine(step - 1, args.steps, args.lr, args.warmup, floor=0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, target, heads = task.batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as `invoke train` runs on CUDA
            text_logits, head_logits = forward_stt(lm, inputs)
        loss = text_loss(text_logits, target, TRAIN.text_padding_weight)
        if heads is not None:
            loss = loss + TRAIN.head_loss_weight * head_loss(head_logits, *heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, TRAIN.grad_clip)
        before = [p.detach().clone() for p in params]
        opt.step()
        row = {"dtype": str(lora_dtype).split(".")[-1], "step": step, "lr": lr, "loss": round(loss.item(), 4)}
        if lora_dtype != torch.float32:
            row |= rounding(params, before, names, opt, step)
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            row |= task.evaluate(lm)
        rows.append(row)
        out.write(json.dumps(row) + "\n")
        out.flush()
        if step % 10 == 0 or step == 1:
            print(json.dumps(row), flush=True)
    deltas = {n: (m.scaling * m.lora_B.weight.float() @ m.lora_A.weight.float()).detach()
              for n, m in lm.named_modules() if isinstance(m, LoRALinear)}
    return deltas, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("shapes", "organism"), default="shapes")
    ap.add_argument("--layers", type=int, default=2, help="shapes: how many of the 1B's layers")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-4 (shapes), 4e-4 (organism)")
    ap.add_argument("--batch", type=int, default=2, help="shapes: windows per batch")
    ap.add_argument("--frames", type=int, default=125, help="shapes: frames per window (10 s)")
    ap.add_argument("--eval-every", type=int, default=0, help="organism: score the held-out clips every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="probe-bf16-lora.jsonl")
    args = ap.parse_args()
    args.lr = args.lr or (1e-4 if args.task == "shapes" else 4e-4)
    task = (Shapes if args.task == "shapes" else Organism)(args)
    start = time.time()
    with open(args.out, "w") as out:
        ref, ref_rows = run(task, args, torch.float32, out)
        got, got_rows = run(task, args, torch.bfloat16, out)
        apart = math.sqrt(sum(float(((got[n] - ref[n]) ** 2).sum()) for n in ref))
        size = math.sqrt(sum(float((ref[n] ** 2).sum()) for n in ref))
        tail = min(10, args.steps)
        summary = {"what": "summary", "args": vars(args), "merged_update_apart": round(apart / size, 4),
                   "loss_last10_float32": round(sum(r["loss"] for r in ref_rows[-tail:]) / tail, 4),
                   "loss_last10_bfloat16": round(sum(r["loss"] for r in got_rows[-tail:]) / tail, 4),
                   "final_float32": {k: v for k, v in ref_rows[-1].items() if k.startswith("val_")},
                   "final_bfloat16": {k: v for k, v in got_rows[-1].items() if k.startswith("val_")},
                   "seconds": round(time.time() - start, 1)}
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
