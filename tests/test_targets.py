"""Training targets through `make_batch`, with known answers at the edges: a packed boundary, a
window that opens just after a long word started, a digit-form number cut by a window, the end
of a window, and the first and last word of an utterance (conventions in pipeline/labels.py)."""

import torch

from pipeline import train as tr
from pipeline.labels import EPAD, IGNORE, PAD, Word, digit_form

TOKENS = {"one": [11], "two": [12], "nine": [13], "long": [14, 15, 16, 17, 18], "Order": [19], "seven": [20],
          "three": [21], "oh.": [22], "730.": [23, 24, 25], "Thanks.": [26]}
HEAD_2S = 2


def encode(word):
    return TOKENS[word]


def sample(words, frames, numbers=()):
    codes = torch.arange(2 * frames).view(2, frames) % 50  # 2 codebooks; their values do not matter here
    return tr.Sample(codes, list(words), list(numbers))


def batch(samples, segments, window):
    return tr.make_batch([segments], samples, window, encode, text_start=1000, audio_start=64, delay=0.5)


def test_targets_after_an_utterance_ignore_the_next_one_packed_behind_it():
    # A: last word "two" starts at 1.0 s (written at frame 18), then 1.7 s of silence (37 frames in all).
    # B, packed behind it: its first word at 0.3 s would be written at window frame 37 + 10 = 47.
    a = sample([Word("one", 0.4, 0.7), Word("two", 1.0, 1.3)], 37)
    b = sample([Word("nine", 0.3, 0.6)], 25)
    packed = batch([a, b], [(0, 0, 37), (1, 0, 25)], 62)
    # After A's last word is written, every frame of A's tail is "pause": B's word does not count
    # (the old window-wide targets said "no pause" on 15 of these 18 frames).
    assert packed.pause[0, 19:37, HEAD_2S].tolist() == [1.0] * 18
    assert packed.pause[0, 19:37].eq(1).all()  # every head
    assert packed.pause[0, 17, 0] == 0  # the frame before "two" is written: a word within 0.5 s
    # B's targets are B's own, as if it opened a window alone.
    alone = batch([b], [(0, 0, 25)], 25)
    assert torch.equal(packed.pause[0, 37:62], alone.pause[0]) and torch.equal(packed.text[0, 37:62], alone.text[0])
    assert packed.head_mask[0].sum() == 62


def test_a_window_opening_just_after_a_long_word_started_masks_exactly_that_word():
    # "long" (5 tokens) starts at 1.0 s: EPAD at frame 17, tokens at 18-22. The window opens at
    # frame 15 = 1.2 s, 0.2 s after the word started: those six frames are unknown, nothing else.
    words = [Word("one", 0.3, 0.6), Word("long", 1.0, 1.6), Word("two", 2.0, 2.3)]
    utt = sample(words, 45)
    cut = batch([utt], [(0, 15, 30)], 30)
    expected = [PAD] * 30
    expected[2:8] = [IGNORE] * 6  # "long": EPAD and its five tokens (old code: PAD on frames 6 and 7)
    expected[15], expected[16] = EPAD, 12  # "two" at 2.0 s -> frame 31 = window frame 16
    assert cut.text[0].tolist() == expected
    # Pause targets are the whole utterance's: at the window's first frame, "long" is written
    # within 0.5 s (frame 18), so not a pause; from after "two" is written, pause.
    whole = batch([utt], [(0, 0, 45)], 45)
    assert torch.equal(cut.pause[0], whole.pause[0, 15:45])
    assert cut.pause[0, 0, 0] == 0 and cut.pause[0, 17:].eq(1).all()
    assert cut.head_mask[0].sum() == 30


def test_a_window_masks_a_word_up_to_its_last_token_and_not_a_word_starting_at_the_cut():
    # "long" (5 tokens) starts at 1.0 s: EPAD at frame 17, tokens at 18-22.
    words = [Word("long", 1.0, 1.6), Word("two", 2.0, 2.3)]
    utt = sample(words, 45)
    # A window opening on frame 22 (1.76 s) holds only its last token: still unheard, IGNORE.
    assert batch([utt], [(0, 22, 23)], 23).text[0, :2].tolist() == [IGNORE, PAD]
    # One frame later the word is over: nothing to mask.
    assert batch([utt], [(0, 23, 22)], 22).text[0, :2].tolist() == [PAD, PAD]
    # "two" starts at 2.0 s = frame 25 exactly: a window opening there hears all of it, so its
    # EPAD (frame 30) and token (frame 31) stay targets.
    at_start = batch([utt], [(0, 25, 20)], 20)
    assert at_start.text[0, 5:7].tolist() == [EPAD, 12] and (at_start.text[0] != IGNORE).all()


