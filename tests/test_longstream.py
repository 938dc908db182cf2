"""The long-stream eval (issue #40): conversations built as documented, each utterance scored in
its own window of the stream with `invoke eval`'s definitions, figures per minute."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.constants import FRAME_RATE, FRAME_SAMPLES, SAMPLE_RATE
from pipeline.evaluate.metrics import HypWord, Reference, Rules, Span, score_utterance
from pipeline.longstream import (STEPS_PER_MINUTE, Conversation, LongStream, Placed, build_conversation,
                                 padding_share, per_minute, plan_conversation, score_conversation)

RULES = Rules(head=2, threshold=0.5, smooth_threshold=0.6, smooth_half_life=0.01, smooth_warmup=12)


def ref(name: str, words: list[str], first: float, step: float = 0.4, spans=()) -> Reference:
    """Words of `step` s each, back to back from `first` s."""
    times = [(first + k * step, first + (k + 1) * step) for k in range(len(words))]
    return Reference(name, words, times, list(spans))


# --- building a conversation ----------------------------------------------------------------------

def test_pauses_are_drawn_between_words_and_never_cut_a_clip():
    # Clips of 2 s (25 frames), words from 0.5 s to 1.5 s: 0.5 s of tail + 0.5 s of lead = 1.0 s of
    # their own silence. A drawn pause of 2 s puts the next first word at last_end + 2 s:
    # start = ceil((1.5 + 2 - 0.5) * 12.5) = ceil(37.5) = 38 frames after the previous start, so the
    # real pause is 38 / 12.5 + 0.5 - 1.5 = 2.04 s (rounded up to whole frames).
    refs = [ref("a", ["x", "y"], 0.5, 0.5), ref("b", ["z", "w"], 0.5, 0.5)]
    lengths = [2 * SAMPLE_RATE] * 2
    plan, total = plan_conversation(refs, lengths, 1.0, np.random.default_rng(0), (2.0, 2.0), 2.0)
    assert total == STEPS_PER_MINUTE == 750
    starts = [s for _, s, _ in plan]
    assert starts[0] == 0 and all(b - a == 38 for a, b in zip(starts, starts[1:]))
    # the last clip and 2 s of flush (25 frames) end within the minute; one more would not
    assert starts[-1] + 25 + 25 <= 750 < starts[-1] + 38 + 25 + 25
    # a drawn pause shorter than the clips' own silence (1.0 s): the clips are laid end to end
    plan, _ = plan_conversation(refs, lengths, 1.0, np.random.default_rng(0), (0.2, 0.2), 2.0)
    starts = [s for _, s, _ in plan]
    assert all(b - a == 25 for a, b in zip(starts, starts[1:]))


def test_pauses_stay_within_the_drawn_range_and_every_clip_is_used_before_any_repeats():
    rng = np.random.default_rng(3)
    refs = [ref(f"u{k}", ["a"] * (2 + k % 3), 0.1 + 0.05 * k) for k in range(7)]
    lengths = [int((r.times[-1][1] + 0.3) * SAMPLE_RATE) + 17 * k for k, r in enumerate(refs)]
    plan, total = plan_conversation(refs, lengths, 3.0, rng, (1.0, 3.0), 2.0)
    for (i, s, _), (j, t, _) in zip(plan, plan[1:]):
        pause = (t / FRAME_RATE + refs[j].times[0][0]) - (s / FRAME_RATE + refs[i].times[-1][1])
        assert 1.0 - 1e-9 <= pause <= 3.0 + 1 / FRAME_RATE + 1e-9
    order = [i for i, _, _ in plan]
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    # seeded: the same plan again
    assert plan_conversation(refs, lengths, 3.0, np.random.default_rng(3), (1.0, 3.0), 2.0)[0] == plan


def test_the_audio_of_each_clip_lands_at_its_start_and_windows_run_to_the_next_clip():
    refs = [ref("a", ["x"], 0.2), ref("b", ["y"], 0.3)]
    audio = [np.full(FRAME_SAMPLES * 10 + 5, 0.25, np.float32), np.full(FRAME_SAMPLES * 12, -0.5, np.float32)]
    conv = build_conversation(refs, audio, 0.5, np.random.default_rng(1), (1.0, 1.0), 2.0)
    assert len(conv.audio) == conv.steps * FRAME_SAMPLES and conv.steps == 375
    for p, nxt in zip(conv.placed, conv.placed[1:] + [None]):
        a = audio[p.index]
        np.testing.assert_array_equal(conv.audio[p.start * FRAME_SAMPLES:p.start * FRAME_SAMPLES + len(a)], a)
        assert p.frames == math.ceil(len(a) / FRAME_SAMPLES)
        assert p.end == (nxt.start if nxt else conv.steps)
        assert not conv.audio[(p.start + p.frames) * FRAME_SAMPLES:p.end * FRAME_SAMPLES].any()  # silence between


def test_a_conversation_shorter_than_its_first_clip_is_refused():
    from pipeline.evaluate.sources import EvalError

    with pytest.raises(EvalError, match="longstream.minutes"):
        plan_conversation([ref("a", ["x"], 0.2)], [SAMPLE_RATE * 30], 0.5, np.random.default_rng(0), (1, 3), 2.0)


# --- scoring each utterance in its window -----------------------------------------------------------

def _two_utterances() -> tuple[Conversation, LongStream]:
    """Utterance 1 at frame 0 (window 0..100), utterance 2 at frame 800 (window 800..1500), in
    minute 2: its first word starts at 800 / 12.5 + 1.0 = 65 s."""
    r1 = ref("one", ["call", "me"], 1.0, 0.5)
    r2 = ref("two", ["one", "two", "three"], 1.0, 0.5, [Span(0, 2, "123")])
    conv = Conversation(np.zeros(1500 * FRAME_SAMPLES, np.float32),
                        [Placed(r1, 0, 800, 40, 0), Placed(r2, 800, 1500, 40, 1)])
    pause = np.zeros((1500, 4), np.float32)
    pause[800 + 20, 2] = 0.9  # inside utterance 2's speech (1.0 - 2.5 s): emitted at 21 / 12.5 = 1.68 s
    pause[800 + 40:, 2] = 0.9  # its turn end: on from 41 / 12.5 = 3.28 s, 0.78 s after its last word ends
    words = [HypWord("call", 30, 0.0), HypWord("me", 36, 0.0),  # in window 1
             HypWord("one", 820, 0.0), HypWord("two", 826, 0.0), HypWord("three", 832, 0.0)]
    written = np.full(1500, 3)
    written[[30, 36]] = 100  # minute 1: 2 of 750 steps write a word
    return conv, LongStream(written, pause, words)


def test_each_utterance_is_scored_on_its_own_window():
    conv, run = _two_utterances()
    s1, s2 = score_conversation(conv, run, RULES)
    assert s1["hyp_words"] == ["call", "me"] and s2["hyp_words"] == ["one", "two", "three"]
    assert (s1["minute"], s2["minute"]) == (0, 1)
    thr1, thr2 = s1["vad"]["threshold"], s2["vad"]["threshold"]
    # utterance 1: the head never fires in its window (its turn end is not detected: 'never')
    assert thr1["cutoffs"] == [] and thr1["latency"] is None
    # utterance 2: one premature cut-off at 1.68 s, inside the number (1.0 - 2.5 s); turn end 0.78 s
    assert thr2["cutoffs"] == pytest.approx([1.68]) and thr2["in_numbers"] == 1
    assert thr2["latency"] == pytest.approx(41 / 12.5 - 2.5) and thr2["detected"]
    # the same as `invoke eval` scores the window alone (the threshold rule has no memory)
    alone = score_utterance(conv.placed[1].ref, ["one", "two", "three"], run.pause[800:1500], RULES)
    assert alone["vad"]["threshold"] == thr2


def test_the_unmute_rule_runs_over_the_stream_not_per_utterance():
    # Unmute's rule ignores the stream's first 12 steps (0.96 s). Utterance 2, here with its first
    # word at 0.5 s of its clip, is 800 steps into the stream: a head on from its first step is on
    # when its speech starts (step 6, emitted at 0.56 s), where scoring the window as a fresh
    # stream would hide it in the warm-up.
    conv, run = _two_utterances()
    conv.placed[1] = Placed(ref("two", ["one", "two", "three"], 0.5, 0.5), 800, 1500, 40, 1)
    run.pause[800:, 2] = 0.9
    _, s2 = score_conversation(conv, run, RULES)
    assert s2["vad"]["unmute"]["on_at_start"] is True
    fresh = score_utterance(conv.placed[1].ref, ["one", "two", "three"], run.pause[800:1500], RULES)
    assert fresh["vad"]["unmute"]["on_at_start"] is False


def test_minutes_pool_their_utterances_and_padding_is_counted_per_minute():
    conv, run = _two_utterances()
    table = per_minute(score_conversation(conv, run, RULES), 2)
    assert [row["utterances"] for row in table] == [1, 1]
    assert table[0]["wer"] == 0.0 and table[1]["wer"] == 0.0
    assert table[1]["number_spans"] == 1 and table[1]["dictations_cut_share"] == 1.0
    assert table[0]["number_spans"] == 0 and table[0]["digit_share"] is None
    # minute 1: 748 of 750 steps write padding; minute 2: all 750; unknown steps (-1) are left out
    assert padding_share(run.written, 2) == pytest.approx([748 / 750, 1.0])
    written = run.written.copy()
    written[-10:] = -1
    assert padding_share(written, 2)[1] == 1.0


# --- streaming through Kyutai's Rust crate ---------------------------------------------------------

@pytest.fixture(scope="module")
def served(tiny_ckpt):
    pytest.importorskip("candle_bridge")
    from pipeline.checkpoint import Checkpoint
    from pipeline.evaluate.stream import Runner, with_flush
    from pipeline.longstream import LongRunner

    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(SAMPLE_RATE * 3)).astype(np.float32)
    ckpt = Checkpoint.open(tiny_ckpt)
    with Runner(ckpt, "server-semantics", 2.0) as runner:
        alone = runner.run(clip)
    return {"ckpt": ckpt, "clip": with_flush(clip, 2.0), "alone": alone, "long": LongRunner(ckpt)}


def test_a_one_utterance_conversation_scores_as_invoke_eval_scores_the_clip(served):
    r = ref("a", ["hello", "there"], 0.4, 0.6)
    audio = served["clip"]
    conv = Conversation(audio, [Placed(r, 0, len(audio) // FRAME_SAMPLES, 38, 0)])
    long = served["long"].run(audio)
    alone = served["alone"]
    np.testing.assert_array_equal(long.pause, alone.pause)
    assert [(w.text, w.step) for w in long.words] == [(w.text, w.step) for w in alone.words]
    (score,) = score_conversation(conv, long, RULES)
    expected = score_utterance(r, [w.text for w in alone.words], alone.pause, RULES)
    assert {k: v for k, v in score.items() if k not in ("minute", "start_step")} == expected


def test_streaming_in_chunks_is_one_stream(served):
    # The stream goes into Rust a minute at a time; the chunk size must not change a step.
    audio = np.tile(served["clip"], 3)
    whole = served["long"].run(audio, chunk_steps=10_000)
    chunked = served["long"].run(audio, chunk_steps=7)
    np.testing.assert_array_equal(whole.pause, chunked.pause)
    np.testing.assert_array_equal(whole.written, chunked.written)
    assert whole.words == chunked.words
    assert whole.written[-1] == -1 and len(whole.written) == len(audio) // FRAME_SAMPLES


def test_clip_by_clip_codes_are_the_fresh_stream_for_one_clip_and_differ_after(served):
    """'candle-clips' Mimi-encodes each clip from a fresh Mimi state (as training packs them): for
    a one-clip conversation that is exactly the fresh Candle stream; for two clips, the second
    clip's codes differ from the continuous stream's."""
    from pipeline.longstream import LongRunner

    audio = served["clip"]
    steps = len(audio) // FRAME_SAMPLES
    one = Conversation(audio, [Placed(ref("a", ["x"], 0.4), 0, steps, steps, 0)])
    fresh = LongRunner(served["ckpt"], "candle").run_conversation(one)
    clips_runner = LongRunner(served["ckpt"], "candle-clips")
    clips = clips_runner.run_conversation(one)
    np.testing.assert_array_equal(fresh.written, clips.written)
    np.testing.assert_allclose(fresh.pause, clips.pause, atol=1e-6)
    two = Conversation(np.concatenate([audio, audio]), [Placed(ref("a", ["x"], 0.4), 0, steps, steps, 0),
                                                        Placed(ref("a", ["x"], 0.4), steps, 2 * steps, steps, 0)])
    continuous = LongRunner(served["ckpt"], "candle").run_conversation(two)
    pieces = clips_runner.run_conversation(two)
    np.testing.assert_allclose(continuous.pause[:steps], pieces.pause[:steps], atol=1e-6)
    assert np.abs(continuous.pause[steps:] - pieces.pause[steps:]).max() > 1e-4


# --- training past the context ---------------------------------------------------------------------

def test_a_training_window_longer_than_the_context_sees_what_a_long_stream_sees(tiny_ckpt):
    """`invoke train` with train.window_seconds above 60 s: the teacher-forced training forward
    over 800 frames (the tiny preset's context is 750, as the 1B's) must give every frame past the
    context the logits and pause heads that streaming gives it (moshi's ring of 750 keys, the
    stream's start out of view). Without the context limit (every frame sees the start) frames
    750 on differ: that is what a 30 s window trains and what a long stream does not give."""
    import torch

    from pipeline.checkpoint import Checkpoint
    from pipeline.labels import shift_inputs
    from pipeline.train import forward_stt, use_window_attention
    from pipeline.verify import torch_stream

    ckpt = Checkpoint.open(tiny_ckpt)
    lm = ckpt.load_lm("cpu", dtype=torch.float32)
    assert lm.transformer.layers[0].self_attn.context == 750
    steps = 800
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, lm.card, (steps, lm.n_q), generator=g)
    text = torch.randint(0, lm.text_card, (steps,), generator=g)
    streamed = torch_stream(ckpt, codes.numpy(), forced_text=text.numpy())

    use_window_attention(lm)
    window = torch.cat([text.view(1, 1, -1), codes.T.unsqueeze(0)], dim=1)
    inputs = shift_inputs(window, lm.text_card, lm.card)
    with torch.no_grad():
        logits, heads = forward_stt(lm, inputs)
        pause = torch.softmax(heads.float(), dim=-1)[0, :, :, 0].numpy()
        assert np.abs(logits[0].numpy() - streamed.logits).max() < 1e-3
        assert np.abs(pause - streamed.pause).max() < 1e-4
        for layer in lm.transformer.layers:  # the same window with no context limit
            layer.self_attn.context = None
        unlimited, _ = forward_stt(lm, inputs)
    delta = np.abs(unlimited[0].numpy() - streamed.logits).max(axis=1)
    assert delta[:750].max() < 1e-3 and delta[750:].min() > 1e-3


def test_window_seconds_may_pass_the_context_up_to_ten_minutes():
    from pipeline.config import ConfigError, load_config

    assert load_config(None, ["train.window_seconds=120"]).train.window_seconds == 120
    assert load_config(None, []).train.window_seconds == 30  # the default stays inside the context
    with pytest.raises(ConfigError, match="train.window_seconds"):
        load_config(None, ["train.window_seconds=601"])


def test_the_targets_read_the_per_minute_table():
    from pipeline.longstream import target_rows

    def minute(wer, pad, cut=0.1):
        return {"wer": wer, "digit_share": 0.0, "exact_share": 0.5, "digits_right_share": 0.6,
                "dictations_cut_share": cut, "turn_end_share": 0.9, "padding_share": pad}

    # candidate: WER 20 % -> 21 % -> 25 % (5 points from minute 1 at minute 3: missed); base WER 20 %
    # throughout, so the candidate is 5 points worse at minute 3; padding 60 % against the base's
    # 50 %: 10 points more than the base, over the 5-point limit.
    table = {"candidate": [minute(0.20, 0.60), minute(0.21, 0.60), minute(0.25, 0.60, cut=0.05)],
             "base": [minute(0.20, 0.50)] * 3}
    rows = {r["figure"]: r for r in target_rows(table)}
    assert rows["wer"]["drift"] == (pytest.approx(5.0), 3) and rows["wer"]["drift_ok"] is False
    assert rows["wer"]["gap"] == (pytest.approx(5.0), 3) and rows["wer"]["gap_ok"] is False
    assert rows["padding_share"]["gap"][0] == pytest.approx(10.0) and rows["padding_share"]["gap_ok"] is False
    # fewer dictations cut than the base is better, not a gap; the number form is not compared
    assert rows["dictations_cut_share"]["gap"][0] == pytest.approx(0.0) and rows["dictations_cut_share"]["gap_ok"]
    assert rows["dictations_cut_share"]["drift"] == (pytest.approx(5.0), 3)
    assert rows["digit_share"]["gap"] is None and rows["turn_end_share"]["drift_ok"] is True
