"""Audio in and out: any file to mono float32, resampling, silences, atomic 24 kHz WAV writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..constants import SAMPLE_RATE  # Mimi's rate: every dataset file is mono 24 kHz
from ..errors import StageError
from ..io import atomic_file

WHISPER_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
CLIP_LEVEL = 0.999  # |sample| at or above this is at full scale (16-bit: 32735 and up)
CLIP_SHARE = 0.001  # a recording with more of its samples at full scale is clipped

_warned: set[str] = set()


class AudioError(StageError):
    """An audio file that cannot be used; the message names it."""


def warn(message: str) -> None:
    """One line about a repair or a skipped file. Each message is printed once per run: the
    eval stage reads a file for its speech bounds and again for streaming."""
    if message not in _warned:
        _warned.add(message)
        tqdm.write(f"warning: {message}")


def clipped_share(audio: np.ndarray) -> float:
    """The share of samples at (or beyond) full scale."""
    return float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if audio.size else 0.0


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """High-quality resampling with an exact output length (soxr)."""
    import soxr

    if source_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), source_rate, target_rate, quality="HQ")


def read_audio(path: str | Path, rate: int = SAMPLE_RATE, clipped_ok: bool = True, repair: bool = True) -> np.ndarray:
    """Any wav/flac/mp3/ogg file as mono float32 at `rate`: the one reader every stage uses.

    Repaired with a warning: several channels (averaged), another rate (resampled), float
    samples beyond full scale (scaled to a 0.99 peak: nothing is lost). Refused with an
    `AudioError` naming the file: unreadable, empty, no samples, NaN/inf, and clipped audio
    unless `clipped_ok` (then a warning: the clipping cannot be undone). With `repair=False`
    (training audio, which `invoke data` wrote as mono 24 kHz) what would be repaired, and
    clipping, are refused instead."""
    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise AudioError(f"{path}: unsupported audio type {path.suffix!r}; use one of {AUDIO_SUFFIXES}")
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes); re-export it or remove it")
    try:
        data, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC, or remove it") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio (0 samples); re-record it or remove it")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples; re-export it or remove it")
    if not repair:
        if data.shape[1] > 1 or source_rate != rate:
            raise AudioError(f"{path}: audio is {source_rate} Hz with {data.shape[1]} channel(s); training needs "
                             f"mono {rate} Hz (`invoke data` writes that)")
        if clipped_share(data) > CLIP_SHARE:
            raise AudioError(f"{path}: audio is clipped ({clipped_share(data):.1%} of samples at or beyond full "
                             "scale); re-record it at a lower level or remove it (`invoke data --check` lists such files)")
        return data[:, 0]
    repairs = []
    if data.shape[1] > 1:
        repairs.append(f"{data.shape[1]} channels mixed down to mono")
    peak = float(np.abs(data).max())
    if peak > 1.0:
        data = data * np.float32(0.99 / peak)
        repairs.append(f"peak {peak:.2f} is beyond full scale, scaled down to 0.99")
    elif clipped_share(data) > CLIP_SHARE:
        message = f"{path}: clipped ({clipped_share(data):.1%} of samples at full scale); re-record it at a lower level"
        if not clipped_ok:
            raise AudioError(f"{message} or remove it")
        warn(f"{message}; used as it is")
    if source_rate != rate:
        repairs.append(f"{source_rate} Hz resampled to {rate} Hz")
    if repairs:
        warn(f"{path}: " + "; ".join(repairs))
    return resample(data.mean(axis=1), source_rate, rate)


def write_wav(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV, written to a temp file and renamed into place."""
    with atomic_file(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")


def write_text(path: str | Path, text: str) -> None:
    """A text file written to a temp file and renamed into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def ensure_tail(audio: np.ndarray, last_end: float, min_tail: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pad with silence so at least `min_tail` seconds follow the last word, as stored: labels keep
    1 ms (the end may round up by 0.5 ms) and the index 0.1 ms (the duration may round down)."""
    missing = round(last_end, 3) + min_tail + 1e-4 - len(audio) / rate
    if missing <= 0:
        return audio
    return np.concatenate([audio, np.zeros(int(np.ceil(missing * rate)), np.float32)])


def with_silence(audio: np.ndarray, lead: float, tail: float, rate: int = SAMPLE_RATE,
                 noise_db: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """`lead` and `tail` seconds of silence around `audio`, optionally a faint noise floor."""
    out = np.concatenate([np.zeros(int(round(lead * rate)), np.float32), audio.astype(np.float32),
                          np.zeros(int(round(tail * rate)), np.float32)])
    if noise_db is not None:
        rng = rng or np.random.default_rng(0)
        out = out + rng.standard_normal(len(out)).astype(np.float32) * np.float32(10 ** (noise_db / 20))
    return out


def speech_bounds(audio: np.ndarray, rate: int, below_peak_db: float = 35.0,
                  above_floor_db: float = 15.0) -> tuple[float, float] | None:
    """(first, last) second of speech: 10 ms frames louder than both `below_peak_db` under the
    loudest frame and `above_floor_db` over the noise floor (10th percentile frame)."""
    hop = rate // 100
    frames = len(audio) // hop
    if frames == 0:
        return None
    energy = (audio[: frames * hop].astype(np.float64).reshape(frames, hop) ** 2).mean(axis=1)
    if energy.max() <= 0:
        return None
    threshold = max(energy.max() * 10 ** (-below_peak_db / 10), np.percentile(energy, 10) * 10 ** (above_floor_db / 10))
    loud = np.nonzero(energy > threshold)[0]
    if len(loud) == 0:
        return None
    return float(loud[0] * hop / rate), float((loud[-1] + 1) * hop / rate)
