"""The dataset folder: layout the trainer reads, validation, split by prompt, safe concurrent builds."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import load_config
from pipeline.data import DataError, build_dataset, check_dataset, digits_of, read_split
from pipeline.data import dataset as ds

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp: Path, *overrides: str):
    return load_config(None, [f"artifacts={tmp}", *overrides])


@pytest.fixture(scope="module")
def built(module_tmp):
    """A small dataset with every source: espeak (en, fr) and piper aligned by Whisper."""
    tmp = module_tmp
    cfg = _cfg(tmp, "data.count=24", "data.piper_fraction=0.15", "data.french_fraction=0.2", "data.seed=1",
               "data.eval_fraction=0.2")
    return build_dataset(cfg)


@pytest.fixture
def copy(built, tmp_path):
    return Path(shutil.copytree(built, tmp_path / "data"))


def _labels(folder: Path, rel: str) -> dict:
    return json.loads((folder / rel).with_suffix(".json").read_text())


def _first(folder: Path, split: str = "train") -> str:
    return json.loads((folder / f"{split}.jsonl").read_text().splitlines()[0])["path"]


def test_layout_is_what_the_trainer_reads(built):
    assert check_dataset(built) == []
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["generator"] == ds.GENERATOR and manifest["seed"] == 1
    assert manifest["splits"]["train"] + manifest["splits"]["eval"] == 24 and manifest["splits"]["eval"] > 0
    sources = {k for split in manifest["source_counts"].values() for k in split}
    assert sources == {"espeak", "piper"}
    assert {k for split in manifest["lang_counts"].values() for k in split} == {"en", "fr"}
    for split in ds.SPLITS:
        for line in (built / f"{split}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            assert set(entry) == {"path", "duration"} and not Path(entry["path"]).is_absolute()
            info = sf.info(str(built / entry["path"]))
            assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
            assert abs(info.frames / 24000 - entry["duration"]) < 1e-3
            labels = _labels(built, entry["path"])
            assert {"alignments", "text", "written", "lang", "voice", "category", "number_spans"} <= set(labels)
            assert all(a[2] == "SPEAKER_MAIN" for a in labels["alignments"])


def test_labels_spell_numbers_and_spans_point_at_them(built):
    utterances = read_split(built, "train") + read_split(built, "eval")
    numbered = [u for u in utterances if u.number_spans]
    assert numbered and any(u.category == "plain" for u in utterances)
    for u in numbered:
        for span in u.number_spans:
            assert (span["first"], span["last"], span["written"]) == (span.first, span.last, span.written)
            words = u.words[span.first:span.last + 1]
            assert not any(c.isdigit() for w in words for c in w)
            if span.kind != "code":
                assert digits_of(words, u.lang) == "".join(c for c in span.written if c.isdigit())


def test_silences_around_speech(built):
    for u in read_split(built, "train"):
        first, last = u.alignments[0][1][0], u.alignments[-1][1][1]
        assert 0 <= first <= 1.3
        assert u.duration - last >= 1.0  # text delay 0.5 s + margin 0.5 s
        audio, rate = sf.read(str(u.path), dtype="float32")
        tail = audio[int((last + 0.2) * rate):]
        assert np.sqrt(np.mean(tail ** 2)) < 0.01  # the tail is silence (a faint noise floor)


def test_piper_utterances_are_aligned_by_whisper(built):
    piper = [json.loads(p.read_text()) for p in built.glob("*/*.json") if '"piper"' in p.read_text()]
    assert piper
    for labels in piper:
        assert labels["timing"] == "whisper" and labels["whisper_text"]
        times = [a[1] for a in labels["alignments"]]
        assert all(e > s for s, e in times) and all(b[0] >= a[0] for a, b in zip(times, times[1:]))


def test_split_is_by_prompt(built):
    train = {u.written for u in read_split(built, "train")}
    evals = {u.written for u in read_split(built, "eval")}
    assert train and evals and not train & evals


def test_read_split_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="train.jsonl: missing"):
        read_split(tmp_path, "train")
    with pytest.raises(DataError, match="split 'test' is unknown"):
        read_split(tmp_path, "test")


def _rewrite_labels(folder, rel, change):
    labels = _labels(folder, rel)
    change(labels)
    (folder / rel).with_suffix(".json").write_text(json.dumps(labels))


def _set_time(i, start, end):
    def change(labels):
        labels["alignments"][i][1] = [start, end]
    return change


def _set_word(i, word):
    def change(labels):
        labels["alignments"][i][0] = word
        labels["text"] = " ".join(a[0] for a in labels["alignments"])
    return change


CORRUPTIONS = {
    "digit in label": (lambda f, rel: _rewrite_labels(f, rel, _set_word(0, "1296803")), "digit in label '1296803'"),
    "negative time": (lambda f, rel: _rewrite_labels(f, rel, _set_time(0, -0.5, 0.1)), "must satisfy 0 <= start < end"),
    "end before start": (lambda f, rel: _rewrite_labels(f, rel, _set_time(0, 0.5, 0.4)), "must satisfy"),
    "unordered": (lambda f, rel: _rewrite_labels(f, rel, _set_time(1, 0.0, 0.01)), "before the previous word ends"),
    "after the audio": (lambda f, rel: _rewrite_labels(f, rel, _set_time(-1, 1.0, 999.0)), "after the audio"),
    "short tail": (lambda f, rel: sf.write(str(f / rel), sf.read(str(f / rel))[0][: int(24000 * (
        _labels(f, rel)["alignments"][-1][1][1] + 0.3))], 24000, subtype="PCM_16"), "of audio after the last word"),
    "wrong rate": (lambda f, rel: sf.write(str(f / rel), sf.read(str(f / rel))[0], 16000), "must be WAV 24000 Hz mono"),
    "stereo": (lambda f, rel: sf.write(str(f / rel), np.stack([sf.read(str(f / rel))[0]] * 2, 1), 24000),
               "2 ch; must be WAV"),
    "missing labels": (lambda f, rel: (f / rel).with_suffix(".json").unlink(), "labels beside it"),
    "missing audio": (lambda f, rel: (f / rel).unlink(), "missing (listed in train.jsonl line 1)"),
    "bad speaker": (lambda f, rel: _rewrite_labels(f, rel, lambda lab: lab["alignments"][0].__setitem__(2, "X")),
                    "speaker 'X'"),
    "bad span": (lambda f, rel: _rewrite_labels(f, rel, lambda lab: lab.__setitem__(
        "number_spans", [{"first": 3, "last": 999, "written": "12", "kind": "order"}])), "number span"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_check_finds_each_problem_in_one_line_naming_the_file(copy, name):
    corrupt, message = CORRUPTIONS[name]
    rel = _first(copy)
    corrupt(copy, rel)
    problems = check_dataset(copy)
    assert problems, name
    hit = [p for p in problems if message in p]
    assert hit, problems
    assert all("\n" not in p for p in problems)
    assert str(copy / Path(rel).parent) in hit[0] or str(copy / "train.jsonl") in hit[0]


def test_check_finds_broken_index_and_prompt_in_both_splits(copy):
    train_rel, eval_rel = _first(copy, "train"), _first(copy, "eval")
    _rewrite_labels(copy, eval_rel, lambda lab: lab.__setitem__("written", _labels(copy, train_rel)["written"]))
    with open(copy / "train.jsonl", "a") as fh:
        fh.write("not json\n")
    problems = check_dataset(copy)
    assert any("is in eval and in train" in p for p in problems)
    assert any(p.startswith(f"{copy / 'train.jsonl'}:") and "not a" in p for p in problems)
    assert any("manifest.json: says" in p for p in problems)
    assert check_dataset(copy / "nope") == [f"{copy / 'nope'}: not a folder; pass the folder `invoke data` wrote"]


def test_a_second_build_into_the_same_folder_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "data.count=2", "data.piper_fraction=0")
    lock = tmp_path / ".data.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(sleeper.pid))
        with pytest.raises(DataError, match=f"another `invoke data` \\(pid {sleeper.pid}\\) is writing"):
            build_dataset(cfg)
        assert not (tmp_path / "data").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    build_dataset(cfg)  # the lock's owner is gone: a stale lock is taken over
    assert check_dataset(tmp_path / "data") == [] and not lock.exists()


def test_failed_build_keeps_the_previous_dataset(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "data.count=3", "data.piper_fraction=0")
    out = build_dataset(cfg)
    before = sorted(p.name for p in out.rglob("*"))
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    real = ds.synthesize_prompt
    monkeypatch.setattr(ds, "synthesize_prompt", broken)
    with pytest.raises(OSError, match="simulated"):
        build_dataset(_cfg(tmp_path, "data.count=5", "data.piper_fraction=0", "data.seed=9"))
    assert sorted(p.name for p in out.rglob("*")) == before
    assert check_dataset(out) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_invoke_data_and_check_from_the_command_line(tmp_path):
    def invoke(*args):
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    result = invoke("data", "--set", f"artifacts={tmp_path}", "--set", "data.count=40", "--set", "data.piper_fraction=0")
    assert result.returncode == 0, result.stderr
    assert "40 utterances" not in result.stdout and "wrote" in result.stdout
    ok = invoke("data", "--check", str(tmp_path / "data"))
    assert ok.returncode == 0 and "OK" in ok.stdout
    rel = _first(tmp_path / "data")
    _rewrite_labels(tmp_path / "data", rel, _set_word(0, "42"))
    bad = invoke("data", "--check", str(tmp_path / "data"))
    assert bad.returncode == 1 and "digit in label '42'" in bad.stdout and "1 problem(s)" in bad.stderr
    refused = invoke("data", "--set", f"artifacts={tmp_path}", "--set", "data.plain_fraction=0.1")
    assert refused.returncode == 2 and "data.plain_fraction must be at least 0.2" in refused.stderr


def _index(folder: Path, split: str) -> list[str]:
    return [json.loads(line)["path"] for line in (folder / f"{split}.jsonl").read_text().splitlines()]


ESPEAK = ("data.count=24", "data.piper_fraction=0.0", "data.french_fraction=0.2", "data.seed=1",
          "data.eval_fraction=0.2", "data.eval_voices=['+f3']")


@pytest.fixture(scope="module")
def espeak_built(module_tmp):
    return build_dataset(_cfg(module_tmp / "espeak", *ESPEAK))


def _same_utterances(a: Path, b: Path, rels: list[str]) -> None:
    """The same prompt, voice, voice settings and silences. Not the same samples: espeak-ng's
    synthesis of one text varies from call to call (measured: 113,859, 113,867 and 113,989 samples
    for one prompt in one process; in a CI run a 1.52 s word sequence came out 16 ms shorter), so
    each word time agrees within 10 ms plus 2 % of the time (the drift accumulates along the clip)."""
    for rel in rels:
        la, lb = _labels(a, rel), _labels(b, rel)
        times = lambda lab: np.array([t for _, t, _ in lab["alignments"]])  # noqa: E731
        assert (np.abs(times(la) - times(lb)) <= 0.01 + 0.02 * times(lb)).all(), rel
        assert [w for w, *_ in la["alignments"]] == [w for w, *_ in lb["alignments"]], rel
        strip = lambda lab: {k: v for k, v in lab.items() if k != "alignments"}  # noqa: E731
        assert strip(la) == strip(lb), rel
        frames_a, frames_b = sf.info(str(a / rel)).frames, sf.info(str(b / rel)).frames
        assert abs(frames_a - frames_b) <= 0.01 * 24000 + 0.02 * frames_b, rel


def test_an_eval_only_build_writes_the_very_files_of_a_full_builds_eval_split(espeak_built, tmp_path):
    """Each prompt draws from its own seeded generator, so the held-out clips of a model trained
    elsewhere can be rebuilt alone (data.only_split=eval): the same files, prompts, voices and silences."""
    eval_only = build_dataset(_cfg(tmp_path, *ESPEAK, "data.only_split=eval"))
    assert _index(eval_only, "train") == []
    paths = _index(eval_only, "eval")
    assert paths == _index(espeak_built, "eval") and paths
    _same_utterances(eval_only, espeak_built, paths)
    assert check_dataset(eval_only) == []


def test_split_limit_builds_the_first_clips_of_each_split(espeak_built, tmp_path):
    """data.split_limit=2: the first two prompts of each split of the same 24, as the full build wrote them."""
    small = build_dataset(_cfg(tmp_path, *ESPEAK, "data.split_limit=2"))
    for split in ds.SPLITS:
        assert _index(small, split) == _index(espeak_built, split)[:2]
        _same_utterances(small, espeak_built, _index(small, split))


@pytest.mark.parametrize("field", ["data.only_split=test", "data.split_limit=-1"])
def test_bad_split_selection_is_refused(field, tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=field.split("=")[0]):
        _cfg(tmp_path, field)
