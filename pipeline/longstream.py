"""long-stream: does a model keep transcribing for minutes, past its 750-frame context? (issue #40)

Production streams run for minutes (a support call, a dictation session); every clip of
`invoke eval` lasts a few seconds. Here held-out clips are joined into conversations of
`longstream.minutes` minutes, each conversation is streamed through the base and the candidate as
one connection, as moshi-server streams it, and each utterance is scored with `invoke eval`'s
definitions within its own steps of the long stream:

    eval clips -> conversations (seeded order, 1-3 s pauses)       build_conversation
               -> one stream per model and conversation            stream_conversation
               -> each utterance scored in its own window          score_conversation
               -> figures per minute, side by side, and a plot     per_minute, write_report

Definitions (tests/test_longstream.py checks each on hand-built cases):

- Conversation. Clips of eval.data's eval.split in an order drawn from longstream.seed
  (reshuffled once all were used), each padded to whole 80 ms frames. The pause between two
  utterances, from one's last word end to the next's first word start, is drawn uniformly in
  [pause_min, pause_max] s and rounded to whole frames; where the two clips' own silences (the
  first's tail, the next's lead) are longer than the draw, they are the pause: no audio is cut.
  Clips are added while the last one, followed by eval.flush_seconds of silence, still ends within
  `minutes`; the stream is then padded with silence to exactly `minutes`.
- Streaming. One connection per conversation and model, nothing reset between utterances:
  'server-semantics' (Kyutai's Rust crate as moshi-server runs it: warm-up, slot reset, then every
  frame; `candle_bridge.ServerStreamer`) or 'candle' (a fresh `moshi::asr::State`). A diagnostic,
  'candle-clips': the LM streams on without a reset, but its codes are Mimi-encoded piece by piece,
  each clip with the silence after it from a fresh Mimi state, as `invoke train` packs separately
  encoded utterances end to end: what the LM saw in training, made as long as the conversation.
- Utterance window. Utterance i owns the steps from its clip's first frame up to the next clip's
  first frame (the last utterance: to the end of the stream). Its words are the words whose step
  lies in the window (the step that closed the word with server semantics, as `invoke eval` takes
  it; the step of its first token with 'candle'), its pause trace the window's steps. The end-of-turn
  rules are applied to the whole stream (the Unmute rule's EMA runs on, its warm-up is the stream's
  first 12 steps only) and then cut to the window. A window starts at its clip's first frame, so
  window times are clip times and `pipeline.eval`'s definitions (WER, number spans, cut-offs, turn
  ends) apply unchanged; a turn end must come before the next clip starts.
- Minute. An utterance counts in the minute of the stream in which its first word starts. A
  minute's figures are `pipeline.eval.summarize` over its utterances, conversations pooled.
- Padding share. Of a minute's steps (750 a minute), the share at which the model writes padding
  (text token 0 or 3), in speech and in silence alike; the yardstick is the base's share on the
  same minute (a model that collapses to padding writes it through the speech too). With server
  semantics the written token of step s is the text input of step s + 1 (the stream's last step is
  left out).
- Alone (longstream.alone). Every clip used is also streamed on its own, as `invoke eval` streams
  it (a new connection, then eval.flush_seconds of silence), and scored the same way: the same
  utterances' figures without the long context, the row a minute is read against.
- Mimi drift. Every conversation is also Mimi-encoded in one stream and each clip alone (Candle,
  fresh streams): per minute, the share of speech frames (first word start to last word end) whose
  first-codebook code is the same in both. The base and the fine-tune share the Mimi, so a drop here
  is the audio codec's, not the LM's.

Kyutai's runtime past the context (moshi crate 0.6.4, what moshi-server runs; docs/long-streams.md
has the sources): the LM keeps a ring of `context` = 750 key/value slots per layer and the step at
position p attends to positions p - 749 .. p (itself and the 749 before); the RoPE position is p
itself, counted from the connection's start without bound. Since RoPE scores depend only on p - q,
the absolute position changes nothing by itself; what changes past 750 frames is that the window no
longer holds the stream's first frame (the start token the model always saw at position 0 in
training). Mimi's encoder transformer does the same with its own 250-step context (10 s at 25 Hz).
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import Checkpoint
from .config import Config
from .constants import FRAME_RATE, FRAME_SAMPLES, SAMPLE_RATE
from .evaluate.metrics import (PADDING, RULES, HypWord, Reference, Rules, decode_words, fired_steps,
                               score_utterance, summarize)
from .evaluate.sources import EvalError, load_references
from .evaluate.stream import Runner
from .io import atomic_dir

MODELS = ("base", "candidate")
STEPS_PER_MINUTE = int(60 * FRAME_RATE)  # 750: the 1B's context is exactly one minute
FINE_STEPS = STEPS_PER_MINUTE // 6  # the plot's padding share also per 10 s, to see when a collapse starts
RUNTIMES = ("server-semantics", "candle", "candle-clips")


@dataclass
class Placed:
    """An utterance in a conversation: its clip starts at frame `start`; its window is
    [start, end) in steps (end: the next clip's first frame, or the end of the stream)."""

    ref: Reference
    start: int
    end: int
    frames: int  # the clip's own frames (whole frames)
    index: int = 0  # into the clips the conversation was drawn from

    @property
    def first_word(self) -> float:
        """Stream time (s) at which its first word starts."""
        return self.start / FRAME_RATE + (self.ref.turn.first_start if self.ref.turn else 0.0)


@dataclass
class Conversation:
    audio: np.ndarray  # float32, whole frames
    placed: list[Placed] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.audio) // FRAME_SAMPLES


