"""Your own voice: `invoke record` (read prompts aloud) and importing folders of audio.

A recording session shows each prompt's written form and the exact words to say, records
between two presses of Enter and stores `<id>.wav` (mono 24 kHz) with `<id>.prompt.json`
(what was to be said). The capture function is a parameter so the session runs without a
microphone in tests.

Any folder of audio (wav/flac/mp3/ogg, any rate or channel count) can be imported through
`data.audio_dirs`. Labels come from, in this order: `<stem>.prompt.json` (a recording session),
`<stem>.txt` (a transcript, written or spoken form; the reading of its numbers is chosen by
Whisper's likelihood), or Whisper's own transcript.
"""

from __future__ import annotations

import getpass
import json
import random
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from ..errors import StageError
from .audio import (AUDIO_SUFFIXES, SAMPLE_RATE, WHISPER_RATE, ensure_tail, read_audio, resample, warn, write_text,
                    write_wav)
from .normalize import LANGS, NumberSpan, Spoken
from .prompts import make_prompts

Capture = Callable[[Callable[[], None]], tuple[np.ndarray, int]]


def check_microphone() -> None:
    """Fail early, in one line, when there is no input device."""
    try:
        import sounddevice as sd

        sd.query_devices(kind="input")
    except Exception as exc:  # noqa: BLE001 - PortAudio errors (no library, no device) get the same advice
        raise StageError(f"no microphone available ({exc.__class__.__name__}: {exc}); record elsewhere and "
                         "add the files with --set data.audio_dirs=[FOLDER]") from None


def sounddevice_capture(wait_for_stop: Callable[[], None]) -> tuple[np.ndarray, int]:
    """Record from the default microphone until `wait_for_stop` returns; (audio, rate)."""
    import sounddevice as sd

    rate = int(sd.query_devices(kind="input")["default_samplerate"])
    blocks: list[np.ndarray] = []
    with sd.InputStream(samplerate=rate, channels=1, dtype="float32", callback=lambda x, *_: blocks.append(x.copy())):
        wait_for_stop()
    audio = np.concatenate(blocks)[:, 0] if blocks else np.zeros(0, np.float32)
    return audio, rate


def record_session(out_dir: str | Path, count: int, seed: int, lang: str = "en", capture: Capture = sounddevice_capture,
                   ask: Callable[[str], str] = input, show: Callable[[str], None] = print,
                   speaker: str | None = None) -> list[Path]:
    """Read `count` prompts aloud; Enter starts and stops each take, 's' skips, 'q' quits."""
    if capture is sounddevice_capture:
        check_microphone()
    out_dir = Path(out_dir)
    prompts = make_prompts(count, seed, french_fraction=1.0 if lang == "fr" else 0.0)
    speaker = speaker or getpass.getuser()
    written: list[Path] = []
    for i, prompt in enumerate(prompts, 1):
        show(f"\n[{i}/{len(prompts)}] {prompt.written}\n    say: {prompt.spoken.text}")
        answer = ask("Enter to start recording, s to skip, q to quit: ").strip().lower()
        if answer == "q":
            break
        if answer == "s":
            continue
        audio, rate = capture(lambda: ask("recording... Enter to stop "))
        if len(audio) < rate * 0.3:
            show("    too short, skipped")
            continue
        stem = out_dir / f"{speaker}-{seed}-{i:04d}"
        write_wav(stem.with_suffix(".wav"), resample(audio, rate, SAMPLE_RATE))
        meta = {"written": prompt.written, "text": prompt.spoken.text, "lang": prompt.lang,
                "category": prompt.category, "voice": f"recording:{speaker}",
                "number_spans": [s.to_json() for s in prompt.spoken.spans]}
        write_text(stem.with_suffix(".prompt.json"), json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
        written.append(stem.with_suffix(".wav"))
        show(f"    saved {stem.with_suffix('.wav')} ({len(audio) / rate:.1f} s)")
    return written


def audio_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise StageError(f"{folder}: audio folder not found; fix data.audio_dirs")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))


def import_items(cfg, annotators) -> Iterator:
    """Dataset items for every audio file under `data.audio_dirs`, annotated with Whisper."""
    from .layout import Item

    d = cfg.data
    files = [f for folder in d.audio_dirs for f in audio_files(folder)]
    rng = random.Random(d.seed + 1)
    for path in tqdm(files, desc="importing audio", unit="file", disable=not files):
        meta_path, text_path = path.with_suffix(".prompt.json"), path.with_suffix(".txt")
        try:
            meta = _prompt_meta(meta_path)
            lang = meta.get("lang", d.import_lang)
            annotator = annotators[lang]
            # Clipped takes are skipped: Whisper aligns them worse and the model would learn the distortion.
            audio = read_audio(path, SAMPLE_RATE, clipped_ok=False)
            lead = rng.uniform(0.0, d.lead_silence_max) if _starts_with_speech(audio) else 0.0
            audio = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), audio])
            audio16 = resample(audio, SAMPLE_RATE, WHISPER_RATE)
            if meta:
                spoken = Spoken(meta["text"].split(), meta["text"].split(), meta["number_spans"])
                annotation = annotator.annotate(audio16, spoken)
            elif text_path.is_file():
                annotation = annotator.annotate(audio16, text=text_path.read_text().strip())
            else:
                annotation = annotator.annotate(audio16)
        except StageError as exc:  # unreadable audio, labels or transcript: skip it, say which and why
            reason = str(exc).removeprefix(f"{path}: ")
            warn(f"{path}: skipped: {reason}")
            continue
        written = meta.get("written") or (text_path.read_text().strip() if text_path.is_file() else annotation.whisper_text)
        audio = ensure_tail(audio, annotation.timings[-1][1], d.text_delay + d.tail_margin)
        yield Item(audio, annotation.timings, annotation.spoken, written, lang, meta.get("category", "imported"),
                   meta.get("voice", f"import:{path.parent.name}"), "recording" if meta else "import",
                   written, {"timing": "whisper", "whisper_text": annotation.whisper_text, "original": str(path)},
                   annotation.flags)


def _prompt_meta(path: Path) -> dict:
    """A recording session's `<stem>.prompt.json` (spans as `NumberSpan`s), or {} if there is none."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); fix it, or delete it to label the audio "
                         "with Whisper") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("text"), str) or not meta["text"].strip():
        raise StageError(f"{path}: needs a 'text' field with the words spoken; fix it, or delete it to label "
                         "the audio with Whisper")
    if meta.get("lang", "en") not in LANGS:
        raise StageError(f"{path}: lang {meta['lang']!r} must be one of {LANGS}; fix it")
    try:
        meta["number_spans"] = [NumberSpan(**s) for s in meta.get("number_spans", [])]
    except TypeError:
        raise StageError(f"{path}: 'number_spans' must be a list of {{first, last, written, kind}}; fix it") from None
    return meta


def _starts_with_speech(audio: np.ndarray) -> bool:
    """Whether the first 100 ms are loud: then add lead silence (audio starting mid-word confuses STT)."""
    head = audio[: SAMPLE_RATE // 10]
    return len(head) > 0 and float(np.sqrt(np.mean(head ** 2))) > 0.01
