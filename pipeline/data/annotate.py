"""Word timings from openai-whisper: transcribe, force-align a known text, pick the reading.

Whisper writes dictated digits as "1296803", "129-6803" or "1, 2, 9". We never keep those:
the words to align are always the spoken word form (from the prompt, the user's transcript, or
Whisper's transcript run through the normalizer), and Whisper's cross-attention is then used to
force-align exactly those words ("re-align"), so every digit word gets its own start and end.
Where the reading of Whisper's digits is open ("zero" or "oh", "double three"), each candidate
is scored by Whisper's own likelihood of that text given the audio. The same score checks
Whisper's digits against every text one digit away (a digit dropped, doubled or misheard, as
"88555" for "eight eight five five"): an edit replaces Whisper's transcript only when it is far
more likely (`EDIT_MARGIN`).

Whisper's encoder runs on its own 30 s window, run once per clip and shared by decoding,
scoring and alignment. (Cutting the window to the clip's length is three times cheaper but
costs accuracy on digits: on the same 100 piper number clips, tiny.en got 80 right with a
window of max(10 s, clip + 1 s) and 91 with the full 30 s.) Audio longer than a window goes
through `whisper.transcribe` with word timestamps, and digit tokens are split evenly (`split_span`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import StageError
from .audio import WHISPER_RATE, speech_bounds
from .normalize import NormalizationError, Reading, Spoken, bare, digits_of, normalize_text, sentence_case

WINDOW_S = 30.0  # Whisper's input window
# Log-likelihood (nats) by which a text one digit away must beat Whisper's own transcript to
# replace it. On 300 piper number clips, right edits won by 5.0 nats or more, wrong ones by 4.9
# at most (three above 3); 4 kept the most right ones.
EDIT_MARGIN = 4.0
EDIT_SHORTLIST = 12  # edits scored in full after the cheap screen (`_shortlist`); 32 found no more


@dataclass
class Annotation:
    words: list[str]
    timings: list[tuple[float, float]]
    spoken: Spoken
    whisper_text: str = ""
    flags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    ref, hyp = [bare(w) for w in reference], [bare(w) for w in hypothesis]
    ref, hyp = [w for w in ref if w], [w for w in hyp if w]
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def _shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    return next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def split_span(start: float, end: float, words: list[str]) -> list[tuple[float, float]]:
    """Share one timed token ("1296803") among the words that speak it, by length, end > start."""
    weights = np.array([max(1, len(bare(w))) for w in words], dtype=float)
    edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    out = [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]
    return [(a, max(b, a + 0.01)) for a, b in out]


class Annotator:
    """Whisper annotation for one language."""

    def __init__(self, model, lang: str = "en", beam_size: int | None = None):
        import whisper

        if lang != "en" and not model.is_multilingual:
            raise StageError(f"this Whisper model is English-only and cannot annotate {lang!r} audio; "
                             "set data.whisper to a multilingual model (e.g. small or large-v3)")
        self.model, self.lang, self.beam_size = model, lang, beam_size
        self._audio_kv: tuple[torch.Tensor, dict] | None = None  # (features, their cross-attention keys/values)
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=lang, task="transcribe")

    # --- short clips: one encoder pass shared by decoding, scoring and alignment ----------------

    @contextmanager
    def _encoded(self, audio16k: np.ndarray):
        import whisper

        n = int(WINDOW_S * WHISPER_RATE)
        clip = audio16k[:n].astype(np.float32)
        mel = whisper.log_mel_spectrogram(np.pad(clip, (0, n - len(clip))), self.model.dims.n_mels)
        frames = mel.shape[-1] // 2 * 2
        mel = mel[:, :frames].to(self.model.device)
        encoder = self.model.encoder
        try:
            with torch.no_grad():
                features = encoder(mel[None])
            # Later calls (decode, find_alignment) re-run the encoder; hand them the cached features.
            encoder.forward = lambda _mel: features
            yield mel, min(frames, int(len(clip) / WHISPER_RATE * 100) // 2 * 2), features
        finally:
            encoder.__dict__.pop("forward", None)
            self._audio_kv = None

    def _transcribe_encoded(self, mel) -> str:
        """Greedy decoding; on a repetition loop or a very unsure result, beam search (as
        whisper.transcribe falls back, with its thresholds), keeping the surer of the two."""
        import whisper

        results = []
        for beam_size in dict.fromkeys([self.beam_size, 5]):
            options = whisper.DecodingOptions(language=self.lang, without_timestamps=True, fp16=False,
                                              temperature=0.0, beam_size=beam_size)
            result = whisper.decode(self.model, mel, options)
            if result.compression_ratio <= 2.4 and result.avg_logprob >= -1.0:
                return result.text.strip()
            results.append(result)
        return max(results, key=lambda r: (r.compression_ratio <= 2.4, r.avg_logprob)).text.strip()

    def _tokens(self, words: list[str]) -> tuple[list[int], list[int]]:
        tokens, owner = [], []
        for i, word in enumerate(words):
            ids = self.tokenizer.encode(" " + word)
            tokens += ids
            owner += [i] * len(ids)
        return tokens, owner

    def _sequence(self, words: list[str]) -> list[int]:
        """The decoder's input for scoring `words`: start-of-transcript tokens, the words, end-of-text."""
        return [*self.tokenizer.sot_sequence_including_notimestamps, *self._tokens(words)[0], self.tokenizer.eot]

    def _align_encoded(self, mel, frames: int, words: list[str]) -> list[tuple[float, float]]:
        from whisper.timing import find_alignment

        tokens, owner = self._tokens(words)
        pieces = find_alignment(self.model, self.tokenizer, tokens, mel, frames)
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        pos = 0
        for piece in pieces:
            for i in sorted({owner[k] for k in range(pos, min(pos + len(piece.tokens), len(owner)))}):
                starts.setdefault(i, float(piece.start))
                ends[i] = float(piece.end)
            pos += len(piece.tokens)
        if len(starts) != len(words):
            raise RuntimeError(f"Whisper alignment lost words of {' '.join(words)!r}")
        return [(starts[i], ends[i]) for i in range(len(words))]

    def _hidden(self, x: torch.Tensor, features) -> torch.Tensor:
        """The decoder's last hidden states for token rows `x` (before the vocabulary projection).
        The audio's keys and values in every cross-attention are the same for every text scored on
        one clip: they are computed once per clip."""
        decoder = self.model.decoder
        with torch.no_grad():
            if self._audio_kv is None or self._audio_kv[0] is not features:
                kv = {}
                for block in decoder.blocks:
                    kv[block.cross_attn.key] = block.cross_attn.key(features)
                    kv[block.cross_attn.value] = block.cross_attn.value(features)
                self._audio_kv = (features, kv)
            cache = {module: t.expand(len(x), -1, -1) for module, t in self._audio_kv[1].items()}
            h = decoder.token_embedding(x) + decoder.positional_embedding[:x.shape[1]]
            for block in decoder.blocks:
                h = block(h, features, mask=decoder.mask, kv_cache=cache)
            return decoder.ln(h)

    def _score(self, features, texts: list[list[str]], batch: int = 32) -> list[float]:
        """Whisper's total log-likelihood of each word list given the audio (teacher forcing)."""
        vocabulary = self.model.decoder.token_embedding.weight
        start = len(self.tokenizer.sot_sequence_including_notimestamps)
        sequences = [self._sequence(words) for words in texts]
        # Candidates are mostly one text with a few words changed, and the projection onto the
        # vocabulary is most of the cost: before its first token that differs from the first
        # candidate, a candidate's predictions are the first candidate's, so only later ones are made.
        reference = sequences[0]
        shared = [_shared_length(s, reference) for s in sequences]
        reference_cumulative = None
        scores: list[float] = []
        for first in range(0, len(sequences), batch):
            chunk = sequences[first:first + batch]
            width = max(map(len, chunk))
            x = torch.tensor([s + [self.tokenizer.eot] * (width - len(s)) for s in chunk], device=features.device)
            # Position t predicts token t + 1: the text and end-of-text count, never the prompt or padding.
            begin = torch.tensor([start - 1 if first + i == 0 else max(start - 1, shared[first + i] - 1)
                                  for i in range(len(chunk))])[:, None]
            end = torch.tensor([len(s) - 1 for s in chunk])[:, None]
            position = torch.arange(width - 1)[None]
            needed = ((position >= begin) & (position < end)).to(x.device)
            with torch.no_grad():
                logp = (self._hidden(x[:, :-1], features)[needed] @ vocabulary.T).float().log_softmax(-1)
            picked = logp.gather(-1, x[:, 1:][needed][:, None])[:, 0].cpu()
            rows = needed.nonzero()[:, 0].cpu()
            if reference_cumulative is None:  # the first candidate's prediction log-probs, summed up to each position
                own = picked[rows == 0]
                reference_cumulative = torch.cat([torch.zeros(start), own.cumsum(0)])
            totals = torch.zeros(len(chunk), dtype=picked.dtype).index_add_(0, rows, picked)
            scores += (totals + reference_cumulative[begin[:, 0]]).tolist()
        return scores

    # --- public ---------------------------------------------------------------------------------

    def transcribe(self, audio16k: np.ndarray) -> str:
        with self._encoded(audio16k) as (mel, _, _):
            return self._transcribe_encoded(mel)

    def align(self, audio16k: np.ndarray, words: list[str]) -> list[tuple[float, float]]:
        """Force-align `words` (the spoken form) to the audio: one (start, end) per word."""
        with self._encoded(audio16k) as (mel, frames, _):
            timings = self._align_encoded(mel, frames, words)
        return refine(timings, audio16k)

    def annotate(self, audio16k: np.ndarray, spoken: Spoken | None = None, text: str | None = None) -> Annotation:
        """Timings for a known spoken form, for a transcript `text` (its numbers' reading chosen by
        Whisper's likelihood), or, with neither, for Whisper's own transcript."""
        warnings: list[str] = []
        flags: list[str] = []
        if len(audio16k) / WHISPER_RATE > WINDOW_S - 1.0:
            if spoken is None and text is not None:
                spoken = sentence_case(normalize_text(text, self.lang, Reading(), warnings))
            return self._annotate_long(audio16k, spoken, warnings)
        known = spoken is not None or text is not None  # else Whisper's transcript is the label
        with self._encoded(audio16k) as (mel, frames, features):
            heard = self._transcribe_encoded(mel)
            if spoken is None:
                if not (text or heard):
                    raise StageError("Whisper heard no speech")
                transcript = text or clean_transcript(heard)
                alternatives = [] if text else digit_alternatives(transcript)
                spoken = self._best_reading(transcript, features, warnings, alternatives, edit_digits=not text)
                if warnings:
                    flags.append("ambiguous reading: " + "; ".join(warnings))
            if known:
                flags += agreement_flags(spoken, heard, self.lang)
            timings = self._align_encoded(mel, frames, spoken.words)
        return Annotation(spoken.words, refine(timings, audio16k), spoken, heard, flags, warnings)

    def _readings(self) -> list[Reading]:
        options = [("zero", "oh"), (False, True)] if self.lang == "en" else [("zero",), (False,)]
        return [Reading(zero=z, doubles=d, small=s) for z, d, s in itertools.product(*options, ("value", "digits"))]

    def _candidates(self, texts: Sequence[str], readings: Sequence[Reading],
                    warnings: list[str]) -> list[tuple[Spoken, str, Reading]]:
        """Every distinct reading of every text: (spoken form, text, reading). Later texts the
        normalizer cannot read are left out; the first one's error is raised."""
        candidates: dict[str, tuple[Spoken, str, Reading]] = {}
        for k, (text, reading) in enumerate(itertools.product(texts, readings)):
            try:  # every candidate meets the same ambiguities: report them once
                spoken = normalize_text(text, self.lang, reading, warnings if k == 0 else [])
            except NormalizationError:
                if text == texts[0]:
                    raise
                continue
            candidates.setdefault(spoken.text, (sentence_case(spoken), text, reading))
        return list(candidates.values())

    def _ranked(self, features, candidates: list[tuple[Spoken, str, Reading]]) -> list[tuple[float, Spoken, str, Reading]]:
        """The candidates with Whisper's log-likelihood of each given the audio, best first."""
        scores = self._score(features, [spoken.words for spoken, _, _ in candidates])
        return sorted(((score, *c) for score, c in zip(scores, candidates)), key=lambda c: -c[0])

    def _shortlist(self, features, reference: Spoken, candidates: list, size: int) -> list:
        """The `size` candidates whose first word that differs from `reference` Whisper finds most
        likely in its place (one decoder pass): a cheap screen before the full scores."""
        own = self._sequence(reference.words)
        with torch.no_grad():
            hidden = self._hidden(torch.tensor([own[:-1]], device=features.device), features)[0]
            logp = (hidden @ self.model.decoder.token_embedding.weight.T).float().log_softmax(-1)
        gains = []
        for spoken, _, _ in candidates:
            tokens = self._sequence(spoken.words)
            at = _shared_length(tokens, own)  # the first token that differs
            gains.append(float(logp[at - 1, tokens[at]] - logp[at - 1, own[at]]) if at < len(tokens) else -np.inf)
        order = sorted(range(len(candidates)), key=lambda i: -gains[i])
        return [candidates[i] for i in order[:size]]

    def _best_reading(self, heard: str, features, warnings: list[str], alternatives: Sequence[str] = (),
                      edit_digits: bool = False) -> Spoken:
        """The reading of `heard` (or of an alternative transcript) Whisper finds most likely.
        With `edit_digits`, a text one digit away (`digit_edits`) replaces it where Whisper finds
        that far more likely (`EDIT_MARGIN`)."""
        ranked = self._ranked(features, self._candidates([heard, *alternatives], self._readings(), warnings))
        score, spoken, text, reading = ranked[0]
        if warnings:  # the choice above is made by the audio, not by a default: say so
            warnings[:] = [w.rsplit("; read as", 1)[0] + "; took the reading Whisper finds most likely"
                           for w in warnings]
        if edit_digits and (edits := digit_edits(text)):
            readings = [reading, dataclasses.replace(reading, doubles=not reading.doubles)]
            candidates = [c for c in self._candidates([text, *edits], readings, []) if c[1] != text]
            # Whisper's choice is scored first: the edits share its opening words (see `_score`).
            shortlist = [(spoken, text, reading)] + self._shortlist(features, spoken, candidates, EDIT_SHORTLIST)
            edited = [c for c in self._ranked(features, shortlist) if c[2] != text]
            if edited and edited[0][0] > score + EDIT_MARGIN:
                warnings.append(f"digits corrected by the audio: Whisper wrote {text!r}, "
                                f"{edited[0][2]!r} is {edited[0][0] - score:.1f} nats more likely")
                return edited[0][1]
        return spoken

    def _annotate_long(self, audio16k: np.ndarray, spoken: Spoken | None, warnings: list[str]) -> Annotation:
        import whisper

        result = whisper.transcribe(self.model, audio16k, language=self.lang, word_timestamps=True, fp16=False,
                                    condition_on_previous_text=False, verbose=None)
        heard = result["text"].strip()
        merged: list[dict] = []
        for w in (w for segment in result["segments"] for w in segment.get("words", [])):
            if merged and not w["word"].startswith(" ") and re.search(r"\d", w["word"] + merged[-1]["word"]):
                # "4", "-9", "-15302": Whisper splits one written number into several timed words
                merged[-1] = {"word": merged[-1]["word"] + w["word"], "start": merged[-1]["start"], "end": w["end"]}
            else:
                merged.append(dict(w))
        words, timings = [], []
        for w in merged:
            text = w["word"].strip()
            if re.search(r"\d", text):
                piece = normalize_text(text, self.lang, Reading(), warnings).words
                timings += split_span(w["start"], w["end"], piece)
                words += piece
            elif text:
                words.append(text)
                timings.append((w["start"], max(w["end"], w["start"] + 0.01)))
        timings = refine(timings, audio16k)
        flags = ["ambiguous reading: " + "; ".join(warnings)] if warnings else []
        if spoken is not None:
            # A known text longer than a window: spread it over Whisper's words in order.
            flags += agreement_flags(spoken, heard, self.lang)
            if len(spoken.words) == len(words):
                return Annotation(spoken.words, timings, spoken, heard, flags, warnings)
            flags.append("long audio: timings follow Whisper's words, not the given transcript")
        return Annotation(words, timings, Spoken(words, list(words), []), heard, flags, warnings)


