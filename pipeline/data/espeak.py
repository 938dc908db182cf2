"""espeak-ng through its C library, with exact word timings.

The `espeakng-loader` wheel ships libespeak-ng and its data, so no system package is needed.
In synchronous mode the library calls us back with PCM chunks and events: a WORD event gives a
word's first sample, and PHONEME events let us find where it ends (the first pause phoneme after
it, or the next word's start). libespeak-ng keeps global state, so one `Espeak` per process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import StageError

_WORD, _END, _PHONEME = 1, 5, 7
_RATE, _PITCH, _RANGE = 1, 3, 4
_SYNCHRONOUS, _PHONEME_EVENTS, _CHARS_UTF8, _POS_CHARACTER = 2, 1, 1, 1
_IPA = 0x02  # espeak_TextToPhonemes phonememode bit 1: IPA instead of espeak's ASCII names

ENGLISH_VOICES = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
                  "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
FRENCH_VOICES = ["fr", "fr-be", "fr-ch"]
# Variants that keep speech intelligible (whisper/croak-like ones confuse even people).
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "Alex", "Annie", "Andy", "Andrea", "edward", "iven", "john",
            "max", "michel", "paul", "steph", "robert", "travis", "zac"]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Synthesis:
    audio: np.ndarray            # float32 mono
    sample_rate: int
    timings: list[tuple[float, float]]  # one (start, end) in seconds per input word


class Espeak:
    """One handle on libespeak-ng (process-wide)."""

    _instance: "Espeak | None" = None
    _lock = threading.Lock()

    def __new__(cls) -> "Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = super().__new__(cls)
                cls._instance._load()
            return cls._instance

    def _load(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, data, _PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, bytes]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: the C side holds a pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != 0:
            e = events[i]
            self._events.append((e.type, e.text_position, e.sample, bytes(e.id).split(b"\0")[0]))
            i += 1
        return 0

    def synthesize(self, words: list[str], voice: str = "en-us", rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> Synthesis:
        """Speak `words` (joined by spaces); one (start, end) per word, in seconds."""
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise StageError(f"espeak-ng has no voice {voice!r}; try one of {ENGLISH_VOICES + FRENCH_VOICES}")
            for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._events = [], []
            text = " ".join(words)
            data = text.encode() + b"\0"
            if self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
                raise RuntimeError(f"espeak-ng could not synthesize {text!r}")
            audio = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768
            events = self._events
        return Synthesis(audio, self.sample_rate, _word_timings(words, events, len(audio), self.sample_rate))

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """espeak-ng's IPA for `text` (stress marks kept, punctuation dropped): the front end of
        engines that speak phonemes (Kokoro)."""
        lib = self.lib
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        with self._lock:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise StageError(f"espeak-ng has no voice {voice!r}; try one of {ENGLISH_VOICES + FRENCH_VOICES}")
            source = ctypes.create_string_buffer(text.encode())  # owned here: the C side walks a pointer into it
            cursor = ctypes.c_char_p(ctypes.addressof(source))
            clauses = []
            while cursor.value:  # one call per clause; the cursor ends as NULL
                clauses.append((lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _IPA) or b"").decode())
        return " ".join(c for c in clauses if c)


def _word_timings(words: list[str], events: list[tuple[int, int, int, bytes]], n_samples: int,
                  sr: int) -> list[tuple[float, float]]:
    # Character ranges of each input word (espeak's text_position counts characters from 1).
    ranges, pos = [], 1
    for w in words:
        ranges.append((pos, pos + len(w)))
        pos += len(w) + 1
    owner = lambda text_pos: next((i for i, (a, b) in enumerate(ranges) if a <= text_pos < b), None)  # noqa: E731
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    current = None
    for kind, text_pos, sample, name in events:
        if kind == _WORD:
            i = owner(text_pos)
            if current is not None and current not in ends:
                ends[current] = sample
            if i is not None:
                starts.setdefault(i, sample)
                ends.pop(i, None)  # a word spoken as several (e.g. "double you") ends later
                current = i
        elif (kind == _PHONEME and name.startswith(b"_") and name != b"_|" and current is not None
              and current not in ends and sample > starts[current]):
            ends[current] = sample  # first pause after the word ("_|" is a zero-length boundary)
        elif kind == _END and current is not None and current not in ends:
            ends[current] = sample
    if current is not None and current not in ends:
        ends[current] = n_samples
    if not starts:
        raise RuntimeError(f"espeak-ng gave no word events for {' '.join(words)!r}")
    # espeak speaks some short words together with a neighbour ("on the") and reports one event
    # for both: share that word's span among the group by letter count.
    spans: list[tuple[float, float] | None] = [None] * len(words)
    groups: list[list[int]] = []
    for i in range(len(words)):
        if i in starts or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    if len(groups) > 1 and groups[0][0] not in starts:  # words before the first event join it
        groups[1] = groups.pop(0) + groups[0]
    for group in groups:
        timed = next(i for i in group if i in starts)
        a, b = starts[timed], max(ends.get(timed, n_samples), starts[timed] + len(group))
        weights = np.array([max(1, len(words[i])) for i in group], dtype=float)
        edges = a + (b - a) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        for i, lo, hi in zip(group, edges[:-1], edges[1:]):
            spans[i] = (float(lo) / sr, float(max(hi, lo + 1)) / sr)
    return [s for s in spans if s is not None]
