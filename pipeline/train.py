"""train: delay-correct LoRA fine-tuning of the STT model, with its pause heads kept working.

    windows of packed utterances  ->  text stream at word start + 0.5 s (labels.py)
    Mimi codes (cached, codes.py) ->  inputs shifted one frame, as LMModel.forward does
    LMModel.forward_text          ->  text cross-entropy + pause-head loss -> LoRA (lora.py)

moshi's `LMModel.forward` needs a depformer (dep_q > 0), so the forward pass here is our own
over `forward_text` and `extra_heads`. One process on CPU, or N GPUs with torchrun (DDP, bf16).
The run folder holds the resolved config, metrics.jsonl, resumable checkpoints and `final/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import Checkpoint, write_checkpoint
from .config import Config, render_config
from .constants import FRAME_RATE
from .errors import StageError
from .labels import (EPAD, IGNORE, PAD, PAUSE_HORIZONS, UtteranceTargets, Word, digit_form, frame_of,
                     shift_inputs, utterance_targets, window_piece)
from .lora import apply_lora, lora_disabled, save_adapter


class TrainingError(StageError):
    """Training cannot start or must stop; the message says why and what to do."""


@dataclass
class Sample:
    """One utterance ready for packing: its codes, words and number spans (seconds)."""
    codes: torch.Tensor  # [n_q, T] long
    words: list[Word]
    numbers: list[tuple[float, float]] = field(default_factory=list)
    _targets: tuple | None = field(default=None, repr=False, compare=False)  # (tokenizer, delay, targets)

    @property
    def frames(self) -> int:
        return self.codes.shape[1]

    def targets(self, encode, delay: float) -> UtteranceTargets:
        """The whole utterance's targets, computed once per tokenizer and delay: an utterance is
        packed into a window in every epoch, and building its targets was 90 % of make_batch."""
        owner = getattr(encode, "__self__", encode)  # a bound `tokenizer.encode`: key on the tokenizer
        cached = self._targets
        if cached is None or cached[0] is not owner or cached[1] != delay:
            self._targets = cached = (owner, delay, utterance_targets(self.words, encode, self.frames, delay))
        return cached[2]


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, 1 + n_q, W] shifted model inputs
    text: torch.Tensor  # [B, W] targets (IGNORE where unknown)
    pause: torch.Tensor  # [B, W, H] 1.0 = pause
    head_mask: torch.Tensor  # [B, W] frames with a known pause target
    number_mask: torch.Tensor  # [B, W] frames inside a spoken number (for distillation)
    real_frames: int  # frames holding audio (not padding)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        """This batch with `fn` applied to each of its tensors (to pin them, or move them)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


# --- packing ------------------------------------------------------------------------------------

Segment = tuple[int, int, int]  # (sample index, first frame, number of frames)


MIN_PIECE = 12  # frames (~1 s): a window with less room left is closed rather than given a sliver


def pack_windows(lengths: Sequence[int], window: int, order: Sequence[int]) -> list[list[Segment]]:
    """Lay utterances end to end in `order` and cut the stream into windows of `window` frames.

    An utterance that does not fit is cut; its continuation starts the next window (where the
    words whose audio started before the cut are masked, labels.window_piece). A
    window with under MIN_PIECE frames of room is closed instead, so padding stays below
    MIN_PIECE / window (3.2 % for 30 s windows)."""
    windows: list[list[Segment]] = []
    current: list[Segment] = []
    room = window
    for idx in order:
        start, left = 0, lengths[idx]
        while left > 0:
            if room < min(MIN_PIECE, left):
                windows.append(current)
                current, room = [], window
            take = min(left, room)
            current.append((idx, start, take))
            start, left, room = start + take, left - take, room - take
            if room == 0:
                windows.append(current)
                current, room = [], window
    if current:
        windows.append(current)
    return windows


def epoch_batches(samples: Sequence[Sample], window: int, batch_size: int, seed: int, epoch: int,
                  rank: int = 0, world: int = 1) -> list[list[list[Segment]]]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run sees
    exactly the batches an uninterrupted run would have."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(samples)))
    rng.shuffle(order)
    windows = pack_windows([s.frames for s in samples], window, order)
    if len(windows) > 1 and sum(n for _, _, n in windows[-1]) < window - MIN_PIECE:
        windows.pop()  # the stream's ragged end: those utterances come earlier in other epochs
    rng.shuffle(windows)
    windows = windows[rank::world]
    return [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]


