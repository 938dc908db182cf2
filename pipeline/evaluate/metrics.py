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

from ..constants import FRAME_RATE
from ..labels import emission_time

PADDING = (0, 3)  # Kyutai's end-of-padding and padding text tokens
RULES = ("threshold", "unmute")
END_OF_TURN_WINDOW = 2.0  # s after the last word's end within which an end of turn counts as detected
EPS = 1e-9
_EDGE_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class Turn:
    """When the speaker talks, in audio seconds: the first word's start, the last word's start
    and the last word's end."""

    first_start: float
    last_start: float
    last_end: float


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

    @property
    def turn(self) -> Turn | None:
        """The turn from the word timings; from energy bounds only its start and end are known,
        so the last word is taken to start where the speech ends (no "last word" interval)."""
        if self.times:
            return Turn(min(t[0] for t in self.times), max(t[0] for t in self.times), max(t[1] for t in self.times))
        if self.speech is not None:
            return Turn(self.speech[0], self.speech[1], self.speech[1])
        return None

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


_DIGIT_LANGS = ("en", "fr")
# Runs of digits, and words (hyphenated French pairs kept): "+1" "(756)" "355-1233" "ML154" "1,296"
# -> "1" "756" "355" "1233" "ML" "154" "1" "296"; "trente-quatre" stays one word.
_TOKENS = re.compile(r"\d+|[^\W\d_]+(?:-[^\W\d_]+)*")


def span_digits(ref_words: Sequence[str], written: str, hyp_words: Sequence[str]) -> bool | None:
    """Whether the hypothesis of a span read digit by digit has its digits right, in either form
    ("8551235", "855-1235" or "eight double five one two three five"). Letters and symbols are
    left out, so this measures recognizing the digits apart from the form they are written in.
    None for a span not read digit by digit (its spoken digits are not its written ones: "twelve",
    "twenty one"), or when there is nothing to compare with (no written form)."""
    from ..data.normalize import digits_of

    want = re.sub(r"\D", "", written)
    if not want:
        return None
    for lang in _DIGIT_LANGS:  # the reference's language: the one whose digit words read it
        if digits_of(list(ref_words), lang) == want:
            tokens = [t for w in hyp_words for t in _TOKENS.findall(w)]
            return digits_of(tokens, lang) == want
    return None


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
    """Audio time at which each step is emitted: step s after frame s's audio, (s + 1) / 12.5 s."""
    return emission_time(np.arange(steps))


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


def _in(t: float, interval: tuple[float, float]) -> bool:
    return interval[0] - EPS <= t < interval[1] - EPS


def vad_metrics(fired: np.ndarray, turn: Turn | None,
                numbers: Sequence[tuple[float, float] | None] = ()) -> dict:
    """Cut-offs and end of turn of one rule on one utterance (definitions in `pipeline.eval`).

    Times are emission times ((s + 1) / 12.5 s). An onset is a step where the rule is on and was
    off at the step before (off before the stream starts).
    cutoffs: onsets after the first word has started and before the last word has started;
    in_numbers: those inside a number span's [start, end); spans_cut: per span, whether one of
    them lies inside it (None: no timings); last_word: onsets during the last word [start, end);
    on_at_start: the rule is on at the first step after the first word has started (a client
    that arms on speech would end the turn there); latency: the first step at or after the last
    word's end at which the rule is on, minus that end (None: never in the stream);
    detected: latency at most END_OF_TURN_WINDOW.
    """
    fired = np.asarray(fired, dtype=bool)
    t = step_times(len(fired))
    if turn is None:
        return {"cut_off": None, "cutoffs": [], "in_numbers": 0, "spans_cut": [None] * len(numbers),
                "last_word": None, "on_at_start": None, "latency": None, "detected": None}
    onsets = [float(x) for x in t[fired & ~np.concatenate([[False], fired[:-1]])]]
    premature = [x for x in onsets if turn.first_start + EPS < x < turn.last_start - EPS]
    spans_cut = [None if n is None else any(_in(x, n) for x in premature) for n in numbers]
    after_start = np.nonzero(t > turn.first_start + EPS)[0]
    after_end = np.nonzero(fired & (t >= turn.last_end - EPS))[0]
    latency = float(t[after_end[0]] - turn.last_end) if len(after_end) else None
    return {"cut_off": bool(premature), "cutoffs": premature,
            "in_numbers": sum(any(n is not None and _in(x, n) for n in numbers) for x in premature),
            "spans_cut": spans_cut,
            "last_word": sum(_in(x, (turn.last_start, turn.last_end)) for x in onsets),
            "on_at_start": bool(len(after_start) and fired[after_start[0]]),
            "latency": latency, "detected": latency is not None and latency <= END_OF_TURN_WINDOW + EPS}


# --- one utterance, then the whole set ----------------------------------------------------------

