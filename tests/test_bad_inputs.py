"""Bad inputs (issue #9): each is refused in one line naming the file or field and what to do,
or repaired with a warning. One test or parametrized case per input and entry point; the
table in docs/bad-input.md points here.

Audio goes in through four doors, each tested with every bad kind: importing a folder
(`data.audio_dirs`), eval's folder of audio with transcripts, `invoke data --check`, and the
trainer (`load_samples`, which reads dataset audio strictly)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.checkpoint import Checkpoint
from pipeline.config import load_config
from pipeline.data import DataError, build_dataset, check_dataset, read_split
from pipeline.data.audio import AudioError, read_audio, resample, write_wav
from pipeline.evaluate.sources import EvalError, load_references
from pipeline.presets import synthetic_audio

RATE = 24_000
KINDS = ("corrupt", "empty file", "zero-length", "NaN", "clipped", "beyond full scale", "stereo",
         "8000 Hz", "44100 Hz", "48000 Hz")


def _name(kind: str) -> str:
    return kind.replace(" ", "_") + ".wav"


def _write(kind: str, path: Path, speech: np.ndarray) -> Path:
    """`speech` (mono float32, 24 kHz, peak 0.5) written as the bad `kind` of file."""
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00not audio")
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "zero-length":
        sf.write(str(path), np.zeros(0, np.float32), RATE, subtype="PCM_16")
    elif kind == "NaN":
        audio = speech.copy()
        audio[1000:1100] = np.nan
        sf.write(str(path), audio, RATE, subtype="FLOAT")
    elif kind == "clipped":
        sf.write(str(path), np.clip(speech * 10, -1, 1), RATE, subtype="PCM_16")
    elif kind == "beyond full scale":
        sf.write(str(path), speech * 6, RATE, subtype="FLOAT")  # peak 3.0: nothing lost yet
    elif kind == "stereo":
        sf.write(str(path), np.stack([speech, speech], axis=1), RATE, subtype="PCM_16")
    else:
        rate = int(kind.split()[0])
        sf.write(str(path), resample(speech, RATE, rate), rate, subtype="PCM_16")
    return path


def _synthetic(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    audio = synthetic_audio(seconds, seed)
    return (audio / np.abs(audio).max() * 0.5).astype(np.float32)


def _one_line(message: str, path: Path) -> None:
    assert "\n" not in message and str(path) in message, message


# --- a hand-made dataset folder in `invoke data`'s layout -------------------------------------

WORDS = {"train": ["Order", "one", "two."], "eval": ["Call", "three", "four."]}


def _dataset(folder: Path) -> Path:
    """One train and one eval utterance: words at 0.5-1.4 s of 3 s of audio."""
    for i, (split, words) in enumerate(WORDS.items()):
        audio = _synthetic(seed=i)
        write_wav(folder / split / f"{i:05d}.wav", audio)
        alignments = [[w, [0.5 + 0.3 * k, 0.75 + 0.3 * k], "SPEAKER_MAIN"] for k, w in enumerate(words)]
        labels = {"alignments": alignments, "text": " ".join(words), "written": f"prompt {i}", "lang": "en",
                  "number_spans": [{"first": 1, "last": 2, "written": "12", "kind": "code"}]}
        (folder / split / f"{i:05d}.json").write_text(json.dumps(labels))
        line = json.dumps({"path": f"{split}/{i:05d}.wav", "duration": len(audio) / RATE})
        (folder / f"{split}.jsonl").write_text(line + "\n")
    manifest = {"splits": {"train": 1, "eval": 1}, "text_delay": 0.5, "tail_margin": 0.5}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    return _dataset(tmp_path / "data")


def _relabel(folder: Path, change) -> Path:
    labels_path = folder / "train" / "00000.json"
    labels = json.loads(labels_path.read_text())
    change(labels)
    labels_path.write_text(json.dumps(labels))
    return labels_path


def test_the_hand_made_dataset_is_valid(dataset):
    assert check_dataset(dataset) == []
    assert [u.words for u in read_split(dataset, "train")] == [WORDS["train"]]


# --- audio: `invoke data --check` ---------------------------------------------------------------

CHECK = {
    "corrupt": "unreadable audio (",
    "empty file": "empty file (0 bytes); rebuild with `invoke data` or remove line 1 of train.jsonl",
    "zero-length": "holds no audio (0 samples); rebuild",
    "NaN": "contains NaN or infinite samples; rebuild",
    "clipped": "clipped (",
    "beyond full scale": "of samples at or beyond full scale); re-record it at a lower level or remove line 1",
    "stereo": "WAV 24000 Hz 2 ch; must be WAV 24000 Hz mono: convert it",
    "8000 Hz": "WAV 8000 Hz 1 ch; must be WAV 24000 Hz mono: convert it",
    "44100 Hz": "WAV 44100 Hz 1 ch; must be WAV 24000 Hz mono: convert it",
    "48000 Hz": "WAV 48000 Hz 1 ch; must be WAV 24000 Hz mono: convert it",
}


@pytest.mark.parametrize("kind", KINDS)
def test_check_names_bad_audio(dataset, kind):
    path = _write(kind, dataset / "train" / "00000.wav", _synthetic())
    hits = [p for p in check_dataset(dataset) if CHECK[kind] in p]
    assert len(hits) == 1, check_dataset(dataset)
    assert hits[0].startswith(f"{path}: ") and hits[0].endswith("remove line 1 of train.jsonl")
    _one_line(hits[0], path)


# --- audio: the trainer ---------------------------------------------------------------------------

TRAIN = {
    "corrupt": "cannot decode audio",
    "empty file": "empty file (0 bytes); re-export it or remove it",
    "zero-length": "the file holds no audio (0 samples); re-record it or remove it",
    "NaN": "audio contains NaN or infinite samples; re-export it or remove it",
    "clipped": "of samples at or beyond full scale); re-record it at a lower level or remove it",
    "beyond full scale": "of samples at or beyond full scale); re-record it at a lower level or remove it",
    "stereo": "audio is 24000 Hz with 2 channel(s); training needs mono 24000 Hz",
    "8000 Hz": "audio is 8000 Hz with 1 channel(s); training needs mono 24000 Hz",
    "44100 Hz": "audio is 44100 Hz with 1 channel(s); training needs mono 24000 Hz",
    "48000 Hz": "audio is 48000 Hz with 1 channel(s); training needs mono 24000 Hz",
}


def _train_cfg(tmp_path: Path, data: Path):
    return load_config(None, [f"artifacts={tmp_path}", f"train.data={data}", "train.device=cpu"])


@pytest.mark.parametrize("kind", KINDS)
def test_trainer_refuses_bad_audio(dataset, tmp_path, tiny_ckpt, kind):
    from pipeline.train import load_samples

    path = _write(kind, dataset / "train" / "00000.wav", _synthetic())
    with pytest.raises(ValueError) as err:
        load_samples(_train_cfg(tmp_path, dataset), Checkpoint.open(tiny_ckpt), "cpu")
    assert str(err.value).startswith(f"{path}: ") and TRAIN[kind] in str(err.value)
    assert "remove it" in str(err.value) or "`invoke data`" in str(err.value)  # what to do
    _one_line(str(err.value), path)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # no codes cached for it


# --- audio: eval's folder of audio with transcripts -------------------------------------------------

EVAL_REFUSED = {
    "corrupt": "cannot decode audio",
    "empty file": "empty file (0 bytes); re-export it or remove it",
    "zero-length": "the file holds no audio (0 samples); re-record it or remove it",
    "NaN": "audio contains NaN or infinite samples; re-export it or remove it",
}
WARNED = {  # import and eval: the file is used, repaired where that is safe
    "beyond full scale": "peak 3.00 is beyond full scale, scaled down to 0.99",
    "stereo": "2 channels mixed down to mono",
    "8000 Hz": "8000 Hz resampled to 24000 Hz",
    "44100 Hz": "44100 Hz resampled to 24000 Hz",
    "48000 Hz": "48000 Hz resampled to 24000 Hz",
    "clipped": "of samples at full scale); re-record it at a lower level; used as it is",
}


@pytest.mark.parametrize("kind", sorted(EVAL_REFUSED))
def test_eval_folder_refuses_bad_audio(tmp_path, kind):
    path = _write(kind, tmp_path / _name(kind), _synthetic())
    path.with_suffix(".txt").write_text("Order one two.\n")
    with pytest.raises(AudioError) as err:
        load_references(tmp_path)
    assert str(err.value).startswith(f"{path}: ") and EVAL_REFUSED[kind] in str(err.value)
    _one_line(str(err.value), path)


@pytest.mark.parametrize("kind", sorted(WARNED))
def test_eval_folder_repairs_with_a_warning(tmp_path, capsys, kind):
    path = _write(kind, tmp_path / _name(kind), _synthetic())
    path.with_suffix(".txt").write_text("Order one two.\n")
    refs = load_references(tmp_path)
    assert [r.path for r in refs] == [str(path)] and refs[0].words == ["Order", "one", "two."]
    audio = read_audio(path)  # what streaming reads: mono 24 kHz, peak at most 1
    assert audio.ndim == 1 and abs(len(audio) - 3 * RATE) <= 2 and np.abs(audio).max() <= 1.0
    out = capsys.readouterr().out
    assert out.count(f"warning: {path}: ") == 1, out  # once, though the file was read twice
    assert WARNED[kind] in out


def test_eval_transcript_that_is_not_utf8_is_named(tmp_path):
    write_wav(tmp_path / "a.wav", _synthetic())
    (tmp_path / "a.txt").write_bytes(b"Order \xff\xfe one")
    with pytest.raises(EvalError, match=f"^{tmp_path / 'a.txt'}: not UTF-8 text; save the transcript as UTF-8$"):
        load_references(tmp_path)


# --- audio: importing a folder (`data.audio_dirs`) ------------------------------------------------

SPOKEN = "Thank you for your help."  # no number: one reading to align, so it is quick


def _speech() -> np.ndarray:
    from pipeline.data.normalize import normalize_text, sentence_case
    from pipeline.data.synth import PIPER_VOICE, Voice, synthesize

    voice = Voice("piper", PIPER_VOICE, {"length_scale": 1.05, "noise_scale": 0.0, "noise_w_scale": 0.0})
    audio, rate, _ = synthesize(voice, sentence_case(normalize_text(SPOKEN)).tts)
    audio = resample(np.concatenate([np.zeros(rate // 3, np.float32), audio, np.zeros(rate // 3, np.float32)]),
                     rate, RATE)
    return (audio / np.abs(audio).max() * 0.5).astype(np.float32)


IMPORT_SKIPPED = {
    "corrupt": "skipped: cannot decode audio",
    "empty file": "skipped: empty file (0 bytes); re-export it or remove it",
    "zero-length": "skipped: the file holds no audio (0 samples); re-record it or remove it",
    "NaN": "skipped: audio contains NaN or infinite samples; re-export it or remove it",
    "clipped": "of samples at full scale); re-record it at a lower level or remove it",
}
PROMPTS = {  # a recording's `.prompt.json` beside good audio
    "malformed json": ("{\"text\": ", "not valid JSON (Expecting value"),
    "no text": (json.dumps({"lang": "en"}), "needs a 'text' field with the words spoken"),
    "unknown lang": (json.dumps({"text": "thank you for your help", "lang": "de"}), "lang 'de' must be one of"),
}


@pytest.fixture(scope="module")
def imported(module_tmp):
    """One `invoke data` build importing a folder with every bad kind of audio and prompt file."""
    tmp = module_tmp
    src = tmp / "mine"
    src.mkdir()
    speech = _speech()
    for kind in KINDS:
        _write(kind, src / _name(kind), speech).with_suffix(".txt").write_text(SPOKEN + "\n")
    for name, (text, _) in PROMPTS.items():
        write_wav(src / _name(name), speech)
        (src / _name(name)).with_suffix(".prompt.json").write_text(text)
    cfg = load_config(None, [f"artifacts={tmp}", "data.count=0", f"data.audio_dirs=[{src}]"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        folder = build_dataset(cfg)
    originals = {Path(json.loads(p.read_text())["original"]).name for p in folder.glob("*/*.json")}
    return src, folder, out.getvalue().splitlines(), originals


def _warnings(lines: list[str], path: Path) -> list[str]:
    return [line for line in lines if line.startswith(f"warning: {path}: ")]


@pytest.mark.parametrize("kind", sorted(IMPORT_SKIPPED))
def test_import_skips_bad_audio_with_a_warning(imported, kind):
    src, _, lines, originals = imported
    path = src / _name(kind)
    found = _warnings(lines, path)
    assert len(found) == 1 and IMPORT_SKIPPED[kind] in found[0], lines
    assert _name(kind) not in originals


@pytest.mark.parametrize("kind", sorted(set(WARNED) - set(IMPORT_SKIPPED)))
def test_import_repairs_with_a_warning(imported, kind):
    src, folder, lines, originals = imported
    found = _warnings(lines, src / _name(kind))
    assert len(found) == 1 and WARNED[kind] in found[0] and "skipped" not in found[0], lines
    assert _name(kind) in originals
    utterance = next(u for u in read_split(folder, "train") + read_split(folder, "eval")
                     if Path(json.loads(u.path.with_suffix(".json").read_text())["original"]).name == _name(kind))
    audio, rate = sf.read(str(utterance.path), dtype="float32", always_2d=True)
    assert (rate, audio.shape[1]) == (RATE, 1) and np.abs(audio).max() < 1.0
    assert utterance.words == SPOKEN.split()


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_import_skips_a_bad_prompt_file_naming_it(imported, name):
    src, _, lines, originals = imported
    found = _warnings(lines, src / _name(name))
    prompt = (src / _name(name)).with_suffix(".prompt.json")
    assert len(found) == 1 and f"skipped: {prompt}: {PROMPTS[name][1]}" in found[0], lines
    assert _name(name) not in originals


def test_imported_dataset_passes_its_check(imported):
    _, folder, _, originals = imported
    assert check_dataset(folder) == []
    assert originals == {_name(k) for k in set(WARNED) - set(IMPORT_SKIPPED)}


# --- the dataset index and labels -----------------------------------------------------------------

ESCAPES = ["../outside.wav", "train/../../outside.wav", "ABSOLUTE"]


@pytest.mark.parametrize("rel", ESCAPES)
def test_index_path_outside_the_dataset_is_refused(dataset, rel):
    outside = _dataset(dataset.parent / "other") / "train" / "00000.wav"  # a real file: only the path is wrong
    (dataset.parent / "outside.wav").write_bytes(outside.read_bytes())
    (dataset.parent / "outside.json").write_bytes(outside.with_suffix(".json").read_bytes())
    rel = str(outside) if rel == "ABSOLUTE" else rel
    (dataset / "train.jsonl").write_text(json.dumps({"path": rel, "duration": 3.0}) + "\n")
    index = dataset / "train.jsonl"
    with pytest.raises(DataError, match=f"^{index}:1: path {rel!r} must be relative to the dataset folder"):
        read_split(dataset, "train")
    problems = check_dataset(dataset)
    assert [p for p in problems if p.startswith(f"{index}:1: path {rel!r} must be relative")], problems


def test_malformed_labels_json_is_named(dataset):
    labels = dataset / "train" / "00000.json"
    labels.write_text("{\"alignments\": [")
    with pytest.raises(DataError, match=f"^{labels}: unreadable labels \\(JSONDecodeError: .*invoke data --check"):
        read_split(dataset, "train")
    assert f"{labels}: no readable 'alignments' (JSONDecodeError); fix it or rebuild with `invoke data` or " \
           "remove line 1 of train.jsonl" in check_dataset(dataset)


def test_labels_json_that_is_not_an_object_is_named(dataset):
    labels = dataset / "train" / "00000.json"
    labels.write_text("[1, 2]")
    with pytest.raises(DataError, match=f"^{labels}: unreadable labels"):
        read_split(dataset, "train")
    assert any(p.startswith(f"{labels}: no readable 'alignments'") for p in check_dataset(dataset))


def test_missing_labels_json_is_named(dataset):
    labels = dataset / "train" / "00000.json"
    labels.unlink()
    with pytest.raises(DataError, match=f"^{labels}: missing \\(listed in train.jsonl line 1\\)"):
        read_split(dataset, "train")
    assert f"{labels}: missing; every audio file needs its labels beside it" in check_dataset(dataset)


def _set(i: int, start: float, end: float):
    return lambda labels: labels["alignments"][i].__setitem__(1, [start, end])


ALIGNMENTS = {
    "end before start": (_set(1, 0.9, 0.85), "alignment 1 ('one'): times [0.9, 0.85] must satisfy 0 <= start < end"),
    "negative start": (_set(0, -0.2, 0.75), "alignment 0 ('Order'): times [-0.2, 0.75] must satisfy"),
    "overlap": (_set(1, 0.6, 1.0), "alignment 1 ('one'): starts at 0.600 s, before the previous word ends"),
    "beyond the audio": (_set(2, 1.1, 3.5), "alignment 2 ('two.'): ends at 3.500 s, after the audio (3.000 s)"),
}


@pytest.mark.parametrize("name", sorted(ALIGNMENTS))
def test_check_names_bad_alignments(dataset, name):
    change, message = ALIGNMENTS[name]
    labels = _relabel(dataset, change)
    problems = check_dataset(dataset)
    assert len([p for p in problems if p.startswith(f"{labels}: {message}")]) == 1, problems
    assert all(p.startswith(f"{labels}: ") for p in problems)  # one more for "beyond the audio": no tail left


def test_check_names_digits_left_in_labels(dataset):
    def digits(labels):
        labels["alignments"][1][0] = "12"
        labels["text"] = "Order 12 two."

    labels = _relabel(dataset, digits)
    assert (f"{labels}: alignment 1: digit in label '12'; labels must spell numbers as words"
            in check_dataset(dataset))


# --- words the tokenizer cannot encode ------------------------------------------------------------

def test_check_names_a_word_without_visible_characters(dataset):
    def invisible(labels):
        labels["alignments"][1][0] = "\u200b"  # zero-width space: SentencePiece encodes it to nothing
        labels["text"] = " ".join(a[0] for a in labels["alignments"])

    labels = _relabel(dataset, invisible)
    assert check_dataset(dataset) == [f"{labels}: alignment 1: word '\\u200b' has no visible characters; remove it"]


def test_trainer_warns_about_words_the_tokenizer_cannot_encode(dataset, tmp_path, tiny_ckpt, capsys):
    from pipeline.labels import build_text_stream
    from pipeline.train import load_samples

    _relabel(dataset, lambda lab: lab["alignments"][1].__setitem__(0, "\ufeff"))  # BOM: no token
    samples = load_samples(_train_cfg(tmp_path, dataset), Checkpoint.open(tiny_ckpt), "cpu")
    tokenizer = Checkpoint.open(tiny_ckpt).tokenizer
    out = capsys.readouterr().out
    audio = dataset / "train" / "00000.wav"
    assert (f"warning: 1 word(s) in 1 utterance(s) the tokenizer cannot encode are left out of the labels "
            f"(first: '\\ufeff' in {audio}); fix or remove them in the dataset") in out, out
    stream = build_text_stream(samples[0].words, tokenizer.encode, samples[0].frames)
    assert out.count("warning: ") == 1 and len(stream.word_frames) == 2  # "Order" and "two." are written


def test_unknown_token_is_left_out_of_the_text_stream(tmp_path):
    """A tokenizer without byte fallback encodes an unseen character as <unk> (id 0), which the
    text stream would read as end-of-padding: such a word is left out and reported."""
    import sentencepiece as spm

    from pipeline.labels import EPAD, Word, build_text_stream, unencodable, unencodable_summary

    corpus = ["order one two three four five six seven eight nine zero please call"] * 50
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                   model_type="unigram", byte_fallback=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert EPAD in sp.encode("日本") and EPAD not in sp.encode("order")
    words = [Word("order", 0.1, 0.4), Word("日本", 0.5, 0.8), Word("two", 0.9, 1.2)]
    stream = build_text_stream(words, sp.encode, 40)
    assert len(stream.word_frames) == 2
    assert {i for i, t in enumerate(stream.tokens.tolist()) if t == EPAD} == {f - 1 for f in stream.word_frames}
    assert unencodable([w.text for w in words], sp.encode) == ["日本"]
    entries = [{"path": "train/00003.wav", "alignments": [[w.text, [w.start, w.end], "SPEAKER_MAIN"] for w in words]}]
    assert unencodable_summary(entries, sp.encode) == (
        "1 word(s) in 1 utterance(s) the tokenizer cannot encode are left out of the labels (first: '日本' in "
        "train/00003.wav); fix or remove them in the dataset")