def batch_stream(samples, window, batch_size, seed, rank=0, world=1, skip=0) -> Iterator[list]:
    """The training batches, epoch after epoch, each of exactly `batch_size` windows: an epoch's
    windows that do not fill a last batch open the next epoch's first, so every step has the same
    shape (torch.compile does not recompile) and no window is dropped. A dataset with fewer windows
    than one batch gives one batch per epoch, of all of them. A pure function of its arguments:
    a resumed run (`skip` batches) sees what an uninterrupted one would."""
    epoch, carry = 0, []
    while True:
        windows = [w for batch in epoch_batches(samples, window, batch_size, seed, epoch, rank, world) for w in batch]
        if not windows:
            raise TrainingError("no training windows: the dataset is empty")
        if len(windows) < batch_size and not carry:
            batches = [windows]
        else:
            windows = carry + windows
            whole = len(windows) - len(windows) % batch_size
            batches, carry = [windows[i:i + batch_size] for i in range(0, whole, batch_size)], windows[whole:]
        for batch in batches:
            if skip:
                skip -= 1
                continue
            yield batch
        epoch += 1


def prefetched(batches: Iterator[Batch], pin: bool, depth: int = 2) -> Iterator[Batch]:
    """`batches` built `depth` ahead in a background thread (off the step's critical path), in
    pinned memory when `pin` so the copy to the GPU does not block. An error in the thread is
    raised here, at the batch it stopped."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                return ready.put(item, timeout=0.1)
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                put(batch.map_tensors(torch.Tensor.pin_memory) if pin else batch)
            put(StopIteration())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def make_batch(segments_per_window: list[list[Segment]], samples: Sequence[Sample], window: int,
               encode, text_start: int, audio_start: int, delay: float) -> Batch:
    """Stack the windows' codes and targets. Each utterance's targets are computed over the whole
    utterance (labels.utterance_targets) and then sliced (labels.window_piece), so a packed
    neighbour never changes them and a cut keeps what the whole utterance defines."""
    n_q = samples[0].codes.shape[0]
    B = len(segments_per_window)
    codes = torch.full((B, 1 + n_q, window), IGNORE, dtype=torch.long)
    pause = torch.zeros(B, window, len(PAUSE_HORIZONS))
    head_mask = torch.zeros(B, window)
    number_mask = torch.zeros(B, window)
    real = 0
    for b, segments in enumerate(segments_per_window):
        offset = 0
        for idx, first, n in segments:
            sample = samples[idx]
            targets = sample.targets(encode, delay)
            codes[b, 1:, offset:offset + n] = sample.codes[:, first:first + n]
            codes[b, 0, offset:offset + n], pause[b, offset:offset + n] = window_piece(targets, first, n)
            head_mask[b, offset:offset + n] = 1
            for start, end in sample.numbers:  # utterance frames -> window frames
                a, z = frame_of(start) - first, frame_of(end + delay) + 1 - first
                number_mask[b, offset + max(a, 0):offset + min(z, n)] = 1
            offset += n
        real += offset
    inputs = shift_inputs(codes, text_start, audio_start)
    return Batch(inputs, codes[:, 0].clone(), pause, head_mask, number_mask, real)


def drop_codebooks(inputs: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantizer dropout on teacher-forced inputs [B, 1 + n_q, T] (train.codebook_dropout): in a
    `share` of the windows, codebooks k+1..n_q become IGNORE (embedded as zero) for a uniform k in
    1..n_q, so the first (semantic) codebook is always kept and the window may keep every one. The
    start tokens (t = 0) stay: the model always begins a stream the same way."""
    batch, rows, _ = inputs.shape
    kept = torch.randint(1, rows, (batch, 1), generator=generator)           # drawn on the CPU: B numbers
    dropped = torch.rand(batch, 1, generator=generator) < share
    kept = torch.where(dropped, kept, rows - 1).to(inputs.device)
    codebook = torch.arange(1, rows, device=inputs.device)[None]          # [1, n_q]: 1-based codebook index
    mask = (codebook > kept)[:, :, None].expand(-1, -1, inputs.shape[-1] - 1)
    out = inputs.clone()
    out[:, 1:, 1:] = out[:, 1:, 1:].masked_fill(mask, IGNORE)
    return out