_O_TOKEN = re.compile(r"^O{1,3}[.,?!]?$")


def clean_transcript(text: str) -> str:
    """Whisper's habits around dictated digits, undone before normalizing:
    "323O" / "S7O" / "GSSO742" (letter O for zero next to digits), "699 3, OO." (a token of O's
    beside a number), "3-double 7" and "8'4" (punctuation gluing a digit to the next word), and a
    sentence repeated by a decoding loop."""
    text = re.sub(r"(?<=\d)[Oo]+\b|(?<=\d)O+|O+(?=\d)", lambda m: "0" * len(m.group()), text)
    # A short clip decoded as the same sentence twice or more: a repetition loop, keep one.
    text = re.sub(r"^(.+?[.?!])(?:\s+\1)+$", r"\1", text.strip())
    text = re.sub(r"(?<=\d)-(?=[a-z])", " ", text)  # "3-double 7", "2599-after"; "AB-45" keeps its dash
    text = re.sub(r"(?<=\d)'(?=\d)", " ", text)  # "8'4": an apostrophe between digits is a pause
    tokens = text.split(" ")
    for i, token in enumerate(tokens):
        near = [t for t in tokens[max(0, i - 1):i] + tokens[i + 1:i + 2]]
        if _O_TOKEN.match(token) and any(re.search(r"\d", t) for t in near):
            tokens[i] = re.sub("O", "0", token)
    return " ".join(tokens)