def score_utterance(ref: Reference, hyp_words: Sequence[str], pause: np.ndarray, rules: Rules,
                    fired: dict[str, np.ndarray] | None = None) -> dict:
    """Every per-utterance figure for one model: text, number spans, and each rule's VAD figures.

    `fired`: each rule's on/off per step, already computed over a longer stream and cut to this
    utterance's steps (the long-stream eval: the Unmute rule's EMA and warm-up belong to the
    stream, not to each utterance); by default the rules are applied to `pause`."""
    ref_norm, spans = normalize_reference(ref.words, ref.spans)
    hyp_norm = normalize_words(hyp_words)
    span_hyps = span_hypotheses(ref_norm, hyp_norm, spans)
    numbers = [ref.span_interval(s) for s in ref.spans]
    if fired is None:
        fired = {name: on for name, (on, _) in fired_steps(pause, rules).items()}
    vad = {name: vad_metrics(fired[name], ref.turn, numbers) for name in RULES}
    span_rows = []
    for i, (span, norm, hyp) in enumerate(zip(ref.spans, spans, span_hyps)):
        words = ref_norm[norm[0]:norm[1] + 1] if norm else []
        span_rows.append({
            "written": span.written, "reference": " ".join(words), "hypothesis": " ".join(hyp),
            "digits": has_digit(hyp), "exact": bool(words) and hyp == words,
            "digits_right": span_digits(words, span.written, hyp),
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
    detected = [c["latency"] for c in cuts if c["detected"]]
    dictations = [s["vad"][name]["cut_off"] for s in measured if s["spans"]]
    last_word = [c["last_word"] > 0 for c in cuts]
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
        "last_word_fired": sum(last_word),
        "last_word_fired_share": _share(sum(last_word), len(cuts)),
        "on_at_start": sum(c["on_at_start"] for c in cuts),
        "on_at_start_share": _share(sum(c["on_at_start"] for c in cuts), len(cuts)),
        "turn_end_detected": len(detected),
        "turn_end_detected_share": _share(len(detected), len(cuts)),
        "latency_median": statistics.median(detected) if detected else None,  # of the detected turn ends
        "latency_mean": statistics.fmean(detected) if detected else None,
        "latency_max": max(detected) if detected else None,
        "ended": sum(c["latency"] is not None for c in cuts),  # on after the last word, in the stream
        "never_ended": sum(c["latency"] is None for c in cuts),
    }


def summarize(scores: Sequence[dict]) -> dict:
    """The figures of one model over the whole set."""
    spans = [sp for s in scores for sp in s["spans"]]
    with_numbers = [s for s in scores if s["spans"]]
    other = [s for s in scores if not s["spans"]]
    digits, exact = sum(sp["digits"] for sp in spans), sum(sp["exact"] for sp in spans)
    read = [sp["digits_right"] for sp in spans if sp.get("digits_right") is not None]  # reports before it: none
    return {
        "utterances": len(scores),
        "number_utterances": len(with_numbers),
        "number_spans": len(spans),
        "digit_spans": digits,
        "digit_share": _share(digits, len(spans)),
        "exact_spans": exact,
        "exact_share": _share(exact, len(spans)),
        "digit_read_spans": len(read),  # spans read digit by digit, the ones `digits_right` scores
        "digits_right_spans": sum(read),
        "digits_right_share": _share(sum(read), len(read)),
        "wer": {"all": error_counts([s["ref_words"] for s in scores], [s["hyp_words"] for s in scores]),
                "numbers": error_counts([s["ref_words"] for s in with_numbers], [s["hyp_words"] for s in with_numbers]),
                "other": error_counts([s["ref_words"] for s in other], [s["hyp_words"] for s in other])},
        "vad": {name: _rule_summary(scores, name) for name in RULES},
    }


# Thresholds of the end-of-turn regression flag: a candidate that ends turns less often or later
# than the base trades one failure (cutting callers off) for another (never answering).
WORSE_SHARE = 0.02
WORSE_LATENCY = 0.1


def end_of_turn_flags(base: dict, candidate: dict) -> list[str]:
    """One line per rule where the candidate's end-of-turn detection is worse than the base's:
    detected share lower by more than 2 points, or median latency longer by more than 0.1 s."""
    flags = []
    for name in RULES:
        b, c = base["vad"][name], candidate["vad"][name]
        bs, cs = b["turn_end_detected_share"], c["turn_end_detected_share"]
        if bs is not None and cs is not None and cs < bs - WORSE_SHARE - EPS:
            flags.append(f"{name}: turn ends detected within {END_OF_TURN_WINDOW:g} s fell from "
                         f"{100 * bs:.1f} % to {100 * cs:.1f} %")
        bl, cl = b["latency_median"], c["latency_median"]
        if bl is not None and cl is not None and cl > bl + WORSE_LATENCY + EPS:
            flags.append(f"{name}: median end-of-turn latency rose from {bl:.2f} s to {cl:.2f} s")
    return flags