# --- losses ---------------------------------------------------------------------------------------

def forward_stt(lm, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits [B, T, V] and pause-head logits [B, T, H, 6] for teacher-forced inputs."""
    hidden, text_logits = lm.forward_text(inputs)
    heads = torch.stack([head(hidden) for head in lm.extra_heads], dim=2)
    return text_logits[:, 0], heads


def use_window_attention(lm) -> int:
    """Give each self-attention of `lm` a training forward that calls SDPA with `is_causal=True`.

    moshi's attention passes SDPA a boolean mask (causal, within `context` frames), which rules
    out the flash kernel. For a whole window (no streaming state) that is no longer than the
    context, that mask is exactly the causal mask, so `is_causal=True` computes the same thing,
    faster. Anything else (streaming, longer windows, several weight sets, grouped KV) goes to
    moshi's own forward. Returns how many attention modules were given the path."""
    import types

    from einops import rearrange
    from moshi.modules.transformer import StreamingMultiheadAttention

    def forward(self, query, key, value):
        B, T = query.shape[:2]
        if self._streaming_state is not None or (self.context is not None and T > self.context):
            return StreamingMultiheadAttention.forward(self, query, key, value)
        q, k, v = rearrange(self.in_projs[0](query), "b t (p h d) -> p b h t d", p=3, h=self.num_heads)
        if self.rope:
            q, k = self.rope(q, k, torch.zeros(B, device=query.device, dtype=torch.long), time_before_heads=False)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_projs[0](rearrange(x, "b h t d -> b t (h d)"))

    count = 0
    for module in lm.modules():
        if (isinstance(module, StreamingMultiheadAttention) and module.causal and not module.cross_attention
                and len(module.in_projs) == 1 and module.kv_repeat == 1):
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


class SttForward(torch.nn.Module):
    """`forward_stt` as a module, so DistributedDataParallel can wrap it (DDP syncs gradients
    only for calls that go through its own forward)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_stt(self.lm, inputs)


def text_loss(logits: torch.Tensor, target: torch.Tensor, padding_weight: float) -> torch.Tensor:
    weight = (target != IGNORE).float()
    weight = torch.where((target == PAD) | (target == EPAD), weight * padding_weight, weight)
    # Classes on the last, contiguous dim: a [B, V, T] layout sends log_softmax to its "spatial"
    # kernel, which took 9 of the compiled 1B step's 52 ms on an H200 (profile in docs/benchmarks.md).
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1),
                         reduction="none").view_as(target)
    return (ce * weight).sum() / weight.sum().clamp(min=1)


def pause_log_probs(head_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(pause) and log P(not pause) per head: class 0 against the other five."""
    logp = torch.log_softmax(head_logits.float(), dim=-1)
    return logp[..., 0], torch.logsumexp(logp[..., 1:], dim=-1)


def head_loss(head_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on P(pause) (what Kyutai's clients read); soft targets allowed.
    The split of the non-pause mass among classes 1-5 is left to the model."""
    log_pause, log_other = pause_log_probs(head_logits)
    bce = -(target * log_pause + (1 - target) * log_other)
    mask = mask[..., None].expand_as(bce)
    return (bce * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def validate(trainer: Trainer, samples: Sequence[Sample], window: int, encode, delay: float) -> dict[str, float]:
    """Teacher-forced losses over every held-out utterance, packed in their own order into
    windows (no shuffling, nothing dropped): the mean text and head loss (weighted by real
    frames) and the share of word-token targets (not PAD or EPAD) the text head ranks first."""
    tc, device, lm = trainer.tc, trainer.device, trainer.lm
    windows = pack_windows([s.frames for s in samples], window, range(len(samples)))
    text_sum = head_sum = frames = hits = words = 0.0
    was_training = lm.training
    lm.eval()
    try:
        for i in range(0, len(windows), tc.batch_size):
            batch = make_batch(windows[i:i + tc.batch_size], samples, window, encode, lm.text_card, lm.card, delay)
            target = batch.text.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.autocast):
                text_logits, head_logits = forward_stt(lm, batch.inputs.to(device))  # the bare model: no DDP sync
            n = batch.real_frames
            text_sum += text_loss(text_logits, target, tc.text_padding_weight).item() * n
            head_sum += head_loss(head_logits, batch.pause.to(device), batch.head_mask.to(device)).item() * n
            frames += n
            word = (target != IGNORE) & (target != PAD) & (target != EPAD)
            hits += (text_logits.argmax(-1)[word] == target[word]).sum().item()
            words += word.sum().item()
    finally:
        lm.train(was_training)
    return {"val_text_loss": text_sum / frames, "val_head_loss": head_sum / frames,
            "val_word_token_accuracy": hits / words if words else None}


# --- the run --------------------------------------------------------------------------------------

def warmup_cosine(step: int, steps: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then a cosine down to `floor` x `peak` at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(step: int, cfg) -> float:
    if cfg.schedule == "constant" and step >= cfg.warmup_steps:
        return cfg.lr
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_steps, floor=0.1)


def load_samples(cfg: Config, ckpt: Checkpoint, device: str, data: str | None = None,
                 split: str = "train") -> list[Sample]:
    """Utterances with their Mimi codes (`train.data`'s training ones unless `data` and `split`
    say otherwise): from a code pack, or a dataset folder whose audio is encoded once (cached).
    Numbers are labelled as `train.number_form` says. A dataset built for another text delay
    than the model's is refused (its tails were sized for it)."""
    from .codes import CodeCache, read_pack
    from .data import dataset_text_delay, read_split
    from .labels import unencodable_summary

    source = cfg.output_path(data or cfg.train.data)
    mimi_file = ckpt.files["mimi"]
    if source.is_file():
        labels, codes, firsts, delay = read_pack(source, mimi_file)
        if not cfg.train.augmented:
            kept = [i for i, entry in enumerate(labels) if "augment" not in entry]
            labels, codes, firsts = [labels[i] for i in kept], [codes[i] for i in kept], [firsts[i] for i in kept]
    else:
        utterances = read_split(source, split)
        delay = dataset_text_delay(source)
        labels = [{"path": str(u.path), "alignments": u.alignments, "number_spans": u.number_spans} for u in utterances]
        cache = CodeCache(ckpt.load_mimi(device), mimi_file, cfg.artifacts_dir / "cache" / "codes", device)
        codes, firsts = zip(*cache.encode_with_served_first([u.path for u in utterances])) if utterances else ((), ())
    if not labels:
        raise TrainingError(f"{source} holds no {split} utterances; build a dataset with `invoke data`")
    if delay is not None and abs(delay - ckpt.text_delay) > 1e-9:
        raise TrainingError(f"{source} was built for a text delay of {delay:g} s, but {ckpt} writes its text "
                            f"{ckpt.text_delay:g} s late; rebuild the dataset with --set data.text_delay="
                            f"{ckpt.text_delay:g}")
    if problem := unencodable_summary(labels, ckpt.tokenizer.encode):
        tqdm.write(f"warning: {problem}")
    if split == "train" and cfg.train.served_starts > 0:
        codes = served_starts(codes, firsts, cfg.train.served_starts, cfg.train.seed)
    return [sample_of(entry, c, cfg.train.number_form) for entry, c in zip(labels, codes)]


def served_starts(codes: Sequence[torch.Tensor], served_first: Sequence[torch.Tensor], share: float,
                  seed: int) -> list[torch.Tensor]:
    """`codes` with frame 0 of round(share * N) utterances, drawn from `seed`, replaced by the
    codes moshi-server gives that frame (train.served_starts); the others unchanged."""
    chosen = set(random.Random(seed * 1_000_003 + 17).sample(range(len(codes)), round(share * len(codes))))
    out = []
    for i, (c, first) in enumerate(zip(codes, served_first)):
        if i in chosen and c.shape[1]:
            c = c.clone()
            c[:, 0] = first
        out.append(c)
    return out


def sample_of(labels: dict, codes: torch.Tensor, number_form: str = "words") -> Sample:
    """A Sample from an utterance's alignments and number spans (dataset or pack entry)."""
    alignments = labels["alignments"]
    words = [Word(w, float(t[0]), float(t[1])) for w, t, *_ in alignments]
    spans = [(int(sp["first"]), int(sp["last"]), str(sp["written"])) for sp in labels["number_spans"]]
    numbers = [(words[first].start, words[last].end) for first, last, _ in spans]
    if number_form == "digits":
        words = digit_form(words, spans)
    return Sample(codes, words, numbers)


def _memory() -> dict:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    return {"rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _latest_checkpoint(run: Path) -> Path | None:
    done = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "trainer_state.pt").is_file())
    return done[-1] if done else None


# --- one step ---------------------------------------------------------------------------------------

@dataclass
class Trainer:
    """What one optimizer step needs: the model, what it trains, and the loss settings."""
    lm: torch.nn.Module
    model: torch.nn.Module  # the forward pass: SttForward, maybe DDP-wrapped and compiled
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    device: str
    tc: object  # the `train` config section
    text_loss: Callable = text_loss  # compiled with the model on GPU
    head_loss: Callable = head_loss

    @property
    def autocast(self) -> bool:
        return self.device.startswith("cuda")


def make_trainer(lm: torch.nn.Module, tc, device: str, world: int = 1) -> Trainer:
    """LoRA on every Linear (or every weight with `method = full`), SDPA's causal path for whole
    windows, DDP across `world` processes, torch.compile on GPU, AdamW."""
    if tc.method == "full":
        params = [p.requires_grad_(True) for p in lm.parameters()]
    else:
        params = apply_lora(lm, tc.lora_rank, tc.lora_scaling, tc.ft_embed)
    lm.train()
    use_window_attention(lm)
    model = SttForward(lm)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device])
    losses = (text_loss, head_loss)
    cuda = device.startswith("cuda")
    if tc.compile and cuda:
        mode = compile_mode(tc.compile_mode, world)
        model = torch.compile(model, mode=mode)
        losses = tuple(torch.compile(fn, mode=mode) for fn in losses)  # fused with their casts and reductions
    # fused on CUDA: one kernel per step; the foreach version took 1.6 ms of the 1B step's 29 ms
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=tc.weight_decay,
                                  fused=cuda or None)
    return Trainer(lm, model, params, optimizer, device, tc, *losses)


