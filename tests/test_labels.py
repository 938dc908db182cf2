"""The text stream and pause targets, checked frame by frame on hand-made alignments."""

import torch

from pipeline.labels import (EPAD, IGNORE, PAD, Word, build_text_stream, frame_of, pause_targets,
                             shift_inputs)

VOCAB = {"order": [10, 11], "one": [12], "two": [13], "seven": [14, 15, 16], "nine": [17]}


def encode(word):
    return VOCAB[word]


def expected(num_frames, placed, masked=0):
    out = [PAD] * num_frames
    for frame, token in placed.items():
        out[frame] = token
    out[:masked] = [IGNORE] * masked
    return out


def test_word_tokens_start_half_a_second_after_the_word():
    # "order" at 1.0 s -> frame 12 + 6 frames of delay = 18; EPAD on the frame before.
    stream = build_text_stream([Word("order", 1.0, 1.4)], encode, 30)
    assert stream.tokens.tolist() == expected(30, {17: EPAD, 18: 10, 19: 11})
    assert stream.word_frames == [18] and stream.shifted == 0


def test_frame_rounding_follows_moshi():
    assert frame_of(0.079) == 0 and frame_of(0.08) == 1 and frame_of(1.5) == 18


def test_a_word_at_the_very_start_is_written_after_padding_as_in_a_live_stream():
    stream = build_text_stream([Word("one", 0.0, 0.3)], encode, 12)
    assert stream.tokens.tolist() == expected(12, {5: EPAD, 6: 12})  # frames 0-4: padding, nothing heard yet


def test_word_arriving_while_previous_is_still_written_waits():
    # "seven" (3 tokens) at 1.0 s -> frames 18..20; "nine" at 1.1 s would start at 19.
    words = [Word("seven", 1.0, 1.1), Word("nine", 1.1, 1.3), Word("two", 2.0, 2.2)]
    stream = build_text_stream(words, encode, 40)
    assert stream.tokens.tolist() == expected(40, {17: EPAD, 18: 14, 19: 15, 20: 16, 21: 17, 30: EPAD, 31: 13})
    assert stream.word_frames == [18, 21, 31] and stream.shifted == 1


def test_consecutive_words_with_a_gap_get_an_end_of_padding_each():
    words = [Word("one", 1.0, 1.2), Word("two", 1.4, 1.6)]  # frames 18 and 23
    stream = build_text_stream(words, encode, 30)
    assert stream.tokens.tolist() == expected(30, {17: EPAD, 18: 12, 22: EPAD, 23: 13})


def test_words_without_duration_or_past_the_window_are_dropped():
    words = [Word("one", 1.0, 1.0), Word("two", 5.0, 5.2), Word("nine", 1.2, 1.3)]
    stream = build_text_stream(words, encode, 30)
    assert stream.tokens.tolist() == expected(30, {20: EPAD, 21: 17})


def test_tokens_cut_at_the_window_end():
    stream = build_text_stream([Word("seven", 1.0, 1.4)], encode, 20)
    assert stream.tokens.tolist() == expected(20, {17: EPAD, 18: 14, 19: 15})


def test_unsorted_words_are_placed_in_time_order():
    a = build_text_stream([Word("two", 2.0, 2.2), Word("one", 1.0, 1.2)], encode, 40).tokens
    b = build_text_stream([Word("one", 1.0, 1.2), Word("two", 2.0, 2.2)], encode, 40).tokens
    assert torch.equal(a, b)


def test_pause_targets_follow_kyutais_definition():
    targets = pause_targets([10, 40], 60)
    half, one, two, three = targets.unbind(1)
    # 0.5 s = 6 frames: pause at t unless a word starts in (t, t + 6].
    assert [int(half[t]) for t in (3, 4, 9, 10, 33, 34, 40, 59)] == [1, 0, 0, 1, 1, 0, 1, 1]
    assert int(one[27]) == 1 and int(one[28]) == 0  # 1 s = 12.5 -> 12 frames (round half even)
    assert int(two[14]) == 1 and int(two[15]) == 0  # 2 s = 25 frames: (15, 40] holds frame 40
    assert int(three[2]) == 0 and half[41:].eq(1).all() and three[41:].eq(1).all()
    assert targets.shape == (60, 4)


def test_horizons_cover_the_frames_strictly_within_n_seconds():
    from pipeline.labels import HORIZON_FRAMES

    assert HORIZON_FRAMES == (6, 12, 25, 37)  # floor(N * 12.5): 3 s = 37.5 frames -> t+1 ... t+37
    three = pause_targets([40], 60)[:, 3]
    assert int(three[2]) == 1 and int(three[3]) == 0  # frame 40 is 38 frames (3.04 s) after frame 2
    one = pause_targets([40], 60)[:, 1]
    assert int(one[27]) == 1 and int(one[28]) == 0  # 12 frames (0.96 s) still within 1 s, 13 not


def test_inputs_are_shifted_one_frame_with_start_tokens():
    codes = torch.arange(3 * 5).view(1, 3, 5)
    inputs = shift_inputs(codes, text_start=8000, audio_start=2048)
    assert inputs[0, :, 0].tolist() == [8000, 2048, 2048]
    assert torch.equal(inputs[..., 1:], codes[..., :-1])


def test_digit_form_writes_the_number_once_it_is_complete():
    from pipeline.labels import digit_form

    words = [Word("Order", 0.2, 0.5), Word("seven", 0.6, 0.9), Word("three", 1.0, 1.3), Word("oh.", 1.4, 1.7),
             Word("Thanks.", 2.0, 2.4)]
    out = digit_form(words, [(1, 3, "730")])
    assert [w.text for w in out] == ["Order", "730.", "Thanks."]
    assert (out[1].start, out[1].end) == (1.4, 1.7)  # at the last spoken digit: written when complete
    # When "seven" is written, the word form writes "three" within 0.5 s; the digit form has
    # written nothing since "Order", so its 0.5 s head's target is "pause" mid-number.
    digits = build_text_stream(out, lambda w: [20], 60)
    spoken = build_text_stream(words, lambda w: [20], 60)
    t = frame_of(0.6 + 0.5)  # "seven" written
    assert pause_targets(digits.word_frames, 60)[t, 0] == 1
    assert pause_targets(spoken.word_frames, 60)[t, 0] == 0


def test_digit_form_keeps_spaced_written_forms_as_one_word():
    from pipeline.labels import digit_form

    words = [Word(w, i, i + 0.5) for i, w in enumerate(["call", "seven", "oh", "two", "five", "nine", "one"])]
    out = digit_form(words, [(1, 6, "702 591")])
    assert [w.text for w in out] == ["call", "702 591"] and out[1].start == 6
