"""The dataset: prompts -> audio -> word timings -> folder in the moshi-finetune layout.

Layout (what the trainer and the eval stage read):
    train.jsonl, eval.jsonl   one {"path": "train/00012.wav", "duration": 4.21} per line
    train/00012.wav           mono 24 kHz 16-bit PCM
    train/00012.json          {"alignments": [[word, [start, end], "SPEAKER_MAIN"], ...], "text", "written",
                               "lang", "voice", "category", "number_spans", "source", "flags", ...}
    manifest.json             counts per split, category, language and voice; seed; generator version

The split is by prompt (its written text), so no prompt is in both. The folder is built beside
its target and renamed into place; a lock file refuses a second concurrent build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import SAMPLE_RATE, WHISPER_RATE, resample, with_silence, write_text, write_wav
from .normalize import NumberSpan, Spoken
from .prompts import Prompt, make_prompts
from .synth import pick_voice, synthesize

GENERATOR = "stt-numerals data v1"
SPEAKER = "SPEAKER_MAIN"
SPLITS = ("train", "eval")


class DataError(ValueError):
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


def split_of(key: str, seed: int, eval_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def ensure_tail(audio: np.ndarray, last_end: float, min_tail: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Pad with silence so at least `min_tail` seconds follow the last word, as stored: labels keep
    1 ms (the end may round up by 0.5 ms) and the index 0.1 ms (the duration may round down)."""
    missing = round(last_end, 3) + min_tail + 1e-4 - len(audio) / rate
    if missing <= 0:
        return audio
    return np.concatenate([audio, np.zeros(int(np.ceil(missing * rate)), np.float32)])


# --- synthesized utterances -----------------------------------------------------------------------

def synthesize_prompt(prompt: Prompt, cfg_data, rng: random.Random, annotators: dict, split: str = "train") -> Item:
    """Speak one prompt with a random voice; timings from espeak, or from Whisper for piper."""
    voice = pick_voice(prompt.lang, rng, cfg_data.piper_fraction, cfg_data.eval_voices, split)
    audio, rate, timings = synthesize(voice, prompt.spoken.tts)
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio / peak * rng.uniform(0.25, 0.9)
    lead = rng.uniform(0.0, cfg_data.lead_silence_max)
    tail = cfg_data.text_delay + cfg_data.tail_margin + rng.uniform(0.0, 0.5)
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    clip = with_silence(audio, lead, tail, rate, noise_db=rng.uniform(-80, -55), rng=noise_rng)
    flags, extra = [], {"tts": voice.params}
    if timings is None:
        annotation = annotators[prompt.lang].annotate(resample(clip, rate, WHISPER_RATE), prompt.spoken)
        timings, flags = annotation.timings, annotation.flags
        extra["whisper_text"] = annotation.whisper_text
        extra["timing"] = "whisper"
    else:
        timings = [(s + lead, e + lead) for s, e in timings]
        extra["timing"] = "tts"
    clip24 = ensure_tail(resample(clip, rate, SAMPLE_RATE), timings[-1][1], cfg_data.text_delay + cfg_data.tail_margin)
    return Item(clip24, timings, prompt.spoken, prompt.written, prompt.lang, prompt.category, voice.id,
                voice.engine, prompt.written, extra, flags)


# --- writing ------------------------------------------------------------------------------------

def _labels(item: Item) -> dict:
    alignments = [[w, [round(s, 3), round(e, 3)], SPEAKER] for w, (s, e) in zip(item.spoken.words, item.timings)]
    return {"alignments": alignments, "text": item.spoken.text, "written": item.written, "lang": item.lang,
            "voice": item.voice, "category": item.category,
            "number_spans": [s.to_json() for s in item.spoken.spans], "source": item.source,
            "flags": item.flags, **item.extra}


def write_item(folder: Path, split: str, index: int, item: Item) -> dict:
    """Write the WAV and its labels; return the index line."""
    rel = f"{split}/{index:05d}.wav"
    write_wav(folder / rel, item.audio)
    write_text(folder / rel.replace(".wav", ".json"), json.dumps(_labels(item), ensure_ascii=False) + "\n")
    return {"path": rel, "duration": round(len(item.audio) / SAMPLE_RATE, 4)}


