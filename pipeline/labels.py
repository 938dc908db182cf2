"""The text stream and the pause-head targets, frame by frame, exactly as the STT model expects.

Kyutai's stt-1b-en_fr writes each word `audio_delay_seconds` (0.5 s = 6 frames at 12.5 Hz)
after it starts in the audio. One text token per 80 ms frame; `PAD` (3) where nothing is
written, `EPAD` (0, end of padding) on the padding frame just before a word's first token.
Frames whose label is unknown are `IGNORE` (-1): moshi embeds -1 as zero and the loss skips it.

A word that arrives while the previous word's tokens are still being written waits for them
(its tokens shift right) rather than cutting them off as moshi-finetune's interleaver does:
a truncated word teaches the model to write half words.

Targets are a property of one whole utterance (`utterance_targets`), computed from its own
words and its own end, and only then sliced into training windows (`window_piece`): packing
never lets one utterance's words change another's targets, and a window that opens or closes
mid-utterance keeps the targets the whole utterance defines. The one thing a window that opens
mid-utterance cannot know is a word whose audio started before the window: the frames that
write it (its EPAD and tokens) are IGNORE, nothing else.

Pause heads. Kyutai's definition (vvolhejn, DSM#152): head k predicts that no new word is
added to the transcript within the next 0.5 / 1 / 2 / 3 s; class 0 of its 6 outputs is
"pause". The convention used everywhere in this project:

- In text frames: the target of head k at frame t is 1 ("pause") when no word's first token
  is written in frames t+1 ... t+H_k, with H_k = floor(N_k * 12.5) = 6, 12, 25, 37 frames
  (`HORIZON_FRAMES`): every frame strictly within N_k seconds after t.
- In audio time: the runtime emits step t once audio frame t has arrived, at (t+1) / 12.5 s
  (`emission_time`). A word starting at s seconds is written at frame floor((s + delay) * 12.5),
  so at emission time e head k says "no word starts in audio [e - delay, e - delay + H_k / 12.5)".
  At the end of a turn the 2 s head therefore turns to "pause" about `delay` after the last
  word's start, once nothing else follows.
- After an utterance's last word nothing follows, as at the end of a live turn: the targets
  there are "pause" up to and past its last frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .constants import FRAME_RATE

PAD = 3
EPAD = 0
IGNORE = -1
PAUSE_HORIZONS = (0.5, 1.0, 2.0, 3.0)
HORIZON_FRAMES = tuple(math.floor(h * FRAME_RATE + 1e-9) for h in PAUSE_HORIZONS)  # 6, 12, 25, 37


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio
    end: float


@dataclass(frozen=True)
class WrittenWord:
    """Where one word landed in the text stream."""
    start: float  # the word's start in the audio, seconds
    epad: int  # frame of its EPAD (== first when the previous word's tokens run up to it)
    first: int  # frame of its first token
    last: int  # frame of its last token


@dataclass
class TextStream:
    tokens: torch.Tensor  # [T] long: token ids, PAD, EPAD or IGNORE
    written: list[WrittenWord]  # the words that made it into the stream, in time order
    shifted: int  # words that had to wait for the previous word's tokens

    @property
    def word_frames(self) -> list[int]:
        """Frame of each written word's first token (what the pause targets count)."""
        return [w.first for w in self.written]


def frame_of(seconds: float) -> int:
    """The frame during which an event at `seconds` happens (moshi: start * 12.5 < t + 1)."""
    return math.floor(seconds * FRAME_RATE + 1e-9)


def emission_time(step: int):
    """Audio time at which the runtime emits step `step` (ints or numpy arrays): after the
    audio of frame `step` has arrived, (step + 1) / 12.5 s."""
    return (step + 1) / FRAME_RATE


def build_text_stream(
    words: Sequence[Word],
    encode: Callable[[str], list[int]],
    num_frames: int,
    delay_seconds: float = 0.5,
) -> TextStream:
    """Place each word's tokens from frame(start + delay) on, PAD elsewhere, EPAD before words.
    Frame 0 is the start of the audio: before the first word the stream holds padding, as a
    live stream does."""
    tokens = torch.full((num_frames,), PAD, dtype=torch.long)
    last = -1  # last frame holding a token of the previous word
    written, shifted = [], 0
    for word in sorted(words, key=lambda w: w.start):
        ids = encode(word.text.strip())
        if not ids or EPAD in ids or word.end <= word.start:  # see `unencodable`
            continue
        first = frame_of(word.start + delay_seconds)
        if first <= last:
            first, shifted = last + 1, shifted + 1
        if first >= num_frames:
            break
        epad = first
        if first - 1 > last and first - 1 >= 0:
            epad = first - 1
            tokens[epad] = EPAD
        span = ids[: num_frames - first]
        tokens[first:first + len(span)] = torch.tensor(span, dtype=torch.long)
        last = first + len(span) - 1
        written.append(WrittenWord(word.start, epad, first, last))
    return TextStream(tokens, written, shifted)


