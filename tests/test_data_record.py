"""Your own audio: a recording session without a microphone, and importing folders of any format."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import load_config
from pipeline.data import build_dataset, check_dataset, digits_of, read_split, record_session
from pipeline.data.audio import AudioError, read_audio, resample
from pipeline.data.normalize import normalize_text, sentence_case
from pipeline.data.synth import PIPER_VOICE, Voice, synthesize

PIPER = Voice("piper", PIPER_VOICE, {"length_scale": 1.05, "noise_scale": 0.0, "noise_w_scale": 0.0})  # reproducible


def _speech(text: str, rate: int, voice: Voice = PIPER) -> np.ndarray:
    spoken = sentence_case(normalize_text(text))
    audio, source_rate, _ = synthesize(voice, spoken.tts)
    return resample(np.concatenate([np.zeros(source_rate // 3, np.float32), audio]), source_rate, rate)


def test_recording_session_without_a_microphone(tmp_path):
    answers = iter(["", "", "s", "", "", "q"])  # record, stop, skip, record, stop, quit
    asked, shown = [], []

    def ask(question):
        asked.append(question)
        return next(answers)

    def capture(wait_for_stop):
        wait_for_stop()  # the session decides when to stop (Enter)
        return _speech(shown[-1].split("say: ")[1], 48000), 48000

    paths = record_session(tmp_path / "rec", count=5, seed=2, capture=capture, ask=ask, show=shown.append,
                           speaker="tester")
    assert len(paths) == 2 and sum("recording..." in q for q in asked) == 2
    for path in paths:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (24000, 1)
        meta = json.loads(path.with_suffix(".prompt.json").read_text())
        assert meta["voice"] == "recording:tester" and not any(c.isdigit() for c in meta["text"])
        assert meta["text"] in "\n".join(shown)

    cfg = load_config(None, [f"artifacts={tmp_path}", "data.count=0", f"data.audio_dirs=[{tmp_path / 'rec'}]"])
    out = build_dataset(cfg)
    assert check_dataset(out) == []
    utterances = read_split(out, "train") + read_split(out, "eval")
    assert len(utterances) == 2 and {u.voice for u in utterances} == {"recording:tester"}
    by_text = {json.loads(p.with_suffix(".prompt.json").read_text())["text"] for p in paths}
    assert {u.text for u in utterances} == by_text


def test_too_short_take_is_not_saved(tmp_path):
    answers = iter(["", "", "q"])
    paths = record_session(tmp_path, count=2, seed=0, capture=lambda stop: (stop(), (np.zeros(100), 16000))[1],
                           ask=lambda q: next(answers), show=lambda s: None)
    assert paths == [] and not list(tmp_path.glob("*.wav"))


@pytest.fixture(scope="module")
def imported(module_tmp):
    tmp = module_tmp
    src = tmp / "mine"
    (src / "sub").mkdir(parents=True)
    clips = {  # name: (text spoken, transcript file or None, rate, channels, format)
        "a.wav": ("My order number is 4915302.", "My order number is 4915302.", 16000, 2, "WAV"),
        "b.flac": ("Please call me back at 555-123-4567.", "please call me back at 555-123-4567", 44100, 1, "FLAC"),
        "sub/c.ogg": ("Thank you very much for your help today.", None, 48000, 2, "OGG"),
        "d.mp3": ("The location code is 045120.", "The location code is 045120.", 22050, 1, "MP3"),
    }
    for name, (text, transcript, rate, channels, fmt) in clips.items():
        audio = _speech(text, rate)
        audio = np.stack([audio] * channels, axis=1) if channels == 2 else audio
        sf.write(str(src / name), audio, rate, format=fmt)
        if transcript:
            (src / name).with_suffix(".txt").write_text(transcript + "\n")
    (src / "broken.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    (src / "notes.md").write_text("not audio")
    cfg = load_config(None, [f"artifacts={tmp}", "data.count=0", f"data.audio_dirs=[{src}]"])
    return build_dataset(cfg), clips


def test_import_reads_every_format_and_skips_broken_files(imported):
    out, clips = imported
    assert check_dataset(out) == []
    utterances = read_split(out, "train") + read_split(out, "eval")
    originals = {Path(json.loads(u.path.with_suffix(".json").read_text())["original"]).name: u for u in utterances}
    assert set(originals) == {"a.wav", "b.flac", "c.ogg", "d.mp3"}  # broken.wav skipped, notes.md ignored
    for u in utterances:
        assert u.category == "imported" and u.voice.startswith("import:")
        assert sf.info(str(u.path)).samplerate == 24000 and sf.info(str(u.path)).channels == 1


def test_import_uses_transcripts_and_spells_their_numbers(imported):
    out, _ = imported
    by_name = {Path(json.loads(u.path.with_suffix(".json").read_text())["original"]).name: u
               for u in read_split(out, "train") + read_split(out, "eval")}
    assert digits_of(by_name["a.wav"].words) == "4915302"
    assert digits_of(by_name["b.flac"].words) == "5551234567"
    assert by_name["b.flac"].words[0] == "Please"  # the transcript's sentence start, capitalised
    assert digits_of(by_name["d.mp3"].words) == "045120"  # leading zero kept
    assert by_name["a.wav"].number_spans[0].written == "4915302"
    # No transcript: Whisper's own words (no numbers here), with its casing and punctuation.
    assert by_name["c.ogg"].text.lower().startswith("thank you")


def test_read_audio_any_rate_and_channels(tmp_path):
    tone = np.sin(np.arange(44100) / 44100 * 2 * np.pi * 440).astype(np.float32) * 0.5
    sf.write(str(tmp_path / "t.flac"), np.stack([tone, tone], 1), 44100)
    audio = read_audio(tmp_path / "t.flac", 24000)
    assert audio.ndim == 1 and abs(len(audio) - 24000) <= 1 and 0.45 < np.abs(audio).max() < 0.55
    with pytest.raises(AudioError, match="unsupported audio type '.aiff'"):
        read_audio(tmp_path / "x.aiff")
    (tmp_path / "bad.wav").write_bytes(b"nope")
    with pytest.raises(AudioError, match="bad.wav: cannot decode audio"):
        read_audio(tmp_path / "bad.wav")


def test_no_microphone_is_one_clear_error(tmp_path, monkeypatch):
    import sys
    import types

    from pipeline.data import record

    fake = types.ModuleType("sounddevice")

    def query_devices(kind=None):
        raise OSError("PortAudio library not found")

    fake.query_devices = query_devices
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(ValueError, match="no microphone available .*PortAudio library not found.*data.audio_dirs"):
        record.record_session(tmp_path, count=1, seed=0, ask=lambda q: "", show=lambda s: None)
    assert not list(tmp_path.iterdir())
