"""Acoustic augmentation of training clips, applied when codes are packed (issue #16): the model
hears each training prompt in conditions it would otherwise never meet.

Each augmented copy draws, from one seeded generator per (clip, copy):
- speed: resampled by a factor in [1 - speed, 1 + speed] (tempo and pitch together, Kaldi-style
  speed perturbation); the word timings are divided by the factor;
- reverberation (probability `reverb`): the clip convolved with a synthetic room response,
  exponentially decaying noise with RT60 between 0.2 and 0.6 s, plus the direct path;
- telephone band (probability `telephone`): down to 8 kHz and back, then 300-3400 Hz;
- additive noise: white noise shaped to a random pink/white tilt at an SNR in [snr_min, snr_max]
  dB against the clip's speech power (frames above -40 dB of its loudest).
The order is speed, room, telephone line, noise: a caller in a room, on a phone, on a noisy line.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..constants import SAMPLE_RATE
from .audio import resample

TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)


@dataclass(frozen=True)
class AugmentConfig:
    speed: float = 0.1  # +-10 %
    snr_min: float = 10.0
    snr_max: float = 30.0
    reverb: float = 0.3  # probability
    telephone: float = 0.2  # probability


@dataclass(frozen=True)
class Augmentation:
    """What one copy gets (recorded in the pack's labels)."""

    speed: float
    snr_db: float
    rt60: float | None  # None: no room
    telephone: bool

    def describe(self) -> str:
        parts = [f"speed {self.speed:.6f}", f"snr {self.snr_db:.1f} dB"]
        parts += [f"rt60 {self.rt60:.2f} s"] if self.rt60 is not None else []
        parts += ["telephone"] if self.telephone else []
        return ", ".join(parts)


def augment_config(data_cfg) -> AugmentConfig:
    """The `data.augment_*` fields of the config."""
    low, high = data_cfg.augment_snr
    return AugmentConfig(data_cfg.augment_speed, low, high, data_cfg.augment_reverb, data_cfg.augment_telephone)


def generator(key: str, copy: int, seed: int) -> np.random.Generator:
    """The same clip, copy and seed always give the same augmentation, on any machine."""
    return np.random.default_rng([seed, copy, zlib.crc32(key.encode())])


def draw(rng: np.random.Generator, cfg: AugmentConfig) -> Augmentation:
    return Augmentation(
        # whole source rates, so the timings are scaled by exactly the factor the audio gets
        speed=round(SAMPLE_RATE * float(rng.uniform(1 - cfg.speed, 1 + cfg.speed))) / SAMPLE_RATE,
        snr_db=float(rng.uniform(cfg.snr_min, cfg.snr_max)),
        rt60=float(rng.uniform(0.2, 0.6)) if rng.random() < cfg.reverb else None,
        telephone=bool(rng.random() < cfg.telephone),
    )


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Plays `audio` `factor` times faster (shorter by 1/factor), pitch included."""
    return resample(audio, round(SAMPLE_RATE * factor), SAMPLE_RATE)  # exact for whole-rate factors


def room(audio: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Direct path plus exponentially decaying noise (60 dB down after `rt60` s), same length."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB
    response = np.concatenate([[1.0], 0.3 * tail / np.sqrt(np.sum(tail**2))])
    size = len(audio) + len(response) - 1
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)[: len(audio)]
    peak = np.max(np.abs(wet))
    return (wet * (np.max(np.abs(audio)) / peak if peak > 0 else 1.0)).astype(np.float32)


def band_limit(audio: np.ndarray, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(audio)).astype(np.float32)


def telephone_line(audio: np.ndarray) -> np.ndarray:
    narrow = resample(resample(audio, SAMPLE_RATE, TELEPHONE_RATE), TELEPHONE_RATE, SAMPLE_RATE)
    narrow = np.pad(narrow, (0, max(0, len(audio) - len(narrow))))[: len(audio)]
    return band_limit(narrow, *TELEPHONE_BAND)


def speech_power(audio: np.ndarray, frame: int = 480) -> float:
    """Mean power of the 20 ms frames within 40 dB of the loudest (silence does not count)."""
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    power = np.mean(frames.astype(np.float64) ** 2, axis=1)
    if not power.size or power.max() == 0:
        return 0.0
    return float(power[power >= power.max() * 1e-4].mean())


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(len(audio))
    tilt = rng.uniform(0.0, 1.0)  # 0: white, 1: pink (1/f power)
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE), 20.0)
    noise = np.fft.irfft(spectrum / freqs ** (tilt / 2), len(audio))
    target = speech_power(audio) / 10 ** (snr_db / 10)
    noise *= np.sqrt(target / max(np.mean(noise**2), 1e-20))
    return (audio + noise).astype(np.float32)


def augment(audio: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """`audio` (float32, 24 kHz) under `aug`; the length changes only with the speed."""
    out = change_speed(np.asarray(audio, dtype=np.float32), aug.speed)
    if aug.rt60 is not None:
        out = room(out, aug.rt60, rng)
    if aug.telephone:
        out = telephone_line(out)
    out = add_noise(out, aug.snr_db, rng)
    peak = np.max(np.abs(out))
    return out / peak * 0.99 if peak > 0.99 else out


def scale_alignments(alignments: list, speed: float) -> list:
    """Word timings of a clip played `speed` times faster."""
    return [(word, (start / speed, end / speed), *rest) for word, (start, end), *rest in alignments]
