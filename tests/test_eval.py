"""Eval metrics on hand-built token streams and pause traces with known answers (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.eval import (Reference, Rules, Span, decode_words, end_of_turn_flags, error_counts, score_utterance,
                           span_hypotheses, summarize, vad_metrics)
from pipeline.evaluate.metrics import (Turn, fired_steps, normalize_reference, normalize_word, smoothed, span_digits,
                                       step_times, unmute_rule)
from pipeline.evaluate.sources import EvalError, from_utterance, read_transcribed_folder, transcript_words

PIECES = {10: "▁Hel", 11: "lo", 12: "▁12", 13: "▁nine", 14: "▁six"}


def fake_decode(ids):
    return "".join(PIECES[i] for i in ids).replace("▁", " ").strip()


def test_words_end_at_padding_and_split_on_spaces():
    tokens = [3, 3, 0, 10, 11, 3, 0, 12, 0, 13, 14]
    words = decode_words(tokens, fake_decode, delay_seconds=0.5)
    assert [w.text for w in words] == ["Hello", "12", "nine", "six"]
    assert [w.step for w in words] == [3, 7, 9, 9]  # "nine six": one group, flushed at the end
    assert words[0].start == pytest.approx(3 / 12.5 - 0.5)
    assert words[1].start == pytest.approx(7 / 12.5 - 0.5)
    assert decode_words([3, 0, 3], fake_decode) == []


def test_normalization_strips_edges_and_keeps_numbers():
    assert normalize_word("Three.") == "three"
    assert normalize_word("1,296.") == "1,296"  # no number normalization, one word
    assert normalize_word("(Twenty-one)") == "twenty-one"
    words, spans = normalize_reference(["My", "number", "is", "one", "two,", "—", "three."], [Span(3, 6), Span(5, 5)])
    assert words == ["my", "number", "is", "one", "two", "three"]
    assert spans == [(3, 5), None]


REF = "my number is one two nine six please".split()
SPAN = [(3, 6)]


@pytest.mark.parametrize("hyp, expected", [
    ("my number is one two nine six please", ["one", "two", "nine", "six"]),
    ("my number is 1296 please", ["1296"]),
    ("my number is 12 96 please", ["12", "96"]),
    ("my number is one two 96 please", ["one", "two", "96"]),
    ("my number is please", []),
    ("my number is one two nine six 7 please", ["one", "two", "nine", "six", "7"]),  # digit inserted at the edge
    ("my number is uh one two nine six please", ["one", "two", "nine", "six"]),  # filler at the edge: not the number
    ("my number is one two um nine six please", ["one", "two", "um", "nine", "six"]),  # inserted inside: part of it
])
def test_span_hypotheses_follow_jiwer_alignment(hyp, expected):
    assert span_hypotheses(REF, hyp.split(), SPAN) == [expected]


def test_span_hypotheses_edge_cases():
    assert span_hypotheses([], ["x"], [None]) == [[]]
    assert span_hypotheses(REF, [], SPAN) == [[]]
    assert span_hypotheses(REF, REF, [None, (0, 0)]) == [[], ["my"]]


def test_wer_is_raw_jiwer_without_number_normalization():
    out = error_counts([["a", "b", "c", "d"]], [["a", "x", "c"]])
    assert out["wer"] == pytest.approx(0.5) and (out["substitutions"], out["deletions"], out["insertions"]) == (1, 1, 0)
    assert error_counts([["one", "two"]], [["12"]])["wer"] == pytest.approx(1.0)  # "12" is not "one two"
    corpus = error_counts([["a", "b"], [], ["c", "d"]], [["a", "b"], ["x"], ["c", "d", "e"]])
    assert corpus["wer"] == pytest.approx(1 / 4) and corpus["utterances"] == 2  # empty reference skipped
    assert error_counts([], [])["wer"] is None


# "call one two now": "one two" is the number; the speaker talks from 0.40 to 2.40 s.
TIMED = Reference("u1", ["Call", "one", "two", "now."], [(0.40, 0.80), (0.96, 1.28), (1.36, 1.68), (2.00, 2.40)],
                  [Span(1, 2, "12")])
STEPS = 50  # 4 s


def trace(*on: int | range) -> np.ndarray:
    out = np.zeros(STEPS)
    for x in on:
        out[x if isinstance(x, range) else [x]] = 0.9
    return out


def test_reference_speech_interval_from_alignments():
    assert TIMED.speech == (0.40, 2.40)
    assert TIMED.span_interval(TIMED.spans[0]) == (0.96, 1.68)


def test_steps_are_emitted_after_their_frame():
    assert step_times(3).tolist() == pytest.approx([0.08, 0.16, 0.24])  # step s at (s + 1) / 12.5 s
    assert TIMED.turn == Turn(0.40, 2.00, 2.40)


def test_cutoff_inside_a_number_and_in_a_gap_and_latency_after_the_end():
    # step 15 -> 1.28 s: inside "one two"; steps 22-23 -> 1.84-1.92 s: the gap before "now" (still
    # talking); steps 36.. -> 2.96 s on: after the end of speech -> end of turn 0.56 s late.
    fired = trace(15, range(22, 24), range(36, STEPS)) > 0.5
    v = vad_metrics(fired, TIMED.turn, [TIMED.span_interval(TIMED.spans[0])])
    assert v["cutoffs"] == pytest.approx([1.28, 1.84])
    assert v["in_numbers"] == 1 and v["spans_cut"] == [True] and v["cut_off"] is True
    assert v["latency"] == pytest.approx(0.56) and v["detected"] is True
    assert v["last_word"] == 0 and v["on_at_start"] is False


def test_firing_only_after_the_end_is_no_cutoff():
    v = vad_metrics(trace(range(36, STEPS)) > 0.5, TIMED.turn, [(0.96, 1.68)])
    assert v == {"cut_off": False, "cutoffs": [], "in_numbers": 0, "spans_cut": [False], "last_word": 0,
                 "on_at_start": False, "latency": pytest.approx(0.56), "detected": True}


def test_a_rule_already_on_when_speech_starts_is_no_cutoff_but_is_reported():
    # On from the first step to step 6 (0.56 s): already on when "Call" starts at 0.40 s.
    v = vad_metrics(trace(range(0, 7)) > 0.5, TIMED.turn, [(0.96, 1.68)])
    assert v["cutoffs"] == [] and v["cut_off"] is False and v["on_at_start"] is True
    assert v["latency"] is None and v["detected"] is False  # never on after the end: never ended
    # Turning on exactly when the first word starts (step 4 -> 0.40 s) is not "after" it started:
    # no cut-off, and not on at the first step after the start (step 5, 0.48 s).
    assert vad_metrics(trace(4) > 0.5, TIMED.turn)["cutoffs"] == []
    assert vad_metrics(trace(4) > 0.5, TIMED.turn)["on_at_start"] is False
    assert vad_metrics(trace(5) > 0.5, TIMED.turn)["cutoffs"] == pytest.approx([0.48])  # one step later
    assert vad_metrics(trace(5) > 0.5, TIMED.turn)["on_at_start"] is True


def test_the_rule_is_off_before_the_stream_starts():
    # Speech from 0.00 s: a rule on from step 0 (emitted at 0.08 s) turned on at step 0, after the
    # first word started, so it is a cut-off at 0.08 s (an onset needs the rule off one step
    # before, and before the stream it is off).
    turn = Turn(0.0, 2.0, 2.4)
    v = vad_metrics(np.ones(STEPS, dtype=bool), turn)
    assert v["cutoffs"] == pytest.approx([0.08]) and v["cut_off"] is True and v["on_at_start"] is True


def test_firing_during_the_last_word_is_its_own_row():
    # Step 24 -> 2.00 s: the last word "now." has just started; step 28 -> 2.32 s: still in it.
    for step in (24, 28):
        v = vad_metrics(trace(step) > 0.5, TIMED.turn, [(0.96, 1.68)])
        assert v["cutoffs"] == [] and v["last_word"] == 1 and v["latency"] is None
    v = vad_metrics(trace(23) > 0.5, TIMED.turn)  # 1.92 s: before the last word starts
    assert v["cutoffs"] == pytest.approx([1.92]) and v["last_word"] == 0
    # On from the last word through its end: not premature, and the turn end is detected at once.
    v = vad_metrics(trace(range(26, STEPS)) > 0.5, TIMED.turn)
    assert v["last_word"] == 1 and v["latency"] == pytest.approx(0.0) and v["detected"] is True
    # Turning on exactly at the last word's end (step 29 -> 2.40 s) is the end of turn, latency 0.
    v = vad_metrics(trace(29) > 0.5, TIMED.turn)
    assert v["last_word"] == 0 and v["latency"] == pytest.approx(0.0)


def test_turn_end_detected_within_two_seconds():
    long = np.zeros(80)
    long[54] = 0.9  # emitted at 4.40 s = 2.00 s after the end: detected
    v = vad_metrics(long > 0.5, TIMED.turn)
    assert v["latency"] == pytest.approx(2.0) and v["detected"] is True
    long[54], long[55] = 0.0, 0.9  # 4.48 s: 2.08 s after the end, measured but not detected
    v = vad_metrics(long > 0.5, TIMED.turn)
    assert v["latency"] == pytest.approx(2.08) and v["detected"] is False


def test_without_timings_nothing_is_measured():
    none = vad_metrics(trace(15) > 0.5, None, [None])
    assert none["cut_off"] is None and none["latency"] is None and none["spans_cut"] == [None]
    assert none["detected"] is None and none["last_word"] is None
    energy = Reference("e", ["a", "b"], None, speech=(0.40, 2.40), timing="energy")
    assert energy.turn == Turn(0.40, 2.40, 2.40)  # no last-word interval: premature up to the end


def test_unmute_rule_ema_warmup_and_threshold():
    x = np.array([0.0] * 5 + [1.0] + [0.0] * 6 + [1.0, 1.0, 0.0, 0.0])
    ema = smoothed(x, half_life=0.08, warmup=12)  # alpha = 1 - 2^-1 = 0.5, EMA starts at 1.0
    assert np.isnan(ema[:12]).all()
    assert ema[12:] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    fired, _ = unmute_rule(x, threshold=0.6, half_life=0.08, warmup=12)
    assert fired.tolist() == [False] * 12 + [True, True, False, False]  # the spike at step 5 is ignored
    alpha = 1 - 2 ** (-0.08 / 0.01)  # Unmute's half-life: almost no smoothing
    assert smoothed(np.array([0.0] * 13), 0.01, 12)[12] == pytest.approx(1 - alpha)
    assert smoothed(np.array([0.3, 0.7]), 0.0, 0).tolist() == [0.3, 0.7]


def test_rules_read_the_configured_head():
    pause = np.zeros((STEPS, 4))
    pause[15, 2] = 0.55  # above 0.5, below 0.6
    pause[20, 1] = 0.99  # another head: ignored
    pause[25, 2] = 0.5  # exactly the threshold: not above it (Kyutai's clients: prs[2] > 0.5)
    rules = fired_steps(pause, Rules(head=2, threshold=0.5, smooth_threshold=0.6))
    assert np.nonzero(rules["threshold"][0])[0].tolist() == [15]
    assert not rules["unmute"][0].any()


def test_score_and_summary_of_base_writing_digits_vs_candidate_writing_words():
    rules = Rules()
    plain = Reference("u2", ["Hello", "there."], [(0.40, 0.80), (0.90, 1.30)])
    base_pause = np.zeros((STEPS, 4))
    base_pause[15, 2] = 0.9  # cut off mid-number (1.20 s)
    base_pause[36:, 2] = 0.9  # end of turn 0.48 s after 2.40 s
    cand_pause = np.zeros((STEPS, 4))
    cand_pause[32:, 2] = 0.9  # end of turn 0.16 s after 2.40 s
    plain_pause = np.zeros((STEPS, 4))
    plain_pause[20:, 2] = 0.9  # 1.60 s: 0.30 s after 1.30 s

    base = [score_utterance(TIMED, ["Call", "12", "now."], base_pause, rules),
            score_utterance(plain, ["Hello", "there."], plain_pause, rules)]
    cand = [score_utterance(TIMED, ["Call", "one", "two", "now."], cand_pause, rules),
            score_utterance(plain, ["Hello", "there,", "friend."], plain_pause, rules)]
    assert base[0]["spans"][0] | {"cut": None} == {"written": "12", "reference": "one two", "hypothesis": "12",
                                                   "digits": True, "exact": False, "digits_right": True,
                                                   "interval": [0.96, 1.68], "cut": None}
    assert base[0]["spans"][0]["cut"] == {"threshold": True, "unmute": True}
    assert cand[0]["spans"][0]["exact"] and not cand[0]["spans"][0]["digits"]

    b, c = summarize(base), summarize(cand)
    assert (b["utterances"], b["number_utterances"], b["number_spans"]) == (2, 1, 1)
    assert (b["digit_share"], b["exact_share"], c["digit_share"], c["exact_share"]) == (1.0, 0.0, 0.0, 1.0)
    assert b["wer"]["numbers"]["wer"] == pytest.approx(2 / 4)  # "12" for "one two": 1 sub + 1 del
    assert c["wer"]["numbers"]["wer"] == 0.0
    assert b["wer"]["other"]["wer"] == 0.0 and c["wer"]["other"]["wer"] == pytest.approx(1 / 2)  # one insertion
    assert b["wer"]["all"]["wer"] == pytest.approx(2 / 6)
    bt, ct = b["vad"]["threshold"], c["vad"]["threshold"]
    assert (bt["cutoffs"], bt["cutoffs_in_numbers"], bt["utterances_cut"], bt["spans_cut"]) == (1, 1, 1, 1)
    assert bt["utterances_cut_share"] == 0.5 and bt["spans_cut_share"] == 1.0
    assert (bt["dictations"], bt["dictations_cut"], bt["dictations_cut_share"]) == (1, 1, 1.0)  # plain one not counted
    assert ct["dictations_cut_share"] == 0.0
    assert (ct["cutoffs"], ct["utterances_cut"], ct["spans_cut_share"]) == (0, 0, 0.0)
    # end of turn: base 2.96 s and 1.68 s (0.56 and 0.38 s late), candidate 2.64 s (0.24 s)
    assert bt["latency_median"] == pytest.approx((0.56 + 0.38) / 2) and bt["latency_max"] == pytest.approx(0.56)
    assert ct["latency_median"] == pytest.approx((0.24 + 0.38) / 2) and ct["never_ended"] == 0
    assert bt["turn_end_detected_share"] == ct["turn_end_detected_share"] == 1.0
    assert end_of_turn_flags(b, c) == []  # the candidate ends turns sooner: no warning
    assert "threshold: median end-of-turn latency rose from 0.31 s to 0.47 s" in end_of_turn_flags(c, b)

    assert c["vad"]["unmute"]["cutoffs"] == 0 and b["vad"]["unmute"]["cutoffs_in_numbers"] == 1
    json.dumps([b, c, base, cand])  # every figure is JSON-ready


@pytest.mark.parametrize("ref, written, hyp, expected", [
    # the base's digit forms, punctuation and grouping aside
    ("eight double five one two three five", "8551235", ["8551235."], True),
    ("eight double five one two three five", "8551235", ["855-1235"], True),
    ("eight double five one two three five", "8551235", ["851135"], False),  # one digit dropped
    ("nine three eight five one nine eight", "9385198", ["#9385198"], True),
    ("plus one seven five six three five five one two three three", "+1 (756) 355-1233",
     ["+1", "(756)", "355-1233"], True),
    ("plus one seven five six three five five one two three three", "+1 (756) 355-1233",
     ["+1", "756-355-0233"], False),
    # the candidate's word forms: "double five" and "five five" are the same digits
    ("eight double five one two three five", "8551235", "eight five five one two three five".split(), True),
    ("eight double five one two three five", "8551235", "eight double five one three five".split(), False),
    ("nine zero five five eight five", "905585", "nine oh five five eight five".split(), True),
    # letters are left out: a wrong letter with the right digits has its digits right
    ("m l one five four", "ML154", "m n one five four".split(), True),
    ("m l one five four", "ML154", "m l one five".split(), False),
    ("m l one five four", "ML-154", ["ML154"], True),  # the base's code form, letters glued to digits
    ("m l one five four", "ML-154", ["sau154"], True),
    ("k seven seven", "K-77", ["kp-78"], False),
    ("one two nine six", "1296", ["1,296"], True),
    ("trente-quatre", "34", ["trente-quatre"], True),  # a French pair, hyphenated
    ("zéro six douze", "0612", "zéro six douze".split(), True),  # French pairs
    ("eight double five", "855", [], False),  # nothing written on the span
    ("twelve", "12", ["12"], None),  # a value, not read digit by digit
    ("twenty one", "21", ["21"], None),
    ("one two", "", ["12"], None),  # no written form to compare with
])
def test_digits_right_in_either_form(ref, written, hyp, expected):
    assert span_digits(ref.split(), written, hyp) is expected


def test_digits_right_in_the_summary_counts_only_spans_read_digit_by_digit():
    pause = np.zeros((STEPS, 4))
    ref = Reference("n", ["Call", "one", "two,", "at", "twelve."], [(0.4, 0.8), (0.96, 1.2), (1.3, 1.68), (1.8, 2.0),
                                                                     (2.1, 2.4)],
                    [Span(1, 2, "12"), Span(4, 4, "12")])
    base = score_utterance(ref, ["Call", "12,", "at", "12."], pause, Rules())
    cand = score_utterance(ref, ["Call", "one", "three", "at", "twelve."], pause, Rules())
    assert [sp["digits_right"] for sp in base["spans"]] == [True, None]
    assert [sp["digits_right"] for sp in cand["spans"]] == [False, None]
    b, c = summarize([base]), summarize([cand])
    assert (b["digit_read_spans"], b["digits_right_spans"], b["digits_right_share"]) == (1, 1, 1.0)
    assert (c["digit_read_spans"], c["digits_right_spans"], c["digits_right_share"]) == (1, 0, 0.0)
    old = {**base, "spans": [{k: v for k, v in sp.items() if k != "digits_right"} for sp in base["spans"]]}
    assert summarize([old])["digits_right_share"] is None  # a report written before the figure existed


def test_end_of_turn_flags_at_their_edges():
    def summary(share, median):
        rule = {"turn_end_detected_share": share, "latency_median": median}
        return {"vad": {"threshold": rule, "unmute": rule}}

    base = summary(0.90, 0.50)
    assert end_of_turn_flags(base, summary(0.88, 0.60)) == []  # exactly 2 points and 0.1 s worse: tolerated
    flags = end_of_turn_flags(base, summary(0.87, 0.61))
    assert flags == ["threshold: turn ends detected within 2 s fell from 90.0 % to 87.0 %",
                     "threshold: median end-of-turn latency rose from 0.50 s to 0.61 s",
                     "unmute: turn ends detected within 2 s fell from 90.0 % to 87.0 %",
                     "unmute: median end-of-turn latency rose from 0.50 s to 0.61 s"]
    assert end_of_turn_flags(base, summary(None, None)) == []  # nothing measured: nothing to compare


def test_summary_of_nothing_is_none_not_a_crash():
    s = summarize([])
    assert s["digit_share"] is None and s["wer"]["all"]["wer"] is None
    assert s["vad"]["threshold"]["latency_median"] is None and s["vad"]["threshold"]["utterances_cut_share"] is None


def test_references_from_dataset_utterances():
    from pipeline.data import NumberSpan, Utterance

    u = Utterance(path="/d/eval/00001.wav", duration=3.0, alignments=[
        ("Call", (0.4, 0.8), "SPEAKER_MAIN"), ("one", (0.96, 1.28), "SPEAKER_MAIN"), ("two.", (1.36, 1.68), "SPEAKER_MAIN")],
        text="Call one two.", written="Call 12.", lang="en", voice="v", category="digits",
        number_spans=[NumberSpan(1, 2, "12", "digits")])
    ref = from_utterance(u)
    assert ref.id == "eval/00001" and ref.speech == (0.4, 1.68) and ref.spans == [Span(1, 2, "12")]
    assert ref.timing == "alignments" and ref.category == "digits"
    u.number_spans = [{"first": 1, "last": 5, "written": "12", "kind": "digits"}]
    with pytest.raises(EvalError, match="outside"):
        from_utterance(u)


def test_plain_transcripts_give_spans():
    words, spans = transcript_words("My PIN is 1296, thanks.")
    assert words == ["My", "PIN", "is", "one", "two", "nine", "six,", "thanks."]
    assert spans == [Span(3, 6, "1296")]
    words, spans = transcript_words("call one two nine now and then one more")
    assert spans == [Span(1, 3, "129")]  # a lone "one" is no number


def test_folder_of_audio_with_transcripts(tmp_path):
    from pipeline.data.audio import write_wav

    rate = 24_000
    t = np.arange(rate) / rate
    audio = np.concatenate([np.zeros(rate // 2), 0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(rate)]).astype(np.float32)
    write_wav(tmp_path / "a.wav", audio)
    (tmp_path / "a.txt").write_text("Call 555 1234 now\n")
    write_wav(tmp_path / "no_transcript.wav", audio)
    refs = read_transcribed_folder(tmp_path)
    assert [r.id for r in refs] == ["a"] and refs[0].timing == "energy" and refs[0].times is None
    assert refs[0].speech[0] == pytest.approx(0.5, abs=0.03) and refs[0].speech[1] == pytest.approx(1.5, abs=0.03)
    assert len(refs[0].spans) == 1 and refs[0].span_interval(refs[0].spans[0]) is None
    score = score_utterance(refs[0], ["Call", "5551234", "now"], np.zeros((60, 4)), Rules())
    assert score["spans"][0]["digits"] and score["spans"][0]["cut"] == {"threshold": None, "unmute": None}
    assert not math.isnan(score["speech"][1])


def test_a_recording_session_is_evaluated_from_its_prompt_files(tmp_path):
    """`invoke record` writes <id>.wav with <id>.prompt.json (no .txt): `invoke eval --data` reads the
    spoken text of the prompt file, so the README's three your-own-voice commands work; a .txt wins."""
    import json

    from pipeline.data.audio import write_wav

    audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(24_000) / 24_000).astype(np.float32)
    write_wav(tmp_path / "me-0-0001.wav", audio)
    (tmp_path / "me-0-0001.prompt.json").write_text(json.dumps(
        {"written": "Order 1296.", "text": "Order one two nine six.", "lang": "en"}))
    write_wav(tmp_path / "me-0-0002.wav", audio)
    (tmp_path / "me-0-0002.prompt.json").write_text("{}")
    (tmp_path / "me-0-0002.txt").write_text("Hello there")
    refs = read_transcribed_folder(tmp_path)
    assert [r.id for r in refs] == ["me-0-0001", "me-0-0002"]
    assert refs[0].words == ["Order", "one", "two", "nine", "six."] and refs[0].spans == [Span(1, 4, "1296")]
    assert refs[1].words == ["Hello", "there"]
    (tmp_path / "me-0-0002.txt").unlink()   # an unreadable prompt file is one line naming it
    with pytest.raises(EvalError, match="me-0-0002.prompt.json"):
        read_transcribed_folder(tmp_path)
