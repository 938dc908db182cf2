"""Offline TTS: espeak-ng word timings that match the audio, many voices, French, piper's voice."""

import random

import numpy as np
import pytest

from pipeline.data.espeak import ENGLISH_VOICES, FRENCH_VOICES, VARIANTS, Espeak
from pipeline.data.normalize import Reading, digits_of, normalize_text
from pipeline.data.prompts import CATEGORIES, make_prompts
from pipeline.data.synth import PIPER_VOICE, Voice, pick_voice, synthesize


def _rms(audio, rate, start, end):
    seg = audio[int(start * rate):int(end * rate)]
    return float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0


def test_espeak_word_timings_follow_the_audio():
    words = "five five five, one two three, four.".split()
    out = Espeak().synthesize(words, "en-us", rate=150)
    assert out.sample_rate == 22050 and len(out.timings) == len(words)
    duration = len(out.audio) / out.sample_rate
    assert all(0 <= s < e <= duration for s, e in out.timings)
    assert all(b[0] >= a[1] - 1e-6 for a, b in zip(out.timings, out.timings[1:]))
    loud = [_rms(out.audio, out.sample_rate, s, e) for s, e in out.timings]
    assert min(loud) > 0.02, loud
    # The commas are pauses: silence between "five," and "one", between "three," and "four".
    for i in (2, 5):
        gap = (out.timings[i][1], out.timings[i + 1][0])
        assert gap[1] - gap[0] > 0.1, gap
        assert _rms(out.audio, out.sample_rate, *gap) < 0.1 * min(loud)


def test_slower_rate_gives_later_words():
    words = "one two three four".split()
    fast = Espeak().synthesize(words, "en-us", rate=220).timings
    slow = Espeak().synthesize(words, "en-us", rate=120).timings
    assert slow[-1][0] > 1.3 * fast[-1][0]


def test_every_voice_and_variant_speaks_with_timings():
    engine = Espeak()
    english = "Order one two nine, six eight oh three.".split()
    french = "Commande zéro six, douze, soixante et onze.".split()
    for voice in ENGLISH_VOICES + FRENCH_VOICES:
        for variant in VARIANTS[::4] + [VARIANTS[-1]]:
            words = french if voice.startswith("fr") else english
            out = engine.synthesize(words, voice + (f"+{variant}" if variant else ""))
            assert len(out.timings) == len(words) and all(e - s > 0.02 for s, e in out.timings), (voice, variant)


def test_words_spoken_together_still_get_their_own_span():
    words = "I think there's a mistake on the invoice.".split()  # espeak reports "on the" as one word
    timings = Espeak().synthesize(words, "en-us").timings
    assert len(timings) == len(words) and all(e > s for s, e in timings)
    on, the = timings[6], timings[7]
    assert on[1] <= the[0] + 1e-9


def test_unknown_voice_is_refused():
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        Espeak().synthesize(["hello"], "xx-nope")


def test_letters_are_spoken_by_name():
    spoken = normalize_text("Code AB45.", "en", Reading())
    audio, rate, timings = synthesize(Voice("espeak", "en-us"), spoken.tts)
    assert len(timings) == len(spoken.words) == 5
    assert timings[1][1] - timings[1][0] > 0.1  # "ay" is a full syllable, not a reduced article


def test_piper_natural_voice():
    audio, rate, timings = synthesize(Voice("piper", PIPER_VOICE, {"length_scale": 1.0}), "Hello there.".split())
    assert rate == 22050 and timings is None
    assert 0.4 < len(audio) / rate < 3.0 and float(np.abs(audio).max()) > 0.1


def test_prompts_are_seeded_varied_and_digit_free():
    prompts = make_prompts(200, seed=3, french_fraction=0.2, plain_fraction=0.25)
    again = make_prompts(200, seed=3, french_fraction=0.2, plain_fraction=0.25)
    assert [p.spoken.text for p in prompts] == [p.spoken.text for p in again]
    assert [p.spoken.text for p in make_prompts(200, seed=4)] != [p.spoken.text for p in prompts]
    assert {p.category for p in prompts} == set(CATEGORIES)
    assert sum(p.category == "plain" for p in prompts) >= 0.25 * 200
    assert 20 <= sum(p.lang == "fr" for p in prompts) <= 60
    kinds = {s.kind for p in prompts for s in p.spoken.spans}
    assert kinds == {"order", "location", "phone", "code"}
    assert any(len(p.spoken.spans) == 2 for p in prompts)  # two numbers in one utterance
    for p in prompts:
        assert not any(c.isdigit() for c in p.spoken.text), p.spoken.text
        assert p.spoken.words[0][0].isupper() and p.spoken.words[-1][-1] in ".?!"
        assert (p.category == "plain") == (not p.spoken.spans)
        for span in p.spoken.spans:
            assert span.written in p.written
            words = p.spoken.words[span.first:span.last + 1]
            if span.kind != "code":
                assert digits_of(words, p.lang) == "".join(c for c in span.written if c.isdigit())


def test_voice_draws_cover_engines_and_stay_in_language():
    rng = random.Random(0)
    voices = [pick_voice("en", rng, 0.3) for _ in range(300)]
    assert 60 < sum(v.engine == "piper" for v in voices) < 120
    assert len({v.id for v in voices}) > 50
    french = [pick_voice("fr", rng, 1.0) for _ in range(50)]
    assert all(v.engine == "espeak" and v.name.split("+")[0] in FRENCH_VOICES for v in french)
