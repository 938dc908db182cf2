"""Eval utterances -> `Reference`s: a dataset from `invoke data`, or any folder of audio with
`<name>.txt` transcripts, or `Utterance` objects built by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..errors import StageError
from .metrics import Reference, Span, normalize_word

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
DIGIT_RUN = 2  # a run of this many digit words in a plain transcript is a number span


class EvalError(StageError):
    """Eval inputs that cannot be used; the message says what to pass instead."""


def _span(s: Any) -> Span:
    if isinstance(s, dict):
        return Span(int(s["first"]), int(s["last"]), str(s.get("written", "")))
    return Span(int(s.first), int(s.last), str(getattr(s, "written", "")))


def _ident(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def energy_bounds(path: Path) -> tuple[float, float] | None:
    from ..data.audio import SAMPLE_RATE, read_audio, speech_bounds

    return speech_bounds(read_audio(path), SAMPLE_RATE)


def from_utterance(u: Any) -> Reference:
    """A `pipeline.data.Utterance` (or anything with path, alignments, number_spans, text)."""
    path = Path(u.path)
    alignments = list(getattr(u, "alignments", None) or [])
    spans = [_span(s) for s in getattr(u, "number_spans", None) or []]
    if alignments:
        words = [a[0] for a in alignments]
        times = [(float(a[1][0]), float(a[1][1])) for a in alignments]
        for s in spans:
            if not 0 <= s.first <= s.last < len(words):
                raise EvalError(f"{path}: number span {s.first}..{s.last} is outside its {len(words)} words")
        return Reference(_ident(path), words, times, spans, path=str(path), category=getattr(u, "category", ""))
    words, found = transcript_words(getattr(u, "text", ""), getattr(u, "lang", "en"))
    bounds = energy_bounds(path)
    return Reference(_ident(path), words, None, spans or found, bounds, "energy" if bounds else "none",
                     str(path), getattr(u, "category", ""))


def _digit_words(lang: str) -> set[str]:
    from ..data.normalize import DIGITS

    extra = {"oh", "double", "triple"} if lang == "en" else set()
    return set(DIGITS.get(lang, DIGITS["en"])) | extra


def _digits(words: list[str], lang: str) -> str:
    from ..data.normalize import digits_of

    try:
        return digits_of(words, lang if lang in ("en", "fr") else "en")
    except (KeyError, ValueError):
        return ""


def transcript_words(text: str, lang: str = "en") -> tuple[list[str], list[Span]]:
    """Label words and number spans of a plain transcript: written numbers ('1296') are read
    with the data stage's normalizer; in a transcript already in words, each run of at least
    two digit words ('one two nine six') is a span."""
    from ..data.normalize import NormalizationError, normalize_text

    if any(ch.isdigit() for ch in text):
        try:
            spoken = normalize_text(text, lang if lang in ("en", "fr") else "en", warnings=[])
            return spoken.words, [Span(s.first, s.last, s.written) for s in spoken.spans]
        except NormalizationError:
            return text.split(), []
    words, digits, spans, run = text.split(), _digit_words(lang), [], []
    for i, w in enumerate(words + [""]):
        if w and normalize_word(w) in digits:
            run.append(i)
            continue
        if len(run) >= DIGIT_RUN:
            spans.append(Span(run[0], run[-1], _digits([words[k] for k in run], lang)))
        run = []
    return words, spans


def read_transcribed_folder(folder: Path, lang: str = "en") -> list[Reference]:
    """Every audio file under `folder` with a `<name>.txt` transcript beside it, or the
    `<name>.prompt.json` of an `invoke record` session (its spoken text), sorted."""
    import json

    refs = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        txt, prompt = path.with_suffix(".txt"), path.with_suffix(".prompt.json")
        try:
            if txt.is_file():
                text, text_lang = txt.read_text(encoding="utf-8").strip(), lang
            elif prompt.is_file():
                meta = json.loads(prompt.read_text(encoding="utf-8"))
                text, text_lang = meta["text"], meta.get("lang", lang)
            else:
                continue
        except UnicodeDecodeError:
            raise EvalError(f"{txt}: not UTF-8 text; save the transcript as UTF-8") from None
        except (ValueError, KeyError, TypeError):
            raise EvalError(f"{prompt}: not a recording's prompt file (JSON with a 'text' field); "
                            "record it again or write a <name>.txt transcript") from None
        words, spans = transcript_words(text, text_lang)
        bounds = energy_bounds(path)
        rel = path.relative_to(folder)
        refs.append(Reference(str(rel.with_suffix("")), words, None, spans, bounds, "energy" if bounds else "none",
                              str(path)))
    return refs


def load_references(folder: Path, split: str = "eval", lang: str = "en") -> list[Reference]:
    """A dataset folder (`<split>.jsonl`) or a folder of audio with transcripts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such folder; build the eval set with `invoke data` or set eval.data "
                        "to a folder of audio files with <name>.txt transcripts")
    if (folder / f"{split}.jsonl").is_file():
        from ..data import read_split

        return [from_utterance(u) for u in read_split(folder, split)]
    refs = read_transcribed_folder(folder, lang)
    if not refs:
        raise EvalError(f"{folder}: neither {split}.jsonl nor audio files with <name>.txt transcripts "
                        "(or `invoke record`'s <name>.prompt.json); "
                        "build the eval set with `invoke data` or point eval.data at such a folder")
    return refs


def as_references(items: Iterable[Any]) -> list[Reference]:
    return [x if isinstance(x, Reference) else from_utterance(x) for x in items]