_MISHEARD_DIGITS = (
    (re.compile(r"(?<!\d)00([1-9])"), r"\1\1"),  # "0078" for a spoken "double seven eight" ("double-oh")
    (re.compile(r"(?<=\d)\.(?=\d)"), ""),  # "1.047" for "one oh four seven": a point nobody said
)


def digit_alternatives(text: str) -> list[str]:
    """Other transcripts Whisper tiny.en often means when it writes these digit forms, for the
    audio's likelihood to choose between (see `_best_reading`); empty where none applies."""
    alternatives = []
    for pattern, replacement in _MISHEARD_DIGITS:
        alternative = pattern.sub(replacement, text)
        if alternative != text:
            alternatives.append(alternative)
    return alternatives


def digit_edits(text: str) -> list[str]:
    """Every text one digit away from `text`: a digit left out, added or replaced ("548 88555" ->
    "548 8855", "95680" -> "956680"). tiny.en drops, doubles and mishears single digits."""
    out = []
    for match in re.finditer(r"\d", text):
        i = match.start()
        out.append(text[:i] + text[i + 1:])
        for d in "0123456789":
            out.append(text[:i] + d + text[i:])
            if d != text[i]:
                out.append(text[:i] + d + text[i + 1:])
            if not text[i + 1:i + 2].isdigit():  # after a number's last digit too
                out.append(text[:i + 1] + d + text[i + 1:])
    return [edit for edit in dict.fromkeys(out) if edit != text]


