"""Augmentation applied when codes are packed: each effect measured on known signals."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.codes import pack_utterances, read_pack
from pipeline.config import ConfigError, load_config
from pipeline.constants import SAMPLE_RATE
from pipeline.data import build_dataset, read_split
from pipeline.data.augment import (
    Augmentation,
    AugmentConfig,
    add_noise,
    augment,
    augment_config,
    change_speed,
    draw,
    generator,
    room,
    scale_alignments,
    speech_power,
    telephone_line,
)


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def test_speed_changes_length_and_pitch_together():
    fast = change_speed(tone(440.0), 1.1)
    assert abs(len(fast) - SAMPLE_RATE / 1.1) <= 2
    peak = np.fft.rfftfreq(len(fast), 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(fast)))]
    assert peak == pytest.approx(484.0, abs=2.0)


def test_word_timings_follow_the_speed():
    words = [("one", (0.5, 0.9), "two"), ("two", (1.1, 1.65), "two")]
    assert scale_alignments(words, 1.1) == [("one", (0.5 / 1.1, 0.9 / 1.1), "two"), ("two", (1.1 / 1.1, 1.65 / 1.1), "two")]


@pytest.mark.parametrize("snr", [10.0, 30.0])
def test_noise_is_added_at_the_asked_snr(snr):
    clean = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), tone(300.0)])  # silence does not count
    noisy = add_noise(clean, snr, np.random.default_rng(0))
    measured = 10 * np.log10(speech_power(clean) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert measured == pytest.approx(snr, abs=0.2)


def test_telephone_keeps_only_300_to_3400_hz():
    mix = tone(150.0) + tone(1000.0) + tone(6000.0)
    line = telephone_line(mix)
    assert len(line) == len(mix)
    inside = band_energy(line, 900, 1100)
    assert band_energy(line, 100, 200) < 1e-6 * inside and band_energy(line, 5000, 7000) < 1e-6 * inside
    assert inside == pytest.approx(band_energy(tone(1000.0), 900, 1100), rel=0.05)


def test_room_leaves_a_decaying_tail_after_the_sound():
    burst = np.zeros(SAMPLE_RATE, np.float32)
    burst[1000:1240] = 0.5
    wet = room(burst, 0.5, np.random.default_rng(0))
    tail = lambda a, b: float(np.sum(wet[a:b] ** 2))  # noqa: E731
    assert tail(1240 + 240, 1240 + 2640) > 0 and tail(1240 + 240, 1240 + 2640) > 10 * tail(1240 + 7200, 1240 + 9600)


def test_the_same_clip_and_copy_always_get_the_same_augmentation():
    cfg = AugmentConfig()
    a, b = draw(generator("x.wav", 1, 7), cfg), draw(generator("x.wav", 1, 7), cfg)
    assert a == b and draw(generator("x.wav", 2, 7), cfg) != a
    draws = [draw(generator(f"{i}.wav", 1, 0), cfg) for i in range(400)]
    assert all(0.9 <= d.speed <= 1.1 and 10 <= d.snr_db <= 30 for d in draws)
    assert 0.2 < np.mean([d.rt60 is not None for d in draws]) < 0.4
    assert 0.1 < np.mean([d.telephone for d in draws]) < 0.3
    out = augment(tone(440.0), Augmentation(1.05, 20.0, 0.3, True), np.random.default_rng(1))
    assert np.max(np.abs(out)) <= 1.0 and abs(len(out) - SAMPLE_RATE / 1.05) <= 2


def test_bad_augment_fields_are_refused_by_name():
    with pytest.raises(ConfigError, match="data.augment_snr"):
        load_config(None, ["data.augment_snr=[30,10]"])
    with pytest.raises(ConfigError, match="data.augment_reverb"):
        load_config(None, ["data.augment_reverb=2"])


def test_a_pack_with_copies_holds_the_clips_then_their_copies(tiny_ckpt, tmp_path):
    cfg = load_config(None, [f"artifacts={tmp_path}", "data.count=6", "data.piper_fraction=0",
                             "data.french_fraction=0", "data.augment_copies=2"])
    utterances = read_split(build_dataset(cfg), "train")
    pack = pack_utterances(tiny_ckpt, utterances, tmp_path / "p.safetensors", tmp_path / "cache",
                           copies=cfg.data.augment_copies, augment_cfg=augment_config(cfg.data), seed=0)
    labels, codes, _, _ = read_pack(pack, tiny_ckpt / "mimi-tiny.safetensors")
    n = len(utterances)
    assert len(labels) == 3 * n and "augment" not in labels[0] and "speed" in labels[n]["augment"]
    speed = float(labels[n]["augment"].split(",")[0].split()[1])
    first = utterances[0].alignments[0][1][0]
    assert labels[n]["alignments"][0][1][0] == pytest.approx(first / speed, abs=1e-5)
    assert abs(codes[n].shape[1] - codes[0].shape[1] / speed) <= 2