def compile_mode(mode: str, world: int) -> str:
    """`train.compile_mode` resolved: 'auto' is CUDA graphs in one process, where they took the
    1B loop from 44 to 29 ms a step (docs/benchmarks.md), and the default mode under DDP, whose
    gradient all-reduce inside captured graphs this project has not measured."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if world == 1 else "default"


def train_step(trainer: Trainer, batch: Batch, lr: float, step: int = 0) -> dict[str, torch.Tensor]:
    """Forward, loss, backward, clip and optimizer step on one batch. Returns the figures as
    tensors on the device (reading them synchronizes; the caller decides when). `step` seeds the
    codebook dropout, so a resumed run drops what the uninterrupted one did."""
    tc, device = trainer.tc, trainer.device
    batch = batch.map_tensors(lambda t: t.to(device, non_blocking=True))
    inputs = batch.inputs
    if tc.codebook_dropout > 0:
        inputs = drop_codebooks(inputs, tc.codebook_dropout, torch.Generator().manual_seed(tc.seed * 1_000_003 + step))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.autocast):
        base_pause = None
        if tc.head_loss == "distill":
            with torch.no_grad(), lora_disabled(trainer.lm):
                base_pause = pause_log_probs(forward_stt(trainer.lm, inputs)[1])[0].exp()
        text_logits, head_logits = trainer.model(inputs)
    loss_text = trainer.text_loss(text_logits, batch.text, tc.text_padding_weight)
    if tc.head_loss == "supervised":
        loss_head = trainer.head_loss(head_logits, batch.pause, batch.head_mask)
    elif tc.head_loss == "distill":
        keep = batch.head_mask * (1 - batch.number_mask)
        loss_head = trainer.head_loss(head_logits, base_pause, keep)
    else:
        loss_head = torch.zeros((), device=device)
    loss = loss_text + tc.head_loss_weight * loss_head
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
    trainer.optimizer.step()
    # Copies, not views: with CUDA graphs (compile_mode=reduce-overhead) a compiled function's
    # outputs live in memory its next replay overwrites, and the loop reads these 10 steps later.
    return {"loss": loss.detach().clone(), "text_loss": loss_text.detach().clone(),
            "head_loss": loss_head.detach().clone(), "grad_norm": grad_norm.detach().clone()}


# --- the run --------------------------------------------------------------------------------------

# Fields a resumed run may change: what is written or scored, and how long it runs (a run may be
# extended; the schedule then follows the new length from the resumed step on).
RESUMABLE_CHANGES = {"train.log_every", "train.save_every", "train.steps", "train.val_data", "train.val_every"}


def changed_fields(saved: Config, current: Config) -> list[str]:
    """'section.field: saved -> current' for every field of `model` and `train` that differs."""
    out = []
    for section in ("model", "train"):
        old, new = dataclasses.asdict(getattr(saved, section)), dataclasses.asdict(getattr(current, section))
        for key in old:
            name = f"{section}.{key}"
            if old[key] != new.get(key) and name not in RESUMABLE_CHANGES:
                out.append(f"{name}: {old[key]!r} -> {new.get(key)!r}")
    return out


def _check_run_folder(cfg: Config, run: Path, resume: bool) -> None:
    from .config import load_config

    if not resume:
        if run.exists() and any(run.iterdir()):
            raise TrainingError(f"{run} already holds a run; pass --resume to continue it or set train.out elsewhere")
        return
    saved = run / "config.yaml"
    if saved.is_file() and (changes := changed_fields(load_config(saved), cfg)):
        raise TrainingError(f"{saved}: --resume with a changed config ({'; '.join(changes)}); "
                            "resume with the saved config, or start a new run in another train.out")


def _device(tc, world: int) -> str:
    if world > 1:
        torch.distributed.init_process_group("nccl")
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
        return device
    return ("cuda" if torch.cuda.is_available() else "cpu") if tc.device == "auto" else tc.device


FIGURES = ("loss", "text_loss", "head_loss", "grad_norm")  # train_step's figures, in metrics.jsonl
FLUSH_EVERY = 10  # steps between host syncs: figures are read back, and the loss checked, this often


class StepClock:
    """Each step's time without a host sync per step: on CUDA an event is recorded after each
    step and read when the steps are flushed (the time between consecutive steps' ends on the
    GPU's timeline, idle gaps included); on CPU, the host clock."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.restart()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def restart(self) -> None:
        self.last = self._mark()

    def lap(self) -> tuple:
        now = self._mark()
        lap, self.last = (self.last, now), now
        return lap

    def seconds(self, lap: tuple) -> float:
        begin, end = lap
        if not self.cuda:
            return end - begin
        end.synchronize()
        return begin.elapsed_time(end) / 1000


def start_profiler(device: str):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    profiler = profile(activities=activities)
    profiler.start()
    return profiler


def device_timeline(events: Sequence[dict]) -> dict:
    """How busy the GPU was over the profiled steps, from a chrome trace's events: the span from
    the first to the last event (host or device), the time covered by at least one kernel or
    copy (overlaps counted once), and the longest idle gaps between them. A busy share well
    below 100 % means the steps wait on the host (launches, Python, syncs), not on the GPU."""
    timed = [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]
    device = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in timed
                    if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not device:
        return {"device_events": 0}
    span_start = min(float(e["ts"]) for e in timed)
    span_end = max(float(e["ts"]) + float(e["dur"]) for e in timed)
    busy, gaps, (start, end) = 0.0, [], device[0]
    for a, z in device[1:]:
        if a > end:
            busy, gaps, start = busy + end - start, gaps + [(a - end, end)], a
        end = max(end, z)
    busy += end - start
    return {"device_events": len(device), "span_ms": round((span_end - span_start) / 1e3, 3),
            "device_busy_ms": round(busy / 1e3, 3), "device_busy_share": round(busy / (span_end - span_start), 4),
            "longest_idle_gaps_ms": [round(g / 1e3, 3) for g, _ in sorted(gaps, reverse=True)[:5]]}


def write_profile(profiler, run: Path, device: str, steps: tuple[int, int]) -> None:
    """The profiled steps' op table twice, by device time (what the GPU ran) and by host time
    (what the Python loop and kernel launches cost), top 40 each, headed by the device timeline
    (`device_timeline`), in `run`/profile.txt; the chrome trace in `run`/trace.json.gz."""
    import gzip
    import tempfile

    from .io import atomic_file

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    profiler.stop()
    with tempfile.TemporaryDirectory() as tmp:  # the profiler writes its trace only to a path
        profiler.export_chrome_trace(str(Path(tmp) / "trace.json"))
        raw = (Path(tmp) / "trace.json").read_bytes()
    with atomic_file(run / "trace.json.gz") as packed:
        packed.write_bytes(gzip.compress(raw, compresslevel=6))
    trace = json.loads(raw)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    table = profiler.key_averages()
    text = f"train.profile: steps {steps[0]}-{steps[1]} of the loop\n"
    text += f"device timeline: {json.dumps(device_timeline(events))}\n\n"
    if device.startswith("cuda"):
        text += "by device time\n" + table.table(sort_by="cuda_time_total", row_limit=40) + "\n\n"
    text += "by host time\n" + table.table(sort_by="cpu_time_total", row_limit=40) + "\n"
    with atomic_file(run / "profile.txt") as tmp:
        Path(tmp).write_text(text)


def train(cfg: Config, ckpt: Checkpoint | Path, resume: bool = False, samples: list[Sample] | None = None) -> Path:
    """Fine-tune `ckpt` with LoRA (adapter in `final/`), or train all its weights with
    `train.method = full` (a complete checkpoint in `final/`); return the run folder."""
    from safetensors.torch import load_file

    ckpt = Checkpoint.of(ckpt)
    tc = cfg.train
    run = cfg.output_path(tc.out)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if rank == 0:
        _check_run_folder(cfg, run, resume)
    if not ckpt.has_extra_heads:
        raise TrainingError(
            f"{ckpt} has no extra heads (pause predictors): fine-tuning it would ship a model without "
            "the VAD. Start from a checkpoint that has them (kyutai/stt-1b-en_fr-candle, not "
            "kyutai/stt-1b-en_fr), or graft them: `invoke graft-heads --model BASE --heads-from DONOR`")
    full = tc.method == "full"
    if full and tc.head_loss == "distill":
        raise TrainingError("train.head_loss=distill needs a frozen base (method lora); use 'supervised' with method full")

    device = _device(tc, world)
    # LoRA: the frozen base in bf16 on GPU. Full training keeps float32 master weights (autocast).
    dtype = torch.bfloat16 if device.startswith("cuda") and not full else torch.float32
    if samples is None:
        samples = load_samples(cfg, ckpt, device)
    held_out = load_samples(cfg, ckpt, device, tc.val_data, "eval") if tc.val_data and rank == 0 else None
    window = int(tc.window_seconds * FRAME_RATE)

    torch.manual_seed(tc.seed)
    overrides = {"gradient_checkpointing": True} if tc.activation_checkpointing else {}
    trainer = make_trainer(ckpt.load_lm(device=device, dtype=dtype, **overrides), tc, device, world)
    lm = trainer.lm

    start = 0
    last = _latest_checkpoint(run) if resume else None
    if last is not None:
        state = torch.load(last / "trainer_state.pt", map_location=device, weights_only=True)
        weights = last / ("model.safetensors" if full else "lora.safetensors")
        result = lm.load_state_dict(load_file(str(weights), device=device), strict=full)
        if result.unexpected_keys:
            raise TrainingError(f"{last}/lora.safetensors does not match this model "
                                f"(unexpected {sorted(result.unexpected_keys)[:3]}); start a new run")
        trainer.optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        print(f"resuming {run} from step {start}")
    if rank == 0:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(render_config(cfg))

    base_config = dict(ckpt.config)
    encode = ckpt.tokenizer.encode
    stream = batch_stream(samples, window, tc.batch_size, tc.seed, rank, world, skip=start)
    made = (make_batch(segments, samples, window, encode, lm.text_card, lm.card, ckpt.text_delay)
            for segments in stream)
    batches = prefetched(made, pin=device.startswith("cuda")) if tc.prefetch else made
    metrics = open(run / "metrics.jsonl", "a") if rank == 0 else None
    bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", disable=rank != 0)
    clock, pending, step = StepClock(device), [], start

    def drain() -> list[dict]:
        """The pending steps' figures, read back in one host sync (every FLUSH_EVERY steps at
        most); stops on a non-finite loss before anything is scored or saved."""
        figures = torch.stack([torch.stack([o[k].float() for k in FIGURES]) for *_, o in pending]).tolist()
        records = []
        for (at, batch, lr, lap, _), values in zip(pending, figures):
            record = dict(zip(FIGURES, values))
            if not math.isfinite(record["loss"]):
                keep = _latest_checkpoint(run)
                raise TrainingError(f"loss is {record['loss']} at step {at}; stopped. Last good checkpoint: "
                                    f"{keep or 'none'}. Lower train.lr or check the data")
            seconds = clock.seconds(lap)
            records.append({"step": at, **record, "lr": lr, "step_s": round(seconds, 4),
                            "frames_per_s": round(batch.real_frames * world / seconds, 1),
                            "padding_pct": round(100 * (1 - batch.real_frames / (batch.inputs.shape[0] * window)), 2),
                            **_memory()})
        pending.clear()
        bar.set_postfix(loss=f"{records[-1]['loss']:.3f}")
        return records

    first_profiled = max(start, min(20, tc.steps - 3))  # steps 21-23, or the last three of a shorter run
    profiled = range(first_profiled, first_profiled + 3) if tc.profile and rank == 0 else None
    profiler = None
    try:
        while step < tc.steps:
            if profiled is not None and step == profiled.start:
                profiler = start_profiler(device)
            batch = next(batches)
            out = train_step(trainer, batch, lr_at(step, tc), step)
            step += 1
            pending.append((step, batch, lr_at(step - 1, tc), clock.lap(), out))
            bar.update(1)
            validating = bool(held_out) and (step % tc.val_every == 0 or step == tc.steps)
            saving = rank == 0 and (step % tc.save_every == 0 or step == tc.steps)
            if len(pending) >= FLUSH_EVERY or validating or saving or step == tc.steps:
                records = drain()
                if validating:
                    records[-1].update(validate(trainer, held_out, window, encode, ckpt.text_delay))
                if metrics:
                    for record in records:
                        if record["step"] % tc.log_every == 0 or "val_text_loss" in record:
                            metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
            if saving:
                _save(run, step, lm, trainer.optimizer, base_config, tc, full)
            if validating or saving:
                clock.restart()  # the next step's time leaves out the pause for scoring and saving
            if profiler is not None and step == profiled.stop:
                write_profile(profiler, run, device, steps=(profiled.start + 1, profiled.stop))
                profiler = None
                clock.restart()  # writing the trace is not the next step's time
    finally:
        if profiler is not None:  # stopped early: what was profiled so far
            write_profile(profiler, run, device, steps=(profiled.start + 1, step))
        bar.close()
        batches.close()
        if metrics:
            metrics.close()
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank == 0 and full:
        state = {k: v.detach().to("cpu", torch.bfloat16) for k, v in lm.state_dict().items()}
        config = {**base_config, "model_id": {"origin": f"trained by stt-numerals (train.method=full, "
                                                        f"number_form={tc.number_form}, {tc.steps} steps) "
                                                        f"from {ckpt.path.name}"}}
        write_checkpoint(run / "final", state, config, ckpt)
    elif rank == 0:
        save_adapter(run / "final", lm, base_config, tc.lora_rank, tc.lora_scaling, tc.ft_embed)
    return run


def _save(run: Path, step: int, lm, optimizer, base_config: dict, tc, full: bool, keep: int = 3) -> None:
    from safetensors.torch import save_file

    from .io import atomic_dir, atomic_file

    out = run / "checkpoints" / f"step_{step:06d}"
    if full:
        with atomic_dir(out) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()},
                      str(tmp / "model.safetensors"))
    else:
        save_adapter(out, lm, base_config, tc.lora_rank, tc.lora_scaling, tc.ft_embed)
    with atomic_file(out / "trainer_state.pt") as tmp:
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp)
    for old in sorted((run / "checkpoints").glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def launch(cfg: Config, ckpt: Checkpoint, gpus: int, resume: bool = False) -> int:
    """`train` on `gpus` GPUs: one torchrun process each (DDP); returns torchrun's exit code.
    The resolved config travels in a temporary YAML file, removed afterwards."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(render_config(cfg))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}",
               "-m", "pipeline.train", str(config), str(ckpt.path)] + (["--resume"] if resume else [])
        return subprocess.run(cmd).returncode


def main() -> None:
    """Entry point for torchrun: `torchrun --nproc-per-node N -m pipeline.train CONFIG CKPT [--resume]`."""
    import sys

    from .config import load_config

    args = sys.argv[1:]
    train(load_config(args[0]), Checkpoint.open(args[1]), resume="--resume" in args)


if __name__ == "__main__":
    main()