def test_a_digit_form_number_cut_by_the_window_keeps_its_frames_masked_and_its_targets():
    spoken = [Word("Order", 0.2, 0.5), Word("seven", 0.6, 0.9), Word("three", 1.0, 1.3), Word("oh.", 1.4, 1.7),
              Word("Thanks.", 2.4, 2.8)]
    words = digit_form(spoken, [(1, 3, "730")])  # "730." (3 tokens) placed at "oh." (1.4 s) -> frames 22-25
    utt = sample(words, 50, numbers=[(0.6, 1.7)])
    whole = batch([utt], [(0, 0, 50)], 50)
    assert whole.text[0, 22:26].tolist() == [EPAD, 23, 24, 25]
    assert whole.pause[0, 10:17, 0].eq(1).all()  # mid-dictation the digit form says "pause": DSM#152
    # The number's frames (left out of distillation): from the frame "seven" starts in, 0.6 s ->
    # frame 7, to the frame its end plus the delay falls in, 1.7 + 0.5 = 2.2 s -> frame 27, inclusive.
    assert whole.number_mask[0].nonzero().flatten().tolist() == list(range(7, 28))
    cut = batch([utt], [(0, 18, 32)], 32)  # opens at 1.44 s, 0.04 s after the number's word started
    assert cut.text[0, 4:8].tolist() == [IGNORE] * 4  # (old code: frames 6 and 7 trained as PAD)
    assert cut.text[0, :4].tolist() == [PAD] * 4 and cut.text[0, 17:19].tolist() == [EPAD, 26]
    assert torch.equal(cut.pause[0], whole.pause[0, 18:50])
    assert cut.pause[0, 0, 0] == 0  # the number is written within 0.5 s of the window's first frame
    # The number's frames: from "seven" (0.6 s) to its end + the delay (2.2 s, frame 27) -> window 0-9.
    assert cut.number_mask[0, :10].eq(1).all() and cut.number_mask[0, 10:].eq(0).all()


def test_a_window_that_ends_mid_utterance_keeps_the_targets_of_what_follows():
    # "long" (1.6 s) is written at frames 26-30 and "two" (2.0 s) at 31: the window ends at frame 29.
    words = [Word("one", 0.3, 0.6), Word("long", 1.6, 2.0), Word("two", 2.0, 2.3)]
    utt = sample(words, 45)
    head = batch([utt], [(0, 0, 30)], 30)
    whole = batch([utt], [(0, 0, 45)], 45)
    assert head.head_mask[0].sum() == 30  # known to the end: the utterance says what comes next
    assert torch.equal(head.pause[0], whole.pause[0, :30])
    assert head.pause[0, 29, 0] == 0 and head.pause[0, 29, HEAD_2S] == 0  # "two" follows in 2 frames
    # "long" is cut by the window's end (its last token falls outside), not dropped.
    assert head.text[0, 25:30].tolist() == [EPAD, 14, 15, 16, 17]


def test_first_and_last_word_of_an_utterance():
    words = [Word("one", 0.0, 0.3), Word("two", 1.0, 1.3)]
    utt = sample(words, 30)
    out = batch([utt], [(0, 0, 30)], 30)
    # The first word at 0.0 s: padding until its EPAD, as at the start of a live stream.
    assert out.text[0, :7].tolist() == [PAD] * 5 + [EPAD, 11]
    assert out.pause[0, 0].tolist() == [0.0] * 4  # the first word is written within 0.5 s
    # The last word: written at frame 18; after it, the turn is over: pause on every head to the end.
    assert out.text[0, 17:19].tolist() == [EPAD, 12]
    assert out.pause[0, 18:].eq(1).all() and out.pause[0, 17].eq(0).all()


def test_an_utterances_targets_are_built_once_per_tokenizer_and_delay(monkeypatch):
    utt = sample([Word("one", 0.4, 0.7), Word("two", 1.0, 1.3)], 37)
    calls = []
    real = tr.utterance_targets
    monkeypatch.setattr(tr, "utterance_targets", lambda *a: calls.append(a[3]) or real(*a))
    first = batch([utt], [(0, 0, 37)], 37)
    again = batch([utt], [(0, 5, 32)], 32)  # another piece of it: no rebuild
    assert calls == [0.5] and torch.equal(again.pause[0], first.pause[0, 5:])
    later = tr.make_batch([[(0, 0, 37)]], [utt], 37, encode, 1000, 64, delay=1.0)  # another delay: rebuilt
    assert calls == [0.5, 1.0] and later.text[0].tolist() != first.text[0].tolist()