def _frames(samples: int) -> int:
    return math.ceil(samples / FRAME_SAMPLES)


def plan_conversation(refs: Sequence[Reference], lengths: Sequence[int], minutes: float, rng: np.random.Generator,
                      pause: tuple[float, float], flush_seconds: float) -> tuple[list[tuple[int, int, int]], int]:
    """Where each clip goes: ([(index into refs, start frame, clip frames)], total frames).

    `lengths`: each clip's samples. Order and pauses as the module doc says; pure, so the tests
    can check the rules without audio."""
    total = int(round(minutes * 60 * FRAME_RATE))
    flush = math.ceil(flush_seconds * FRAME_RATE - 1e-9)
    order: list[int] = []
    placed: list[tuple[int, int, int]] = []
    cursor, prev = 0, None  # cursor: first free frame; prev: (index, start frame) of the last clip
    while True:
        if not order:
            order = list(rng.permutation(len(refs)))
        i = int(order.pop(0))
        frames = _frames(lengths[i])
        if prev is None:
            start = 0
        else:
            j, prev_start = prev
            drawn = rng.uniform(*pause)
            last_end = prev_start / FRAME_RATE + refs[j].turn.last_end  # stream time of the last word's end
            first = refs[i].turn.first_start  # the next clip's lead before its first word
            start = max(cursor, math.ceil((last_end + drawn - first) * FRAME_RATE - 1e-9))
        if start + frames + flush > total:
            break
        placed.append((i, start, frames))
        cursor, prev = start + frames, (i, start)
        if len(placed) > 100_000:  # guard against zero-length clips
            raise EvalError("longstream: clips too short to fill a conversation")
    if not placed:
        raise EvalError(f"longstream.minutes ({minutes}) is shorter than the first clip plus "
                        f"eval.flush_seconds; give more minutes")
    return placed, total


def build_conversation(refs: Sequence[Reference], audio: Sequence[np.ndarray], minutes: float,
                       rng: np.random.Generator, pause: tuple[float, float], flush_seconds: float) -> Conversation:
    """The conversation's audio and its utterances' windows (module doc, "Conversation")."""
    plan, total = plan_conversation(refs, [len(a) for a in audio], minutes, rng, pause, flush_seconds)
    pcm = np.zeros(total * FRAME_SAMPLES, dtype=np.float32)
    placed = []
    for k, (i, start, frames) in enumerate(plan):
        a = np.asarray(audio[i], dtype=np.float32)
        pcm[start * FRAME_SAMPLES:start * FRAME_SAMPLES + len(a)] = a
        end = plan[k + 1][1] if k + 1 < len(plan) else total
        placed.append(Placed(refs[i], start, end, frames, i))
    return Conversation(pcm, placed)


# --- streaming ------------------------------------------------------------------------------------