@contextmanager
def _locked(out: Path):
    """One build per output folder: a second one is refused, a stale lock (dead pid) is taken over."""
    lock = out.parent / f".{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a stale lock is removed once, then taken
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            except PermissionError:
                pass
            raise DataError(f"{out}: another `invoke data` (pid {pid}) is writing this folder; "
                            "wait for it to finish or set data.out to another folder") from None
    else:
        raise DataError(f"{lock}: cannot take the build lock; remove it if no build is running")
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class _LazyAnnotators(dict):
    """One Annotator per language, Whisper loaded on first use: espeak-only builds never pay for it."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.model = cfg, None

    def __missing__(self, lang: str):
        from .annotate import Annotator
        from .whisper_model import load_whisper

        if self.model is None:
            self.model = load_whisper(self.cfg.data.whisper, self.cfg.artifacts_dir / "whisper")
        self[lang] = Annotator(self.model, lang)
        return self[lang]


def build_dataset(cfg) -> Path:
    """`invoke data`: synthesize `data.count` prompts, import `data.audio_dirs`, write, validate."""
    from .check import check_dataset

    d = cfg.data
    out = cfg.output_path(d.out)
    with _locked(out):
        staging = out.parent / f".{out.name}.building"
        shutil.rmtree(staging, ignore_errors=True)  # we hold the lock: a leftover is from a dead build
        staging.mkdir(parents=True)
        try:
            _build_into(staging, cfg)
            problems = check_dataset(staging)
            if problems:
                raise DataError(f"the built dataset fails its own check ({len(problems)} problems), first: {problems[0]}")
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if out.exists():
                out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


def _build_into(folder: Path, cfg) -> None:
    from .record import import_items

    d = cfg.data
    rng = random.Random(d.seed)
    prompts = make_prompts(d.count, d.seed, d.french_fraction, d.plain_fraction)
    splits = [split_of(p.written, d.seed, d.eval_fraction) for p in prompts]
    if prompts and "eval" not in splits and d.eval_fraction > 0 and len({p.written for p in prompts}) > 1:
        # Small builds: put the prompt with the lowest hash in eval so both splits exist.
        key = min({p.written for p in prompts}, key=lambda k: hashlib.sha256(f"{d.seed}\0{k}".encode()).digest())
        splits = ["eval" if p.written == key else s for p, s in zip(prompts, splits)]
    annotators = _LazyAnnotators(cfg)
    index: dict[str, list[dict]] = {s: [] for s in SPLITS}
    stats: Counter = Counter()
    counts = {k: Counter() for k in ("category", "lang", "voice", "source")}
    written_in: dict[str, set[str]] = {s: set() for s in SPLITS}

    def add(item: Item, split: str) -> None:
        # A prompt read twice (a plain sentence, a re-recording) stays in the split it first got.
        for other in SPLITS:
            if other != split and item.key in written_in[other]:
                split = other
        index[split].append(write_item(folder, split, sum(map(len, index.values())), item))
        written_in[split].add(item.key)
        for k in counts:
            counts[k][f"{split}/{getattr(item, k)}"] += 1
        stats["flagged"] += bool(item.flags)

    for prompt, split in tqdm(list(zip(prompts, splits)), desc="synthesizing", unit="utt", disable=not prompts):
        add(synthesize_prompt(prompt, d, rng, annotators, split), split)
    for item in import_items(cfg, annotators):
        add(item, split_of(item.key, d.seed, d.eval_fraction))

    for split in SPLITS:
        write_text(folder / f"{split}.jsonl", "".join(json.dumps(line) + "\n" for line in index[split]))
    manifest = {
        "generator": GENERATOR, "seed": d.seed,
        "splits": {s: len(index[s]) for s in SPLITS},
        "hours": round(sum(x["duration"] for s in SPLITS for x in index[s]) / 3600, 4),
        **{f"{k}_counts": _nested(v) for k, v in counts.items()},
        "flagged": stats["flagged"], "text_delay": d.text_delay, "tail_margin": d.tail_margin,
        "label_style": "sentence case and punctuation like Kyutai's STT output; numbers as words",
    }
    write_text(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _nested(counter: Counter) -> dict:
    out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for key, n in sorted(counter.items()):
        split, name = key.split("/", 1)
        out[split][name] = n
    return out


# --- reading ------------------------------------------------------------------------------------

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
