"""The metrics, pure: references, token streams and pause traces in, numbers out.

No model and no file is touched here, so every figure of the report can be checked on
hand-built cases. The definitions are in `pipeline.eval`'s docstring.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..labels import FRAME_RATE

PADDING = (0, 3)  # Kyutai's end-of-padding and padding text tokens
RULES = ("threshold", "unmute")
_EDGE_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class Span:
    """A number in the reference: inclusive indices into `Reference.words`."""

    first: int
    last: int
    written: str = ""


@dataclass
class Reference:
    """What was said: label words, optional word timings, number spans, speech bounds."""

    id: str
    words: list[str]
    times: list[tuple[float, float]] | None = None  # (start, end) of each word in audio seconds
    spans: list[Span] = field(default_factory=list)
    speech: tuple[float, float] | None = None  # first word's start, last word's end
    timing: str = "alignments"  # where `speech` comes from: 'alignments', 'energy' or 'none'
    path: str = ""
    category: str = ""

    def __post_init__(self) -> None:
        if self.times is not None and self.speech is None and self.times:
            self.speech = (min(t[0] for t in self.times), max(t[1] for t in self.times))

    def span_interval(self, span: Span) -> tuple[float, float] | None:
        if self.times is None:
            return None
        return self.times[span.first][0], self.times[span.last][1]


@dataclass(frozen=True)
class HypWord:
    """A word the model wrote: its text, the step of its first token, and the audio time that
    step stands for minus the text delay (Kyutai's `start_time`)."""

    text: str
    step: int
    start: float


@dataclass(frozen=True)
class Rules:
    """The end-of-turn rules applied to one pause head (see `pipeline.eval`)."""

    head: int = 2
    threshold: float = 0.5
    smooth_threshold: float = 0.6
    smooth_half_life: float = 0.01
    smooth_warmup: int = 12


# --- text ---------------------------------------------------------------------------------------

def decode_words(tokens: Sequence[int], decode: Callable[[list[int]], str],
                 delay_seconds: float = 0.5) -> list[HypWord]:
    """Kyutai's rule: tokens 0 and 3 are padding; a word ends when padding follows word tokens.
    A group decodes to text that may hold several words (no padding between them): split it."""
    words: list[HypWord] = []
    group: list[int] = []
    first = 0

    def flush() -> None:
        for text in decode(group).split():
            words.append(HypWord(text, first, first / FRAME_RATE - delay_seconds))

    for step, token in enumerate(int(t) for t in tokens):
        if token in PADDING:
            if group:
                flush()
                group = []
        else:
            if not group:
                first = step
            group.append(token)
    if group:
        flush()
    return words


def normalize_word(word: str) -> str:
    """Lower case, punctuation stripped at both ends ('Three.' -> 'three'); inner marks stay, so
    '1,296' and 'twenty-one' remain one word. Numbers are NOT normalized."""
    return _EDGE_PUNCT.sub("", word.lower())


def normalize_words(words: Sequence[str]) -> list[str]:
    return [n for n in (normalize_word(w) for w in words) if n]


def normalize_reference(words: Sequence[str], spans: Sequence[Span]) -> tuple[list[str], list[tuple[int, int] | None]]:
    """Normalized words and the spans re-indexed into them (None: nothing left of a span)."""
    kept, index = [], {}
    for i, word in enumerate(words):
        if n := normalize_word(word):
            index[i] = len(kept)
            kept.append(n)
    out = []
    for span in spans:
        idx = [index[i] for i in range(span.first, span.last + 1) if i in index]
        out.append((idx[0], idx[-1]) if idx else None)
    return kept, out


def has_digit(words: Sequence[str]) -> bool:
    return any(ch.isdigit() for w in words for ch in w)


def span_hypotheses(ref: Sequence[str], hyp: Sequence[str], spans: Sequence[tuple[int, int] | None]) -> list[list[str]]:
    """The hypothesis words of each reference span, from jiwer's word alignment.

    A span gets the hypothesis words aligned (equal or substituted) to its words, the words
    inserted between them, and words with a digit inserted right before or after it ("my number
    is 1296803" against "... one two nine six eight zero three": the digits land on the span).
    """
    import jiwer

    if not ref or not spans:
        return [[] for _ in spans]
    chunks = jiwer.process_words(" ".join(ref), " ".join(hyp) if hyp else "").alignments[0]
    aligned: dict[int, list[int]] = {}  # ref index -> hyp indices
    inserted: dict[int, list[int]] = {}  # insert before ref index -> hyp indices
    for c in chunks:
        if c.type in ("equal", "substitute"):
            for k in range(c.ref_end_idx - c.ref_start_idx):
                aligned.setdefault(c.ref_start_idx + k, []).append(c.hyp_start_idx + k)
        elif c.type == "insert":
            inserted.setdefault(c.ref_start_idx, []).extend(range(c.hyp_start_idx, c.hyp_end_idx))
    out = []
    for span in spans:
        if span is None:
            out.append([])
            continue
        a, b = span
        picked = [h for i in range(a, b + 1) for h in aligned.get(i, [])]
        picked += [h for p in range(a + 1, b + 1) for h in inserted.get(p, [])]
        picked += [h for p in (a, b + 1) for h in inserted.get(p, []) if has_digit([hyp[h]])]
        out.append([hyp[h] for h in sorted(set(picked))])
    return out


def error_counts(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> dict:
    """Corpus WER with jiwer over normalized words (utterances with an empty reference skipped)."""
    import jiwer

    pairs = [(" ".join(r), " ".join(h)) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return {"wer": None, "words": 0, "utterances": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    o = jiwer.process_words([p[0] for p in pairs], [p[1] for p in pairs])
    words = o.hits + o.substitutions + o.deletions
    return {"wer": (o.substitutions + o.deletions + o.insertions) / words, "words": words, "utterances": len(pairs),
            "substitutions": o.substitutions, "deletions": o.deletions, "insertions": o.insertions}


# --- pause heads ----------------------------------------------------------------------------------

def step_times(steps: int) -> np.ndarray:
    """Audio time of each step: step s reads the head after s / 12.5 s of audio."""
    return np.arange(steps) / FRAME_RATE


def threshold_rule(trace: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(trace) > threshold


def smoothed(trace: np.ndarray, half_life: float, warmup: int, initial: float = 1.0) -> np.ndarray:
    """Unmute's EMA of the pause head: starts at `initial`, updated from step `warmup` on with
    alpha = 1 - 2^(-0.08 / half_life); NaN before (not read)."""
    alpha = 1.0 if half_life <= 0 else 1.0 - 2.0 ** (-(1.0 / FRAME_RATE) / half_life)
    out = np.full(len(trace), np.nan)
    value = initial
    for s in range(warmup, len(trace)):
        value = (1.0 - alpha) * value + alpha * float(trace[s])
        out[s] = value
    return out


def unmute_rule(trace: np.ndarray, threshold: float, half_life: float, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """(fired per step, EMA): end of turn when the EMA is above `threshold`, never in warm-up."""
    ema = smoothed(trace, half_life, warmup)
    return np.nan_to_num(ema, nan=-1.0) > threshold, ema


def fired_steps(pause: np.ndarray, rules: Rules) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """rule name -> (fired per step, the value the rule compares)."""
    trace = np.asarray(pause)[:, rules.head]
    fired, ema = unmute_rule(trace, rules.smooth_threshold, rules.smooth_half_life, rules.smooth_warmup)
    return {"threshold": (threshold_rule(trace, rules.threshold), trace), "unmute": (fired, ema)}


def _inside(t: np.ndarray, interval: tuple[float, float]) -> np.ndarray:
    return (t >= interval[0] - 1e-9) & (t < interval[1] - 1e-9)


def vad_metrics(fired: np.ndarray, speech: tuple[float, float] | None,
                numbers: Sequence[tuple[float, float] | None] = ()) -> dict:
    """Premature cut-offs and end-of-turn latency of one rule on one utterance.

    cutoffs: times of the steps where the rule turns on (or is on at the first step) inside
    [speech start, speech end); in_numbers: those inside a number span's [start, end);
    spans_cut: per span, whether the rule is on at any step inside it (None: no timings);
    latency: time of the first firing step at or after speech end, minus that end (None: never).
    """
    fired = np.asarray(fired, dtype=bool)
    t = step_times(len(fired))
    if speech is None:
        return {"cut_off": None, "cutoffs": [], "in_numbers": 0, "spans_cut": [None] * len(numbers), "latency": None}
    inside = fired & _inside(t, speech)
    onset = inside & ~np.concatenate([[False], inside[:-1]])
    onsets = [float(x) for x in t[onset]]
    in_numbers = sum(any(n is not None and n[0] - 1e-9 <= x < n[1] - 1e-9 for n in numbers) for x in onsets)
    spans_cut = [None if n is None else bool((fired & _inside(t, n)).any()) for n in numbers]
    after = np.nonzero(fired & (t >= speech[1] - 1e-9))[0]
    latency = float(t[after[0]] - speech[1]) if len(after) else None
    return {"cut_off": bool(onsets), "cutoffs": onsets, "in_numbers": int(in_numbers), "spans_cut": spans_cut,
            "latency": latency}


# --- one utterance, then the whole set ----------------------------------------------------------

def score_utterance(ref: Reference, hyp_words: Sequence[str], pause: np.ndarray, rules: Rules) -> dict:
    """Every per-utterance figure for one model: text, number spans, and each rule's VAD figures."""
    ref_norm, spans = normalize_reference(ref.words, ref.spans)
    hyp_norm = normalize_words(hyp_words)
    span_hyps = span_hypotheses(ref_norm, hyp_norm, spans)
    numbers = [ref.span_interval(s) for s in ref.spans]
    vad = {name: vad_metrics(fired, ref.speech, numbers) for name, (fired, _) in fired_steps(pause, rules).items()}
    span_rows = []
    for i, (span, norm, hyp) in enumerate(zip(ref.spans, spans, span_hyps)):
        words = ref_norm[norm[0]:norm[1] + 1] if norm else []
        span_rows.append({
            "written": span.written, "reference": " ".join(words), "hypothesis": " ".join(hyp),
            "digits": has_digit(hyp), "exact": bool(words) and hyp == words,
            "interval": list(numbers[i]) if numbers[i] else None,
            "cut": {name: vad[name]["spans_cut"][i] for name in RULES},
        })
    return {"id": ref.id, "reference": " ".join(ref.words), "hypothesis": " ".join(hyp_words),
            "ref_words": ref_norm, "hyp_words": hyp_norm, "spans": span_rows,
            "speech": list(ref.speech) if ref.speech else None, "timing": ref.timing, "vad": vad}


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _rule_summary(scores: Sequence[dict], name: str) -> dict:
    measured = [s for s in scores if s["speech"] is not None]
    cuts = [s["vad"][name] for s in measured]
    spans = [sp["cut"][name] for s in scores for sp in s["spans"] if sp["cut"][name] is not None]
    latencies = [c["latency"] for c in cuts if c["latency"] is not None]
    dictations = [s["vad"][name]["cut_off"] for s in measured if s["spans"]]
    return {
        "utterances": len(measured),
        "utterances_cut": sum(c["cut_off"] for c in cuts),
        "utterances_cut_share": _share(sum(c["cut_off"] for c in cuts), len(measured)),
        "dictations": len(dictations),  # utterances with a number: the "dictations"
        "dictations_cut": sum(dictations),
        "dictations_cut_share": _share(sum(dictations), len(dictations)),
        "cutoffs": sum(len(c["cutoffs"]) for c in cuts),
        "cutoffs_in_numbers": sum(c["in_numbers"] for c in cuts),
        "timed_spans": len(spans),
        "spans_cut": sum(spans),
        "spans_cut_share": _share(sum(spans), len(spans)),
        "latency_median": statistics.median(latencies) if latencies else None,
        "latency_mean": statistics.fmean(latencies) if latencies else None,
        "latency_max": max(latencies) if latencies else None,
        "ended": len(latencies),
        "never_ended": len(cuts) - len(latencies),
    }


def summarize(scores: Sequence[dict]) -> dict:
    """The figures of one model over the whole set."""
    spans = [sp for s in scores for sp in s["spans"]]
    with_numbers = [s for s in scores if s["spans"]]
    other = [s for s in scores if not s["spans"]]
    digits, exact = sum(sp["digits"] for sp in spans), sum(sp["exact"] for sp in spans)
    return {
        "utterances": len(scores),
        "number_utterances": len(with_numbers),
        "number_spans": len(spans),
        "digit_spans": digits,
        "digit_share": _share(digits, len(spans)),
        "exact_spans": exact,
        "exact_share": _share(exact, len(spans)),
        "wer": {"all": error_counts([s["ref_words"] for s in scores], [s["hyp_words"] for s in scores]),
                "numbers": error_counts([s["ref_words"] for s in with_numbers], [s["hyp_words"] for s in with_numbers]),
                "other": error_counts([s["ref_words"] for s in other], [s["hyp_words"] for s in other])},
        "vad": {name: _rule_summary(scores, name) for name in RULES},
    }
