"""Building the dataset: prompts -> audio -> word timings -> a folder in the layout of
`pipeline.data.layout` (moshi-finetune's).

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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import SAMPLE_RATE, WHISPER_RATE, ensure_tail, resample, with_silence, write_text, write_wav
from .layout import GENERATOR, SPEAKER, SPLITS, DataError, Item
from .prompts import Prompt, make_prompts
from .synth import pick_voice, synthesize

def split_of(key: str, seed: int, eval_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


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

    def add(item: Item, split: str, number: int | None = None) -> None:
        # A prompt read twice (a plain sentence, a re-recording) stays in the split it first got.
        for other in SPLITS:
            if other != split and item.key in written_in[other]:
                split = other
        number = sum(map(len, index.values())) if number is None else number
        index[split].append(write_item(folder, split, number, item))
        written_in[split].add(item.key)
        for k in counts:
            counts[k][f"{split}/{getattr(item, k)}"] += 1
        stats["flagged"] += bool(item.flags)

    # Prompt i is file i and draws from its own generator: an eval-only build (data.only_split) writes the
    # eval files of a full build, same prompts, voices and silences (a split is a function of the prompt's text).
    todo, taken = [], Counter()
    for i, (prompt, split) in enumerate(zip(prompts, splits)):
        if d.only_split in ("", split) and (not d.split_limit or taken[split] < d.split_limit):
            todo.append((i, prompt, split))
            taken[split] += 1
    for i, prompt, split in tqdm(todo, desc="synthesizing", unit="utt", disable=not todo):
        add(synthesize_prompt(prompt, d, random.Random(f"{d.seed}:{i}"), annotators, split), split, number=i)
    for k, item in enumerate(import_items(cfg, annotators)):
        add(item, split_of(item.key, d.seed, d.eval_fraction), number=len(prompts) + k)

    for split in SPLITS:
        write_text(folder / f"{split}.jsonl", "".join(json.dumps(line) + "\n" for line in index[split]))
    manifest = {
        "generator": GENERATOR, "seed": d.seed, "count": d.count, "only_split": d.only_split,
        "split_limit": d.split_limit,
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
