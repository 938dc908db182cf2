"""`invoke data --check DIR`: every problem of a dataset folder, one line each, naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from ..constants import DEFAULT_TEXT_DELAY
from .audio import CLIP_SHARE, SAMPLE_RATE, clipped_share
from .layout import SPEAKER, SPLITS, DataError, index_path
from .normalize import LANGS

_DIGIT = re.compile(r"\d")
DEFAULT_TAIL_MARGIN = 0.5


def check_dataset(folder: str | Path) -> list[str]:
    """Problems in the dataset at `folder` (empty list: it is valid)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder; pass the folder `invoke data` wrote"]
    problems: list[str] = []
    manifest_path = folder / "manifest.json"
    manifest: dict = {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        problems.append(f"{manifest_path}: missing; rebuild with `invoke data`")
    except json.JSONDecodeError as exc:
        problems.append(f"{manifest_path}: not valid JSON ({exc.msg}, line {exc.lineno})")
    min_tail = float(manifest.get("text_delay", DEFAULT_TEXT_DELAY)) + float(manifest.get("tail_margin", DEFAULT_TAIL_MARGIN))

    seen_written: dict[str, dict[str, str]] = {s: {} for s in SPLITS}
    for split in SPLITS:
        index = folder / f"{split}.jsonl"
        if not index.is_file():
            problems.append(f"{index}: missing; rebuild with `invoke data`")
            continue
        lines = [(n, line) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
        expected = manifest.get("splits", {}).get(split)
        if manifest and expected != len(lines):
            problems.append(f"{manifest_path}: says {expected} {split} utterances, {index.name} has {len(lines)}")
        for n, line in lines:
            problems += _check_entry(folder, index, n, line, min_tail, seen_written[split])
    for written, where in seen_written["eval"].items():
        if written in seen_written["train"]:
            problems.append(f"{where}: prompt {written!r} is in eval and in train ({seen_written['train'][written]})")
    return problems


def _check_entry(folder: Path, index: Path, n: int, line: str, min_tail: float, seen: dict[str, str]) -> list[str]:
    where = f"{index}:{n}"
    try:
        entry = json.loads(line)
        rel, duration = entry["path"], float(entry["duration"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return [f"{where}: not a {{\"path\", \"duration\"}} JSON line"]
    try:
        audio = index_path(folder, rel, where)
    except DataError as exc:
        return [str(exc)]
    if not audio.is_file():
        return [f"{audio}: missing (listed in {index.name} line {n})"]
    fix = f"rebuild with `invoke data` or remove line {n} of {index.name}"
    if audio.stat().st_size == 0:
        return [f"{audio}: empty file (0 bytes); {fix}"]
    problems = []
    try:
        info = sf.info(str(audio))
        samples, _ = sf.read(str(audio), dtype="float32", always_2d=True)
    except RuntimeError as exc:
        return [f"{audio}: unreadable audio ({exc}); {fix}"]
    if info.format != "WAV" or info.samplerate != SAMPLE_RATE or info.channels != 1:
        problems.append(f"{audio}: {info.format} {info.samplerate} Hz {info.channels} ch; "
                        f"must be WAV {SAMPLE_RATE} Hz mono: convert it, or {fix}")
    if info.frames == 0:
        problems.append(f"{audio}: holds no audio (0 samples); {fix}")
    elif not np.isfinite(samples).all():
        problems.append(f"{audio}: contains NaN or infinite samples; {fix}")
    elif clipped_share(samples) > CLIP_SHARE:
        problems.append(f"{audio}: clipped ({clipped_share(samples):.1%} of samples at or beyond full scale); "
                        f"re-record it at a lower level or remove line {n} of {index.name}")
    real = info.frames / info.samplerate
    if abs(real - duration) > 0.01:
        problems.append(f"{audio}: {index.name} says {duration:.3f} s, the file holds {real:.3f} s")
    labels_path = audio.with_suffix(".json")
    try:
        labels = json.loads(labels_path.read_text())
        alignments = labels["alignments"]
    except FileNotFoundError:
        return problems + [f"{labels_path}: missing; every audio file needs its labels beside it"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return problems + [f"{labels_path}: no readable 'alignments' ({exc.__class__.__name__}); fix it or {fix}"]
    problems += [f"{labels_path}: {p}" for p in _check_labels(labels, alignments, real, min_tail)]
    written = labels.get("written", "")
    if written:
        seen.setdefault(written, str(labels_path))
    return problems


def _check_labels(labels: dict, alignments: list, duration: float, min_tail: float) -> list[str]:
    problems = []
    if not alignments:
        return ["no words in 'alignments'"]
    prev_start, prev_end = 0.0, 0.0
    for i, a in enumerate(alignments):
        try:
            word, (start, end), speaker = a
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            problems.append(f"alignment {i} is not [word, [start, end], speaker]")
            continue
        if not isinstance(word, str):
            problems.append(f"alignment {i}: word {word!r} must be a string")
            continue
        if not any(ch.isprintable() and not ch.isspace() for ch in word):
            # SentencePiece writes no token for it: the word would vanish from the training labels.
            problems.append(f"alignment {i}: word {word!r} has no visible characters; remove it")
        if speaker != SPEAKER:
            problems.append(f"alignment {i} ({word!r}): speaker {speaker!r}, expected {SPEAKER!r}")
        if _DIGIT.search(word):
            problems.append(f"alignment {i}: digit in label {word!r}; labels must spell numbers as words")
        if start < 0 or end <= start:
            problems.append(f"alignment {i} ({word!r}): times [{start}, {end}] must satisfy 0 <= start < end")
        if end > duration + 1e-3:
            problems.append(f"alignment {i} ({word!r}): ends at {end:.3f} s, after the audio ({duration:.3f} s)")
        if i and (start < prev_start or start < prev_end - 0.01):
            problems.append(f"alignment {i} ({word!r}): starts at {start:.3f} s, before the previous word ends")
        prev_start, prev_end = start, max(prev_end, end)
    tail = duration - prev_end
    if tail < min_tail - 1e-3:
        problems.append(f"only {tail:.2f} s of audio after the last word; needs >= {min_tail:.2f} s "
                        "(text delay + margin) or the last word's label is lost")
    words = [a[0] for a in alignments if isinstance(a, (list, tuple)) and a]
    text = labels.get("text")
    if text is not None and text != " ".join(map(str, words)):
        problems.append("'text' differs from the words of 'alignments'")
    if labels.get("lang") not in LANGS:
        problems.append(f"lang {labels.get('lang')!r} must be one of {LANGS}")
    for span in labels.get("number_spans", []):
        try:
            ok = 0 <= span["first"] <= span["last"] < len(alignments) and _DIGIT.search(span["written"])
        except (KeyError, TypeError):
            ok = False
        if not ok:
            problems.append(f"number span {span!r} must have 0 <= first <= last < {len(alignments)} and written digits")
    return problems
