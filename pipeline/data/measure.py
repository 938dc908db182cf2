"""How good and how fast the data stage is: the issue's two acceptance figures and a benchmark.

- piper digit match: piper speaks number prompts, Whisper annotates them knowing nothing of the
  prompt (its transcript, normalized to words, re-aligned); share of prompts whose spoken digit
  sequence comes out exactly right.
- espeak start error: Whisper force-aligns the prompt's words to espeak audio (the path
  `invoke data` takes for audio without timings); distance of each word start to espeak's own.

Piper draws its own noise inside onnxruntime (not seedable from here), so the piper figure moves
by a few points between runs of the same seed; use 100 prompts or more when quoting it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from ..errors import StageError
from .audio import WHISPER_RATE, resample, with_silence
from .normalize import digits_of
from .prompts import make_prompts
from .synth import Voice, pick_voice, synthesize


def _clip(voice: Voice, words: list[str], rng: random.Random):
    audio, rate, timings = synthesize(voice, words)
    lead = rng.uniform(0.0, 1.0)
    clip = resample(with_silence(audio, lead, 1.0, rate), rate, WHISPER_RATE)
    return clip, None if timings is None else [(s + lead, e + lead) for s, e in timings]


def measure_annotation(whisper: str = "tiny.en", n_piper: int = 40, n_espeak: int = 40, seed: int = 0,
                       cache_dir: str | Path = "artifacts/whisper", model=None, piper_noise: bool = True) -> dict:
    """{'piper_digit_match': share, 'espeak_median_start_error_s': seconds, ...} on fresh prompts.
    `piper_noise=False` turns piper's sampling noise off: reproducible audio (for tests)."""
    from .annotate import Annotator
    from .whisper_model import load_whisper

    annotator = Annotator(model if model is not None else load_whisper(whisper, cache_dir), "en")
    rng = random.Random(seed)
    prompts = make_prompts(n_piper + n_espeak, seed, french_fraction=0.0, plain_fraction=0.0)
    matches, misses, audio_s, busy_s = 0, [], 0.0, 0.0
    for prompt in prompts[:n_piper]:
        voice = pick_voice("en", rng, piper_fraction=1.0)
        if not piper_noise:
            voice = Voice(voice.engine, voice.name, {**voice.params, "noise_scale": 0.0, "noise_w_scale": 0.0})
        clip, _ = _clip(voice, prompt.spoken.tts, rng)
        start = time.perf_counter()
        try:
            words = annotator.annotate(clip).words
        except StageError as exc:  # unreadable transcript: a miss, with the reason
            words = [f"<{exc}>"]
        busy_s += time.perf_counter() - start
        audio_s += len(clip) / WHISPER_RATE
        if digits_of(words) == digits_of(prompt.spoken.words):
            matches += 1
        else:
            misses.append(f"{prompt.written!r} -> {' '.join(words)!r}")
    errors = []
    for prompt in prompts[n_piper:]:
        clip, truth = _clip(pick_voice("en", rng, piper_fraction=0.0), prompt.spoken.tts, rng)
        start = time.perf_counter()
        timings = annotator.align(clip, prompt.spoken.words)
        busy_s += time.perf_counter() - start
        audio_s += len(clip) / WHISPER_RATE
        errors += [abs(a[0] - b[0]) for a, b in zip(timings, truth)]
    return {
        "piper_prompts": n_piper,
        "piper_digit_match": matches / n_piper if n_piper else None,
        "piper_misses": misses,
        "espeak_prompts": n_espeak,
        "espeak_words": len(errors),
        "espeak_median_start_error_s": float(np.median(errors)) if errors else None,
        "espeak_p90_start_error_s": float(np.percentile(errors, 90)) if errors else None,
        "whisper_real_time_factor": busy_s / audio_s if audio_s else None,
    }


