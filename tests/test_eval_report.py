"""The eval report end to end on the tiny default (random models: files and sane ranges, not
values), the PyTorch runtime, hand-built traces drawn, and `invoke eval`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.eval import Reference, Rules, Span, evaluate, rescore, score_utterance, summarize, summary_table
from pipeline.evaluate.metrics import HypWord
from pipeline.evaluate.report import plot_utterance
from pipeline.evaluate.stream import Streamed, with_flush

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    (["My", "number", "is", "one", "two", "nine", "six."], [{"first": 3, "last": 6, "written": "1296", "kind": "digits"}]),
    (["Hello", "there,", "how", "are", "you?"], []),
    (["Call", "five", "five", "five,", "one", "two", "three."],
     [{"first": 1, "last": 6, "written": "555-123", "kind": "phone"}]),
    (["The", "code", "is", "four", "oh", "two."], [{"first": 3, "last": 5, "written": "402", "kind": "code"}]),
]


@pytest.fixture(scope="module")
def candidate(tiny_ckpt, module_tmp) -> Path:
    """The tiny checkpoint with a sharper head 2 and a perturbed text head: a different model."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(shutil.copytree(tiny_ckpt, module_tmp / "cand" / "tiny-ft"))
    tensors = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    tensors["extra_heads.2.weight"] = (tensors["extra_heads.2.weight"].float() * 8).to(torch.bfloat16)
    w = tensors["text_linear.weight"].float()
    tensors["text_linear.weight"] = (w + 0.5 * w.std() * torch.randn(w.shape, generator=gen)).to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def dataset(module_tmp) -> Path:
    """A dataset folder in `invoke data`'s layout: speech-like audio, word timings, number spans."""
    from pipeline.presets import synthetic_audio
    from pipeline.data.audio import write_wav

    folder = module_tmp / "data"
    folder.mkdir()
    (folder / "eval").mkdir()
    lines = []
    for i, (words, spans) in enumerate(SENTENCES):
        audio = synthetic_audio(0.5 + 0.4 * len(words) + 1.0, seed=i)
        write_wav(folder / "eval" / f"{i:05d}.wav", audio)
        alignments = [[w, [0.5 + 0.4 * k, 0.8 + 0.4 * k], "SPEAKER_MAIN"] for k, w in enumerate(words)]
        labels = {"alignments": alignments, "text": " ".join(words), "written": "", "number_spans": spans}
        (folder / "eval" / f"{i:05d}.json").write_text(json.dumps(labels))
        lines.append(json.dumps({"path": f"eval/{i:05d}.wav", "duration": len(audio) / 24_000}))
    (folder / "eval.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _check_rule(v: dict, n: int) -> None:
    assert 0 <= v["utterances_cut"] <= v["utterances"] == n
    assert 0 <= v["cutoffs_in_numbers"] <= v["cutoffs"]
    assert v["utterances_cut_share"] is not None and 0 <= v["utterances_cut_share"] <= 1
    assert v["spans_cut_share"] is None or 0 <= v["spans_cut_share"] <= 1
    assert v["ended"] + v["never_ended"] == n
    for key in ("latency_median", "latency_mean", "latency_max"):
        assert v[key] is None or 0 <= v[key] <= 10


def test_report_on_the_tiny_default(tiny_ckpt, candidate, dataset, tmp_path):
    cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.plots=3"])
    out = evaluate(cfg, tiny_ckpt, candidate)
    assert out == tmp_path / "eval"
    for name in ("index.html", "metrics.json", "summary.png", "traces.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
    pngs = sorted((out / "traces").glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out / "index.html").read_text()
    assert "summary.png" in page and all(f"traces/{p.name}" in page for p in pngs)

    data = json.loads((out / "metrics.json").read_text())
    n = len(SENTENCES)
    assert data["meta"]["runtime"] == "candle" and data["meta"]["rules"]["head"] == 2
    for model in ("base", "candidate"):
        s = data["summary"][model]
        assert (s["utterances"], s["number_utterances"], s["number_spans"]) == (n, 3, 3)
        assert 0 <= s["digit_share"] <= 1 and 0 <= s["exact_share"] <= 1
        for subset in ("all", "numbers", "other"):
            assert s["wer"][subset]["wer"] >= 0 and s["wer"][subset]["words"] > 0
        for rule in ("threshold", "unmute"):
            _check_rule(s["vad"][rule], n)
    assert len(data["utterances"]) == n
    heldout = json.loads((out / "heldout.json").read_text())   # issue #16's figures, same values
    for model in ("base", "candidate"):
        s, vad = data["summary"][model], data["summary"][model]["vad"]["threshold"]
        assert heldout[model] == {"wer_no_numbers": s["wer"]["other"]["wer"], "digit_spans": s["digit_share"],
                                  "exact_word_form": s["exact_share"], "dictations_cut": vad["dictations_cut_share"],
                                  "turn_end_detected": vad["turn_end_detected_share"],
                                  "turn_end_latency_s": vad["latency_median"]}
    for model in ("base", "candidate"):  # every summary figure is what the per-utterance records add up to
        assert summarize([u[model] for u in data["utterances"]]) == data["summary"][model]
    for u in data["utterances"]:
        for model in ("base", "candidate"):
            m = u[model]
            assert m["steps"] >= (0.5 + 0.4 * 5 + 1.0 + 2.0) * 12.5 - 1  # clip + flush silence
            assert all(set(sp) >= {"digits", "exact", "hypothesis", "cut"} for sp in m["spans"])
    traces = np.load(out / "traces.npz")
    pause = traces["base_0_pause"]
    assert pause.shape[1] == 4 and (pause >= 0).all() and (pause <= 1).all()

    table = summary_table(out)
    assert table.splitlines()[0].split() == ["metric", "base", "candidate"]
    for row in ("spans written with digits", "premature cut-offs", "fired during the last word",
                "turn end detected within 2 s", "end-of-turn latency, median (detected)"):
        assert row in table, row

    # Re-scoring a saved report from its traces alone reproduces every figure (same definitions).
    assert data["meta"]["data"] == str(dataset.resolve())  # absolute: a report can be re-scored from anywhere
    again = rescore(out, tmp_path / "again", data=dataset)
    redone = json.loads((again / "metrics.json").read_text())
    assert redone["summary"] == data["summary"] and redone["meta"]["rescored_from"] == str(out)
    assert [u["base"]["vad"] for u in redone["utterances"]] == [u["base"]["vad"] for u in data["utterances"]]


def test_base_and_candidate_streamed_side_by_side_give_what_one_at_a_time_gives(tiny_ckpt, candidate, dataset,
                                                                                tmp_path, monkeypatch):
    """In Candle the two models stream in two threads (the Rust code runs outside the GIL): every
    trace and figure equals a run that streams them one after the other, each under its own name
    (the two models' traces differ, so a swap would show)."""
    import threading

    import pipeline.eval as stage

    threads = {}
    stream_all = stage._stream_all

    def recording(ckpt, refs, cfg, label, *args):
        threads[label] = threading.get_ident()
        return stream_all(ckpt, refs, cfg, label, *args)

    monkeypatch.setattr(stage, "_stream_all", recording)
    cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.plots=0", "eval.out=side"])
    side = evaluate(cfg, tiny_ckpt, candidate)
    assert threads["base"] != threads["candidate"]
    monkeypatch.setattr(stage, "PARALLEL_RUNTIMES", ())
    cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.plots=0", "eval.out=serial"])
    serial = evaluate(cfg, tiny_ckpt, candidate)
    assert threads["base"] == threads["candidate"] == threading.get_ident()
    a, b = np.load(side / "traces.npz"), np.load(serial / "traces.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not np.array_equal(a["base_0_pause"], a["candidate_0_pause"])
    side_data, serial_data = (json.loads((f / "metrics.json").read_text()) for f in (side, serial))
    assert side_data["summary"] == serial_data["summary"]


def test_torch_runtime_limit_and_given_utterances(tiny_ckpt, candidate, tmp_path):
    """PyTorch's streaming Mimi is slow on a CPU (~0.1 s a frame), so one short clip. Each
    model's trace in the report is what that model streams on its own in the same runtime (the
    two differ: the candidate's head 2 is sharper), and its figures are scored from that trace."""
    from pipeline.data import Utterance
    from pipeline.data.audio import read_audio, write_wav
    from pipeline.evaluate.sources import from_utterance
    from pipeline.evaluate.stream import Runner
    from pipeline.presets import synthetic_audio

    write_wav(tmp_path / "yes.wav", synthetic_audio(1.4, seed=3))
    short = Utterance(tmp_path / "yes.wav", 1.4, [("Yes.", (0.3, 0.6), "SPEAKER_MAIN")], "Yes.", "Yes.", "en", "", "plain")
    cfg = load_config(None, [f"artifacts={tmp_path}", "eval.runtime=torch", "eval.flush_seconds=1.5",
                             "eval.limit=1", "eval.plots=0"])
    out = evaluate(cfg, tiny_ckpt, candidate, utterances=[short, short])
    data = json.loads((out / "metrics.json").read_text())
    assert data["meta"]["runtime"] == "torch" and data["summary"]["base"]["utterances"] == 1
    assert len(data["utterances"]) == 1  # eval.limit
    traces = np.load(out / "traces.npz")
    audio = read_audio(tmp_path / "yes.wav")
    for model, ckpt in (("base", tiny_ckpt), ("candidate", candidate)):
        alone = Runner(ckpt, "torch", flush_seconds=1.5).run(audio)
        assert np.array_equal(traces[f"{model}_0_pause"], alone.pause), model
        assert np.array_equal(traces[f"{model}_0_tokens"], alone.tokens), model
        scored = score_utterance(from_utterance(short), [w.text for w in alone.words], alone.pause, Rules())
        assert data["utterances"][0][model]["vad"] == json.loads(json.dumps(scored["vad"])), model
    assert not np.array_equal(traces["base_0_pause"], traces["candidate_0_pause"])
    assert not list((out / "traces").glob("*.png"))


def test_flush_silence_is_whole_frames_after_the_clip():
    pcm = with_flush(np.ones(2000, dtype=np.float32), 1.5)
    assert len(pcm) == (2 + 19) * 1920 and pcm[:2000].all() and not pcm[2000:].any()


def test_too_short_flush_is_refused(tiny_ckpt, dataset, tmp_path):
    from pipeline.eval import EvalError

    cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.flush_seconds=1.0"])
    with pytest.raises(EvalError, match="at least 1.5 s"):
        evaluate(cfg, tiny_ckpt, tiny_ckpt)


def _hand_built() -> tuple[Reference, dict, dict]:
    """A base that writes '1296' and pauses mid-number, a candidate that writes words."""
    words = ["My", "number", "is", "one", "two", "nine", "six."]
    times = [(0.40, 0.62), (0.66, 0.98), (1.02, 1.14), (1.30, 1.56), (1.80, 2.02), (2.30, 2.62), (2.90, 3.30)]
    ref = Reference("hand/00001", words, times, [Span(3, 6, "1296")])
    steps = 75
    t = np.arange(steps) / 12.5
    rng = np.random.default_rng(0)

    def heads(center: np.ndarray) -> np.ndarray:
        noise = rng.normal(0, 0.03, (steps, 4))
        out = np.stack([np.clip(center * f + noise[:, k], 0, 1) for k, f in enumerate((1.0, 0.95, 0.9, 0.8))], 1)
        return out.astype(np.float32)

    after_end = 1 / (1 + np.exp(-(t - 3.9) * 8))
    base_center = np.maximum(after_end, 0.85 * np.exp(-((t - 2.2) / 0.12) ** 2))  # the spike after "two"
    base = Streamed(np.zeros(steps, dtype=np.int64), heads(base_center),
                    [HypWord("My", 11, 0.38), HypWord("number", 15, 0.70), HypWord("is", 18, 0.94),
                     HypWord("1296.", 23, 1.34)])
    cand = Streamed(np.zeros(steps, dtype=np.int64), heads(after_end * 0.97),
                    [HypWord(w, int((s + 0.5) * 12.5), s) for w, s in
                     [("My", 0.38), ("number", 0.70), ("is", 1.02), ("one", 1.30), ("two", 1.82), ("nine", 2.30),
                      ("six.", 2.94)]])
    runs = {"base": base, "candidate": cand}
    scores = {m: score_utterance(ref, [w.text for w in r.words], r.pause, Rules()) for m, r in runs.items()}
    return ref, runs, scores


def test_hand_built_traces_are_scored_and_drawn(tmp_path):
    ref, runs, scores = _hand_built()
    assert scores["base"]["spans"][0]["digits"] and scores["base"]["vad"]["threshold"]["in_numbers"] == 1
    assert scores["candidate"]["spans"][0]["exact"] and not scores["candidate"]["vad"]["threshold"]["cutoffs"]
    assert scores["candidate"]["vad"]["threshold"]["latency"] is not None
    path = tmp_path / "hand.png"
    plot_utterance(path, ref, runs, scores, Rules(), {"base": "base (stt-1b)", "candidate": "candidate (merged)"})
    assert path.read_bytes()[:4] == b"\x89PNG"


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_invoke_eval_prints_the_summary_and_the_report(tiny_ckpt, candidate, dataset, tmp_path):
    result = invoke("eval", "--model", str(tiny_ckpt), "--candidate", str(candidate), "--data", str(dataset),
                    "--set", f"artifacts={tmp_path}", "--set", "eval.plots=1")
    assert result.returncode == 0, result.stderr
    assert "spans written with digits" in result.stdout and "turn end detected within 2 s" in result.stdout
    assert f"report: {tmp_path / 'eval' / 'index.html'}" in result.stdout
    rescored = invoke("eval", "--rescore", str(tmp_path / "eval"), "--set", f"artifacts={tmp_path}",
                      "--set", "eval.out=rescored", "--set", "eval.plots=0")
    assert rescored.returncode == 0, rescored.stderr
    assert rescored.stdout.splitlines()[:20] == result.stdout.splitlines()[:20]  # same table, from the traces
    bad = invoke("eval", "--rescore", str(tmp_path / "nowhere"), "--set", f"artifacts={tmp_path}")
    assert bad.returncode == 2 and "not a readable eval report" in bad.stderr
    missing = invoke("eval", "--model", str(tiny_ckpt), "--data", str(dataset), "--set", f"artifacts={tmp_path}")
    assert missing.returncode == 2 and "invoke merge" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_reference_text_places_words_as_training_does(tiny_ckpt):
    """Known answers at the edges: the first word, a number in words vs digit form, the last word."""
    from pipeline.checkpoint import Checkpoint
    from pipeline.evaluate.stream import reference_text

    ckpt = Checkpoint.open(tiny_ckpt)
    encode, delay = ckpt.tokenizer.encode, ckpt.text_delay  # 0.5 s: a word is written 6 frames after it starts
    words = ["Call", "one", "two", "now."]
    times = [(0.0, 0.3), (0.8, 1.1), (1.6, 1.9), (2.4, 2.7)]
    ref = Reference("r", words, times, [Span(1, 2, "12")])
    spoken, digits = reference_text(ref, ckpt, "words", 50), reference_text(ref, ckpt, "digits", 50)
    assert len(spoken) == len(digits) == 50
    for word, (start, _) in zip(words, times):  # each word's tokens from frame floor((start + delay) * 12.5) on
        first, ids = int((start + delay) * 12.5 + 1e-9), encode(word)
        assert list(spoken[first:first + len(ids)]) == ids
    assert spoken[5] == 0 and spoken[:5].tolist() == [3] * 5  # EPAD just before the first word's frame 6
    one_at, two_at = int((0.8 + delay) * 12.5), int((1.6 + delay) * 12.5)
    # Digit form (Kyutai's habit): nothing while the number is spoken, "12" once it is complete.
    assert set(digits[one_at:two_at - 1].tolist()) == {3}
    assert list(digits[two_at:two_at + len(encode("12"))]) == encode("12")
    last = int((2.4 + delay) * 12.5)
    assert (spoken[last + len(encode("now.")):] == 3).all()  # padding after the last word: the turn has ended
    with pytest.raises(Exception, match="needs word timings"):
        reference_text(Reference("plain", words, None, []), ckpt, "words", 50)


def test_forced_reference_text_reads_back_the_labels(tiny_ckpt, candidate, dataset, tmp_path):
    """eval.text=reference: each model's words are its labels (the candidate's exactly the
    reference, the base's numbers in digits) and its pause heads answer to that text, not its own."""
    cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.plots=0", "eval.text=reference"])
    out = evaluate(cfg, tiny_ckpt, candidate)
    data = json.loads((out / "metrics.json").read_text())
    assert data["meta"]["text"] == "reference"
    cand, base = data["summary"]["candidate"], data["summary"]["base"]
    assert cand["wer"]["all"]["wer"] == 0.0 and cand["exact_share"] == 1.0 and cand["digit_share"] == 0.0
    assert base["digit_share"] == 1.0 and base["wer"]["other"]["wer"] == 0.0
    free = json.loads((evaluate(load_config(None, [f"artifacts={tmp_path / 'free'}", f"eval.data={dataset}",
                                                   "eval.plots=0"]), tiny_ckpt, candidate) / "metrics.json")
                      .read_text())
    forced_traces, free_traces = np.load(out / "traces.npz"), np.load(tmp_path / "free" / "eval" / "traces.npz")
    assert not np.array_equal(forced_traces["candidate_0_pause"], free_traces["candidate_0_pause"])
    # Step 0 reads the text start token in both runs.
    assert np.array_equal(forced_traces["candidate_0_pause"][0], free_traces["candidate_0_pause"][0])
    assert free["meta"]["text"] == "model"


def test_forced_text_needs_a_runtime_that_can_force_it():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="set eval.runtime to 'candle' or 'torch'"):
        load_config(None, ["eval.text=reference", "eval.runtime=server"])
    with pytest.raises(ConfigError, match="eval.text must be 'model' or 'reference'"):
        load_config(None, ["eval.text=oracle"])


def test_torch_and_candle_force_the_same_text(tiny_ckpt):
    """Both runtimes that can force text read it back the same way (f32 parity), one short clip."""
    from pipeline.evaluate.stream import Runner, steps_of
    from pipeline.presets import synthetic_audio

    audio = synthetic_audio(1.2, seed=5)
    steps = steps_of(len(audio), 1.5)
    forced = np.random.default_rng(0).integers(4, 50, size=steps)
    runs = {rt: Runner(tiny_ckpt, rt, flush_seconds=1.5).run(audio, forced) for rt in ("candle", "torch")}
    for streamed in runs.values():
        assert streamed.tokens.tolist() == forced.tolist() and len(streamed.pause) == steps
    assert np.abs(runs["candle"].pause - runs["torch"].pause).max() < 1e-4
    with pytest.raises(Exception, match=f"has {steps - 1} tokens for {steps} audio frames"):
        Runner(tiny_ckpt, "torch", flush_seconds=1.5).run(audio, forced[:-1])