def unencodable(words: Sequence[str], encode: Callable[[str], list[int]]) -> list[str]:
    """The words `build_text_stream` leaves out: the tokenizer gives them no token, or <unk>
    (id 0 in Kyutai's tokenizers, which the text stream would read as EPAD)."""
    out = []
    for word in words:
        ids = encode(str(word).strip())
        if not ids or EPAD in ids:
            out.append(word)
    return out


def unencodable_summary(entries: Sequence[dict], encode: Callable[[str], list[int]]) -> str | None:
    """One line on the words of `entries` (`{"path", "alignments"}`) the tokenizer cannot
    encode, naming the first file; None when there are none."""
    known: dict[str, bool] = {}
    files, count, first = 0, 0, None
    for entry in entries:
        words = [a[0] for a in entry["alignments"]]
        for word in set(words) - known.keys():
            known[word] = bool(unencodable([word], encode))
        bad = [w for w in words if known[w]]
        if bad:
            files, count = files + 1, count + len(bad)
            first = first or (entry.get("path", "?"), bad[0])
    if not count:
        return None
    return (f"{count} word(s) in {files} utterance(s) the tokenizer cannot encode are left out of the labels "
            f"(first: {first[1]!r} in {first[0]}); fix or remove them in the dataset")


def pause_targets(word_frames: Sequence[int], num_frames: int,
                  horizons: Sequence[int] = HORIZON_FRAMES) -> torch.Tensor:
    """[T, H] float: 1.0 where no word's first token is written in frames t+1 ... t+H (see the
    module docstring). Nothing is written after the last frame: the stream ends as a turn does."""
    starts = torch.zeros(num_frames + 1, dtype=torch.long)
    for f in word_frames:
        if 0 <= f < num_frames:
            starts[f + 1] += 1
    cumulative = torch.cumsum(starts, 0)  # cumulative[i] = word starts in frames [0, i)
    t = torch.arange(num_frames)
    out = []
    for horizon in horizons:
        until = torch.clamp(t + horizon + 1, max=num_frames)
        out.append((cumulative[until] - cumulative[t + 1] == 0).float())
    return torch.stack(out, dim=1)


@dataclass
class UtteranceTargets:
    """The targets of one whole utterance, before it is cut into windows."""
    tokens: torch.Tensor  # [T] the text stream; PAD at its start, as at the start of a live stream
    pause: torch.Tensor  # [T, H] pause targets from its own words; "pause" after its last word
    written: list[WrittenWord]


def utterance_targets(words: Sequence[Word], encode: Callable[[str], list[int]], num_frames: int,
                      delay_seconds: float) -> UtteranceTargets:
    stream = build_text_stream(words, encode, num_frames, delay_seconds)
    return UtteranceTargets(stream.tokens, pause_targets(stream.word_frames, num_frames), stream.written)


def window_piece(targets: UtteranceTargets, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text tokens [count], pause targets [count, H]) of the utterance's frames first ...
    first + count - 1. If the piece opens mid-utterance (first > 0), the frames that write a
    word whose audio started before the piece (its EPAD and tokens) are IGNORE: the model has
    not heard its start. Every other frame, and every pause target, is the whole utterance's."""
    tokens = targets.tokens[first:first + count].clone()
    if first > 0:
        cut = first / FRAME_RATE
        for w in targets.written:
            if w.start < cut - 1e-9 and w.last >= first:
                tokens[max(w.epad - first, 0):w.last + 1 - first] = IGNORE
    return tokens, targets.pause[first:first + count]


def shift_inputs(codes: torch.Tensor, text_start: int, audio_start: int) -> torch.Tensor:
    """Model inputs for teacher forcing, as `LMModel.forward` builds them.

    `codes` is [B, 1 + n_q, T] (text stream then audio codebooks); step t sees the tokens of
    frame t - 1, and the start tokens (text_card, card) at t = 0. This matches Kyutai's Rust
    ASR, which feeds the previous frame's audio codes at each step.
    """
    initial = torch.full_like(codes[..., :1], audio_start)
    initial[:, 0] = text_start
    return torch.cat([initial, codes[..., :-1]], dim=-1)


_TRAILING = ".,?!;:"


def digit_form(words: Sequence[Word], spans: Sequence[tuple[int, int, str]]) -> list[Word]:
    """Labels as Kyutai's base model writes dictated numbers: each span of spoken digit words
    (inclusive first/last indices, written form) becomes ONE word, the written form, placed at
    the span's last spoken word, so the digits appear only once the number is complete. The
    sentence punctuation the last spoken word carried stays ("... four." -> "730-334."). A
    written form with spaces ("702 594 9184") stays one word: its tokens are written back to back.

    This is the DSM#152 behaviour: during the dictation no new word is written, so the pause
    targets say "pause" mid-number. It is used to build the model organism (issue #7), never
    to fine-tune."""
    starts = {first: (last, written) for first, last, written in spans}
    out, i = [], 0
    while i < len(words):
        if i not in starts:
            out.append(words[i])
            i += 1
            continue
        last, written = starts[i]
        tail = words[last]
        punct = tail.text[len(tail.text.rstrip(_TRAILING)):]
        out.append(Word(written + punct, tail.start, tail.end))
        i = last + 1
    return out