@dataclass
class LongStream:
    written: np.ndarray  # [T] the text token written at each step (-1 where unknown: the last step, served)
    pause: np.ndarray  # [T, heads]
    words: list[HypWord]  # step: see the module doc; start: stream time (s)


class LongRunner:
    """One checkpoint streaming whole conversations, one connection each."""

    def __init__(self, ckpt: Checkpoint, runtime: str = "server-semantics"):
        import candle_bridge

        if runtime not in RUNTIMES:
            raise EvalError(f"longstream.runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not ckpt.has_extra_heads:
            raise EvalError(f"{ckpt}: the checkpoint has no pause heads (extra_heads_num_heads = 0)")
        self.ckpt, self.runtime = ckpt, runtime
        self.tokenizer = ckpt.tokenizer
        self.streamer = (candle_bridge.ServerStreamer(str(ckpt), ckpt.delay_frames) if runtime == "server-semantics"
                         else candle_bridge.Streamer(str(ckpt)))
        self.encoder = candle_bridge.Streamer(str(ckpt)) if runtime == "candle-clips" else None

    def run_conversation(self, conv: Conversation, progress=None) -> LongStream:
        """`run(conv.audio)`, or with 'candle-clips' the LM streaming on over codes Mimi-encoded
        piece by piece: each clip with the silence after it from a fresh Mimi state, as training
        packs separately encoded utterances end to end (the diagnostic of the module doc)."""
        if self.runtime != "candle-clips":
            return self.run(conv.audio, progress=progress)
        self.streamer.reset()
        codes = []
        for k, p in enumerate(conv.placed):
            first = 0 if k == 0 else p.start  # the silence before the first clip goes with it
            self.encoder.reset()
            codes.append(np.asarray(self.encoder.encode_pcm(conv.audio[first * FRAME_SAMPLES:p.end * FRAME_SAMPLES])))
        tokens, pauses = [], []
        for frame in np.concatenate(codes):
            token, _, pause = self.streamer.step_tokens([int(c) for c in frame])
            tokens.append(token)
            pauses.append(pause)
            if progress is not None and len(tokens) % STEPS_PER_MINUTE == 0:
                progress(STEPS_PER_MINUTE)
        written = np.asarray(tokens, dtype=np.int64)
        return LongStream(written, np.asarray(pauses, dtype=np.float32),
                          decode_words(written, self.decode, self.ckpt.text_delay))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def run(self, pcm: np.ndarray, chunk_steps: int = STEPS_PER_MINUTE, progress=None) -> LongStream:
        """Stream `pcm` (whole frames) as one connection, a minute of audio per call into Rust."""
        if self.runtime == "server-semantics":
            self.streamer.new_connection()
        else:
            self.streamer.reset()
        tokens, pauses, words = [], [], []
        chunk = chunk_steps * FRAME_SAMPLES
        for offset in range(0, len(pcm), chunk):
            first = offset // FRAME_SAMPLES
            part = np.ascontiguousarray(pcm[offset:offset + chunk], dtype=np.float32)
            if self.runtime == "server-semantics":
                text_input, pause, events = self.streamer.step_pcm(part)
                tokens.append(np.asarray(text_input, dtype=np.int64))
                words += [HypWord(text, first + step, start) for step, kind, ids, start in events if kind == "word"
                          for text in self.decode(list(ids)).split()]
            else:
                out, _, pause = self.streamer.step_pcm(part)
                tokens.append(np.asarray(out, dtype=np.int64))
            pauses.append(np.asarray(pause, dtype=np.float32))
            if progress is not None:
                progress(len(part) // FRAME_SAMPLES)
        tokens_all, pause_all = np.concatenate(tokens), np.concatenate(pauses)
        if self.runtime == "server-semantics":
            written = np.append(tokens_all[1:], -1)  # the input of step s + 1 is what step s wrote
        else:
            written = tokens_all
            words = decode_words(written, self.decode, self.ckpt.text_delay)
        return LongStream(written, pause_all, words)


# --- scoring --------------------------------------------------------------------------------------

def score_conversation(conv: Conversation, run: LongStream, rules: Rules) -> list[dict]:
    """Each utterance scored within its window (module doc, "Utterance window"), with its minute."""
    fired = {name: on for name, (on, _) in fired_steps(run.pause, rules).items()}
    scores = []
    for p in conv.placed:
        words = [w.text for w in run.words if p.start <= w.step < p.end]
        window = {name: fired[name][p.start:p.end] for name in RULES}
        score = score_utterance(p.ref, words, run.pause[p.start:p.end], rules, window)
        score["minute"] = int(p.first_word // 60)
        score["start_step"] = p.start
        scores.append(score)
    return scores


def padding_share(written: np.ndarray, minutes: int, per: int = STEPS_PER_MINUTE) -> list[float | None]:
    """Per minute (or per bin of `per` steps: `minutes` bins), the share of its steps whose written
    token is padding (0 or 3); steps whose token is unknown (-1) are left out."""
    out = []
    for m in range(minutes):
        part = np.asarray(written[m * per:(m + 1) * per])
        part = part[part >= 0]
        out.append(float(np.isin(part, PADDING).mean()) if len(part) else None)
    return out


def minute_figures(summary: dict) -> dict:
    """The figures the per-minute table and the plot show, from a `summarize` result."""
    thr, unm = summary["vad"]["threshold"], summary["vad"]["unmute"]
    return {"utterances": summary["utterances"], "words": summary["wer"]["all"]["words"],
            "wer": summary["wer"]["all"]["wer"], "number_spans": summary["number_spans"],
            "digit_share": summary["digit_share"], "exact_share": summary["exact_share"],
            "digits_right_share": summary["digits_right_share"],
            "dictations": thr["dictations"], "dictations_cut_share": thr["dictations_cut_share"],
            "dictations_cut_share_unmute": unm["dictations_cut_share"],
            "turn_end_share": thr["turn_end_detected_share"], "turn_end_share_unmute": unm["turn_end_detected_share"]}


def per_minute(scores: Sequence[dict], minutes: int) -> list[dict]:
    """`minute_figures` of each minute's utterances (conversations pooled)."""
    return [minute_figures(summarize([s for s in scores if s["minute"] == m])) for m in range(minutes)]


def mimi_agreement(ckpt: Checkpoint, conv: Conversation, audio: Sequence[np.ndarray]) -> list[float | None]:
    """Per minute, the share of speech frames whose first-codebook Mimi code in the conversation
    equals the code of the clip encoded alone (module doc, "Mimi drift"). `audio`: the clips
    `Placed.index` points into."""
    import candle_bridge

    streamer = candle_bridge.Streamer(str(ckpt))
    streamer.reset()
    whole = np.asarray(streamer.encode_pcm(conv.audio))
    same = [[0, 0] for _ in range(conv.steps // STEPS_PER_MINUTE + 1)]
    for p in conv.placed:
        streamer.reset()
        clip = np.zeros(p.frames * FRAME_SAMPLES, dtype=np.float32)
        a = audio[p.index]
        clip[:len(a)] = a
        alone = np.asarray(streamer.encode_pcm(clip))
        turn = p.ref.turn
        if turn is None:
            continue
        first, last = int(turn.first_start * FRAME_RATE), min(math.ceil(turn.last_end * FRAME_RATE), len(alone))
        for f in range(first, last):
            m = (p.start + f) // STEPS_PER_MINUTE
            same[m][0] += int(whole[p.start + f, 0] == alone[f, 0])
            same[m][1] += 1
    return [k / n if n else None for k, n in same[:conv.steps // STEPS_PER_MINUTE]]


# --- the stage ------------------------------------------------------------------------------------

def _stream_model(ckpt: Checkpoint, convs: Sequence[Conversation], runtime: str, label: str,
                  position: int) -> list[LongStream]:
    from tqdm import tqdm

    runner = LongRunner(ckpt, runtime)
    total = sum(c.steps for c in convs)
    with tqdm(total=total, desc=f"{label} ({runtime}, {len(convs)} conversation(s))", unit="step",
              position=position) as bar:
        return [runner.run_conversation(c, progress=bar.update) for c in convs]


def _alone(ckpt: Checkpoint, refs: Sequence[Reference], audio: Sequence[np.ndarray], cfg: Config, label: str,
           rules: Rules, position: int) -> list[dict]:
    from tqdm import tqdm

    runtime = "server-semantics" if cfg.longstream.runtime == "server-semantics" else "candle"
    with Runner(ckpt, runtime, cfg.eval.flush_seconds) as runner:
        runs = [runner.run(a) for a in tqdm(audio, desc=f"{label} alone", unit="utt", position=position)]
    return [score_utterance(r, [w.text for w in s.words], s.pause, rules) for r, s in zip(refs, runs)]


def long_stream_eval(cfg: Config, base: Checkpoint | Path | None = None,
                     candidate: Checkpoint | Path | None = None) -> Path:
    """`invoke long-stream`: build the conversations, stream them through both models, score,
    write the report folder `cfg.output_path(cfg.longstream.out)` atomically and return it."""
    from .data.audio import read_audio
    from .eval import resolve_models, rules_of

    ls = cfg.longstream
    data = cfg.output_path(cfg.eval.data)
    refs = [r for r in load_references(data, cfg.eval.split, cfg.data.import_lang) if r.times]
    if not refs:
        raise EvalError(f"{data}: no {cfg.eval.split} utterances with word timings; the long-stream eval needs "
                        "a dataset from `invoke data` (its alignments place each utterance in the stream)")
    if base is None or candidate is None:
        default_base, default_candidate = resolve_models(cfg)
        base, candidate = base or default_base, candidate or default_candidate
    models = {"base": Checkpoint.of(base), "candidate": Checkpoint.of(candidate)}
    audio = [read_audio(r.path) for r in refs]
    rng = np.random.default_rng(ls.seed)
    convs = [build_conversation(refs, audio, ls.minutes, rng, (ls.pause_min, ls.pause_max), cfg.eval.flush_seconds)
             for _ in range(ls.conversations)]
    minutes = convs[0].steps // STEPS_PER_MINUTE
    rules = rules_of(cfg)
    start = time.perf_counter()
    with ThreadPoolExecutor(len(models)) as pool:  # the Rust streams run outside the GIL: one thread per model
        futures = {m: pool.submit(_stream_model, ckpt, convs, ls.runtime, m, i) for i, (m, ckpt) in
                   enumerate(models.items())}
        runs = {m: f.result() for m, f in futures.items()}
    streamed = time.perf_counter() - start
    scores = {m: [s for c, r in zip(convs, runs[m]) for s in score_conversation(c, r, rules)] for m in MODELS}
    table = {m: per_minute(scores[m], minutes) for m in MODELS}
    for m in MODELS:
        shares = np.array([padding_share(r.written, minutes) for r in runs[m]], dtype=float)
        for k, row in enumerate(table[m]):
            row["padding_share"] = float(np.nanmean(shares[:, k]))
    fine = {m: np.nanmean(np.array([padding_share(r.written, minutes * 6, FINE_STEPS) for r in runs[m]],
                                   dtype=float), axis=0).tolist() for m in MODELS}
    used = sorted({p.index for c in convs for p in c.placed})
    alone = None
    if ls.alone:
        used_refs, used_audio = [refs[i] for i in used], [audio[i] for i in used]
        with ThreadPoolExecutor(len(models)) as pool:
            futures = {m: pool.submit(_alone, ckpt, used_refs, used_audio, cfg, m, rules, i)
                       for i, (m, ckpt) in enumerate(models.items())}
            alone = {m: minute_figures(summarize(f.result())) for m, f in futures.items()}
    mimi = None
    if ls.mimi_drift:
        per_conv = np.array([mimi_agreement(models["base"], c, audio) for c in convs], dtype=float)
        mimi = [None if np.isnan(x) else float(x) for x in np.nanmean(per_conv, axis=0)]
    meta = {"base": str(models["base"]), "candidate": str(models["candidate"]), "runtime": ls.runtime,
            "data": str(data.resolve()), "split": cfg.eval.split, "minutes": minutes,
            "conversations": ls.conversations, "seed": ls.seed, "pause": [ls.pause_min, ls.pause_max],
            "flush_seconds": cfg.eval.flush_seconds, "rules": asdict(rules),
            "utterances_per_conversation": [len(c.placed) for c in convs],
            "distinct_clips": len(used), "stream_seconds": round(streamed, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = cfg.output_path(ls.out)
    with atomic_dir(out) as tmp:
        write_report(tmp, meta, table, alone, mimi, scores, fine)
        np.savez_compressed(tmp / "traces.npz", **{f"{m}_{k}_{name}": getattr(runs[m][k], name) for m in MODELS
                                                    for k in range(len(convs)) for name in ("written", "pause")})
    return out


# --- the report -----------------------------------------------------------------------------------

ROWS = (  # (key, label, kind): kind 'pct' (share), 'int'
    ("utterances", "utterances", "int"),
    ("wer", "WER", "pct"),
    ("digit_share", "spans written with digits", "pct"),
    ("exact_share", "spans exact in word form", "pct"),
    ("digits_right_share", "spans with the right digits", "pct"),
    ("dictations_cut_share", "dictations cut off (head > threshold)", "pct"),
    ("turn_end_share", "turn ends detected within 2 s", "pct"),
    ("padding_share", "steps writing padding", "pct"),
)


def _fmt(x, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if kind == "pct" else str(x)


def format_table(meta: dict, table: dict, alone: dict | None, mimi: list | None) -> str:
    """Markdown: one row per figure and model, one column per minute (and 'alone' first)."""
    minutes = meta["minutes"]
    head = ["figure (%)", "model"] + (["alone"] if alone else []) + [f"min {m + 1}" for m in range(minutes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, kind in ROWS:
        for m in MODELS:
            cells = [label if m == "base" else "", m]
            if alone:
                cells.append(_fmt(alone[m].get(key), kind) if key != "padding_share" else "-")
            cells += [_fmt(row.get(key), kind) for row in table[m]]
            lines.append("| " + " | ".join(cells) + " |")
    if mimi is not None:
        cells = ["Mimi codes as alone (codebook 1)", "both"] + (["-"] if alone else []) + [_fmt(x, "pct") for x in mimi]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The targets (#40), read off the per-minute table. For each figure: which way is worse
# when the candidate is compared with its base (None: the two differ by design, e.g. the number form).
TARGETS = (("wer", "higher"), ("digit_share", None), ("exact_share", None), ("digits_right_share", "lower"),
           ("dictations_cut_share", "higher"), ("turn_end_share", "lower"), ("padding_share", "higher"))
DRIFT_POINTS, BASE_POINTS, PADDING_POINTS = 2.0, 2.0, 5.0


def target_rows(table: dict) -> list[dict]:
    """Per figure: the candidate's largest distance from its minute 1 over the later minutes (points,
    the minute), and its largest gap to the base in the worse direction over all minutes (points, the
    minute; padding: more than the base's share + 5 points is the issue's "padding takes over")."""
    rows = []
    for key, worse in TARGETS:
        cand, base = [r.get(key) for r in table["candidate"]], [r.get(key) for r in table["base"]]
        drift = [(abs(c - cand[0]) * 100, m + 1) for m, c in enumerate(cand) if m and c is not None and
                 cand[0] is not None]
        gaps = []
        if worse:
            sign = 1 if worse == "higher" else -1
            gaps = [(sign * (c - b) * 100, m + 1) for m, (c, b) in enumerate(zip(cand, base))
                    if c is not None and b is not None]
        limit = PADDING_POINTS if key == "padding_share" else BASE_POINTS
        rows.append({"figure": key, "drift": max(drift) if drift else None, "gap": max(gaps) if gaps else None,
                     "drift_ok": None if key == "padding_share" or not drift else max(drift)[0] <= DRIFT_POINTS,
                     "gap_ok": None if not gaps else max(gaps)[0] <= limit})
    return rows


def format_targets(table: dict) -> str:
    def cell(value, ok) -> str:
        if value is None:
            return "-"
        return f"{value[0] + 0.0:.1f} (min {value[1]}) {'ok' if ok else 'MISSED'}" if ok is not None else \
            f"{value[0] + 0.0:.1f} (min {value[1]})"

    lines = ["| figure | candidate: farthest from its minute 1 (points) | candidate worse than base by (points) |",
             "|---|---|---|"]
    lines += [f"| {r['figure']} | {cell(r['drift'], r['drift_ok'])} | {cell(r['gap'], r['gap_ok'])} |"
              for r in target_rows(table)]
    return "\n".join(lines) + "\n"


PLOTTED = (("wer", "WER"), ("digits_right_share", "spans with the right digits"),
           ("dictations_cut_share", "dictations cut off (head > thr.)"), ("turn_end_share", "turn ends detected"),
           ("padding_share", "steps writing padding (thin: per 10 s)"))


def plot_minutes(path: Path, meta: dict, table: dict, alone: dict | None, mimi: list | None,
                 fine: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"base": "#404040", "candidate": "#1f77b4"}
    panels = PLOTTED + ((("mimi", "Mimi codes as alone"),) if mimi is not None else ())
    fig, grid = plt.subplots(2, 3, figsize=(11, 6.4), sharex=True)
    axes = grid.ravel()
    for ax in axes[len(panels):]:
        ax.axis("off")
    x = np.arange(meta["minutes"]) + 0.5  # each minute at its middle
    for ax, (key, title) in zip(axes, panels):
        if key == "mimi":
            ax.plot(x, [np.nan if v is None else 100 * v for v in mimi], "o-", color="#2ca02c")
        for m in MODELS if key != "mimi" else ():
            ys = [np.nan if r.get(key) is None else 100 * r[key] for r in table[m]]
            ax.plot(x, ys, "o-", color=colors[m], label=m)
            if key == "padding_share" and fine:
                ax.plot((np.arange(len(fine[m])) + 0.5) / 6, [100 * v for v in fine[m]], "-", color=colors[m],
                        lw=0.7, alpha=0.6)
            if alone and alone[m].get(key) is not None:
                ax.axhline(100 * alone[m][key], color=colors[m], ls=":", lw=1)
        ax.axvline(0.5, color="#ff7f0e", lw=0.8, alpha=0.6)  # 30 s: the longest training window
        ax.axvline(1.0, color="#d62728", lw=0.8, alpha=0.6)  # 60 s: the 750-frame context is full
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("stream time (min)")
        ax.set_xlim(0, meta["minutes"])
        top = max([100.0] + [100 * r[key] for m in MODELS for r in table[m] if key != "mimi" and r.get(key)])
        ax.set_ylim(-2, top + 2)
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("%")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{meta['conversations']} stream(s) of {meta['minutes']} min ({meta['runtime']}), each minute's "
                 f"utterances pooled; dotted: the same clips streamed alone;\norange: 30 s (invoke train's default "
                 f"window); red: 60 s (the 750-frame context is full)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(folder: Path, meta: dict, table: dict, alone: dict | None, mimi: list | None,
                 scores: dict[str, list[dict]], fine: dict | None = None) -> None:
    """metrics.json (every figure and utterance), report.md (the per-minute table), longstream.png."""
    utterances = [{"id": b["id"], "minute": b["minute"], "start_step": b["start_step"],
                   "reference": b["reference"], **{m: {"hypothesis": s["hypothesis"]} for m, s in
                                                   (("base", b), ("candidate", c))}}
                  for b, c in zip(scores["base"], scores["candidate"])]
    (folder / "metrics.json").write_text(json.dumps({"meta": meta, "minutes": table, "alone": alone, "mimi": mimi,
                                                     "padding_10s": fine, "utterances": utterances}, indent=1,
                                                    ensure_ascii=False) + "\n")
    text = (f"# Long-stream eval\n\nbase: `{meta['base']}`  \ncandidate: `{meta['candidate']}`  \n"
            f"{meta['conversations']} conversation(s) of {meta['minutes']} min, {meta['runtime']}, "
            f"{sum(meta['utterances_per_conversation'])} utterances ({meta['distinct_clips']} distinct clips)\n\n"
            + format_table(meta, table, alone, mimi)
            + f"\nThe issue's targets: the candidate within {DRIFT_POINTS:g} points of its minute 1 on every figure "
              f"(padding: no limit of its own), and never worse than the base by more than {BASE_POINTS:g} points "
              f"(padding: {PADDING_POINTS:g}). A minute holds about ten utterances per conversation: read the "
              f"utterance counts before a gap of a few points.\n\n"
            + format_targets(table) + "\n![per minute](longstream.png)\n")
    (folder / "report.md").write_text(text)
    plot_minutes(folder / "longstream.png", meta, table, alone, mimi, fine)


def summary_table(folder: str | Path) -> str:
    saved = json.loads((Path(folder) / "metrics.json").read_text())
    return format_table(saved["meta"], saved["minutes"], saved["alone"], saved["mimi"])
