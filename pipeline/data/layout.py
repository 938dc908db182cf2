"""The dataset's layout and its types: what `invoke data` writes and every stage reads.

    train.jsonl, eval.jsonl   one {"path": "train/00012.wav", "duration": 4.21} per line
    train/00012.wav           mono 24 kHz 16-bit PCM
    train/00012.json          {"alignments": [[word, [start, end], "SPEAKER_MAIN"], ...], "text", "written",
                               "lang", "voice", "category", "number_spans", "source", "flags", ...}
    manifest.json             counts per split, category, language and voice; seed; generator
                              version; the text delay and tail margin the clips were cut for
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StageError
from .normalize import NumberSpan, Spoken

GENERATOR = "stt-numerals data v2"  # v2: one seeded generator per prompt (data.only_split)
SPEAKER = "SPEAKER_MAIN"
SPLITS = ("train", "eval")


class DataError(StageError):
    """A dataset that cannot be built or read; the message names the file or field."""


@dataclass
class Utterance:
    """One dataset entry, as the trainer and the eval stage read it."""

    path: Path
    duration: float
    alignments: list[tuple[str, tuple[float, float], str]]
    text: str
    written: str
    lang: str
    voice: str
    category: str
    number_spans: list[NumberSpan] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return [a[0] for a in self.alignments]


@dataclass
class Item:
    """An utterance before it is written: 24 kHz audio and its labels."""

    audio: np.ndarray
    timings: list[tuple[float, float]]
    spoken: Spoken
    written: str
    lang: str
    category: str
    voice: str
    source: str
    key: str  # what the split is decided on: the prompt's written text
    extra: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)


def index_path(folder: Path, rel: object, where: str) -> Path:
    """The file an index line points at; refused when it could lie outside the dataset folder."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(f"{where}: path {rel!r} must be relative to the dataset folder, without '..'; "
                        "fix the line or rebuild with `invoke data`")
    return folder / rel


def read_split(folder: str | Path, split: str) -> list[Utterance]:
    """Every utterance of `split` ('train' or 'eval'), labels included."""
    folder = Path(folder)
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown; use one of {SPLITS}")
    index = folder / f"{split}.jsonl"
    if not index.is_file():
        raise DataError(f"{index}: missing; build the dataset with `invoke data` or pass its folder")
    out = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            rel, duration = entry["path"], float(entry["duration"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DataError(f"{index}:{n}: not a {{\"path\", \"duration\"}} JSON line; "
                            f"run `invoke data --check {folder}`") from None
        audio = index_path(folder, rel, f"{index}:{n}")
        labels_path = audio.with_suffix(".json")
        try:
            labels = json.loads(labels_path.read_text())
            out.append(Utterance(
                path=audio, duration=duration,
                alignments=[(w, (float(t[0]), float(t[1])), sp) for w, t, sp in labels["alignments"]],
                text=labels.get("text", ""), written=labels.get("written", ""), lang=labels.get("lang", "en"),
                voice=labels.get("voice", ""), category=labels.get("category", ""),
                number_spans=[NumberSpan(**s) for s in labels.get("number_spans", [])],
                flags=list(labels.get("flags", []))))
        except FileNotFoundError:
            raise DataError(f"{labels_path}: missing (listed in {index.name} line {n}); every audio file needs "
                            f"its labels beside it: run `invoke data --check {folder}`") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
            raise DataError(f"{labels_path}: unreadable labels ({exc.__class__.__name__}: {exc}); "
                            f"run `invoke data --check {folder}`") from None
    return out


def dataset_text_delay(folder: str | Path) -> float | None:
    """The text delay a dataset was built for (its manifest's `text_delay`; None if it has no
    manifest, e.g. a folder assembled by hand)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        delay = json.loads(path.read_text()).get("text_delay")
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rebuild with `invoke data`") from None
    return None if delay is None else float(delay)