def agreement_flags(spoken: Spoken, heard: str, lang: str) -> list[str]:
    """Problems between what should have been said and what Whisper heard (empty: they agree)."""
    try:
        heard_words = normalize_text(clean_transcript(heard), lang, Reading(), warnings=[]).words
    except NormalizationError as exc:
        return [f"Whisper transcript unreadable: {exc}"]
    flags = []
    want, got = digits_of(spoken.words, lang), digits_of(heard_words, lang)
    if want != got:
        flags.append(f"digits disagree: prompt {want or '-'}, Whisper heard {got or '-'}")
    wer = word_error_rate([w for w in spoken.words], heard_words)
    if wer > 0.3:
        flags.append(f"transcript disagrees (WER {wer:.2f}): Whisper heard {heard!r}")
    return flags


def refine(timings: list[tuple[float, float]], audio16k: np.ndarray) -> list[tuple[float, float]]:
    """Keep DTW timings inside the speech: Whisper puts the first word at 0 s after a silence."""
    bounds = speech_bounds(audio16k, WHISPER_RATE)
    if bounds is None or not timings:
        return timings
    onset, offset = bounds
    out = []
    for start, end in timings:
        start = max(start, onset - 0.02)
        # Only trim ends far into the closing silence: the energy gate misses soft word endings.
        end = max(min(end, offset + 0.3), start + 0.02)
        out.append((round(start, 3), round(end, 3)))
    # keep starts ordered and words from overlapping after clamping
    for i in range(1, len(out)):
        s, e = out[i]
        s = max(s, out[i - 1][0] + 0.01)
        out[i - 1] = (out[i - 1][0], min(out[i - 1][1], s))
        out[i] = (s, max(e, s + 0.02))
    return out