def measure_engine_digits(engine: str = "kokoro", n: int = 30, seed: int = 0, whisper: str = "tiny.en",
                          cache_dir: str | Path = "artifacts/whisper", model=None) -> dict:
    """Blind Whisper transcripts of `engine`'s number prompts ("piper" or "kokoro"): the share whose
    spoken digit sequence comes out exactly right (how intelligible the engine's digits are)."""
    from .annotate import Annotator
    from .whisper_model import load_whisper

    annotator = Annotator(model if model is not None else load_whisper(whisper, cache_dir), "en")
    rng = random.Random(seed)
    matches, misses = 0, []
    for prompt in make_prompts(n, seed, french_fraction=0.0, plain_fraction=0.0):
        voice = pick_voice("en", rng, 1.0 if engine == "piper" else 0.0,
                           kokoro_fraction=1.0 if engine == "kokoro" else 0.0)
        clip, _ = _clip(voice, prompt.spoken.tts, rng)
        try:
            words = annotator.annotate(clip).words
        except StageError as exc:
            words = [f"<{exc}>"]
        if digits_of(words) == digits_of(prompt.spoken.words):
            matches += 1
        else:
            misses.append(f"{voice.id}: {prompt.written!r} -> {' '.join(words)!r}")
    return {"engine": engine, "prompts": n, "digit_match": matches / n if n else None, "misses": misses}


def bench_data(n_espeak: int = 100, n_piper: int = 10, n_whisper: int = 10, seed: int = 0,
               cache_dir: str | Path = "artifacts/whisper", whisper: str = "tiny.en", n_kokoro: int = 0) -> dict:
    """Synthesis speed (utterances/s, per engine) and Whisper's annotation real-time factor."""
    from .annotate import Annotator
    from .whisper_model import load_whisper

    rng = random.Random(seed)
    prompts = make_prompts(max(n_espeak, n_piper, n_whisper, n_kokoro), seed, french_fraction=0.0, plain_fraction=0.25)
    out: dict = {}
    for engine, n in (("espeak", n_espeak), ("piper", n_piper), ("kokoro", n_kokoro)):
        if not n:  # not measured: no figure
            continue
        voices = [pick_voice("en", rng, 1.0 if engine == "piper" else 0.0,
                             kokoro_fraction=1.0 if engine == "kokoro" else 0.0) for _ in range(n)]
        synthesize(voices[0], prompts[0].spoken.tts)  # load the engine outside the timing
        start, audio_s = time.perf_counter(), 0.0
        for voice, prompt in zip(voices, prompts):
            audio, rate, _ = synthesize(voice, prompt.spoken.tts)
            audio_s += len(audio) / rate
        elapsed = time.perf_counter() - start
        out[f"{engine}_utterances_per_s"] = n / elapsed if n else None
        out[f"{engine}_real_time_factor"] = elapsed / audio_s if audio_s else None
    start = time.perf_counter()
    annotator = Annotator(load_whisper(whisper, cache_dir), "en")
    out["whisper_load_s"] = time.perf_counter() - start
    clips = [_clip(pick_voice("en", rng, 1.0), p.spoken.tts, rng)[0] for p in prompts[:n_whisper]]
    start = time.perf_counter()
    for clip, prompt in zip(clips, prompts):
        annotator.annotate(clip, prompt.spoken)
    elapsed = time.perf_counter() - start
    out["whisper_annotate_real_time_factor"] = elapsed / (sum(map(len, clips)) / WHISPER_RATE) if clips else None
    out["whisper_annotate_s_per_utterance"] = elapsed / len(clips) if clips else None
    return out


if __name__ == "__main__":  # python -m pipeline.data.measure [n_piper n_espeak]: the figures as JSON
    import json
    import sys

    counts = [int(x) for x in sys.argv[1:3]] or [100, 60]
    print(json.dumps({"annotation": measure_annotation(n_piper=counts[0], n_espeak=counts[-1]),
                      "bench": bench_data()}, indent=2))
