"""eval: A/B report of the base vs the fine-tuned model (issue #6).

Does the candidate write dictated numbers as words, does it still transcribe everything else,
and does its VAD stop cutting people off mid-number? Every eval utterance is streamed through
both models (Candle, as in production, or PyTorch), then scored:

    audio + silence -> greedy tokens, pause probabilities (stream.py)
                    -> words, number spans, WER, cut-offs, latency (metrics.py, pure)
                    -> metrics.json, traces.npz, PNGs, index.html (report.py)

Definitions (the tests check each on hand-built cases):

- Streaming. The clip is padded to whole 1920-sample frames and followed by `eval.flush_seconds`
  of silence (at least the text delay + 1 s) so the words written 0.5 s late come out. Step s
  is emitted once frame s's audio has arrived, at audio time (s + 1) / 12.5 s: that is when a
  client reads its `pause[:, k]` (head k) and acts. Every time below is such an emission time.
- Teacher forcing (`eval.text = reference`). After each step the model reads back the
  reference's labels, built as training builds them (the base's numbers in digit form, the
  candidate's in words), instead of its own token: its pause heads then answer as if it had
  recognized every word, so the cut-offs left are the heads' own, and those that vanish were
  caused by recognition errors. The words scored are the forced ones (WER near 0 checks it).
- Words. Kyutai's rule: tokens 0 and 3 are padding; a word ends when padding follows word
  tokens. Each group of tokens is decoded with the checkpoint's SentencePiece model and split
  on spaces (two words with no padding between them are two words). A word's time is its first
  token's step / 12.5 minus the text delay, as Kyutai's server reports it.
- WER. jiwer over words lower-cased with punctuation stripped at word edges ("Three." ->
  "three"; "1,296" stays one word), with NO number normalization: Whisper's
  EnglishTextNormalizer maps "one two" back to "12" and would hide the change. Reported on the
  utterances with number spans, on the others, and on all (utterances whose reference is empty
  are left out).
- Number spans. The hypothesis words of a span are those jiwer's alignment puts on its
  reference words (equal or substituted), words inserted between them, and digit-bearing words
  inserted right before or after it. Timing-free, so it also works without alignments, and a
  base model writing "1296803" for seven spoken digits still lands on the span. "Written with
  digits": one of those words contains a digit. "Exact in word form": they equal the reference
  words (same normalization). "Digits right": for a span read digit by digit (its reference
  words' digits equal its written number's), the hypothesis words give the same digits, in
  either form ("855-1235" or "eight double five one two three five"; letters and symbols left
  out): recognition apart from form, comparable between the base and the candidate. A
  limitation: if the model also drops the word just before a number, jiwer may put the digits
  on that word instead.
- Premature cut-off. The rule turns on (on at step s, off at step s - 1; off before the stream)
  at an emission time after the first word has started and before the last word has started,
  from the alignments: the speaker is still talking. Each such onset is one cut-off; those
  inside a number span's [first word start, last word end) are also counted separately, and a
  span is "cut" when one lies inside it. "Dictations cut off": utterances with a number span
  and at least one premature cut-off. Not counted, each reported on its own row instead: a rule
  already on when the first word starts ("on when speech starts": a client does not end a turn
  before the user has spoken, so it arms only then), and a rule turning on during the last word
  (the pause target itself asks for "pause" about the text delay after the last word starts).
  No allowance for the 0.5 s text delay: a client acts on the head when it reads it.
- Rules, both on head `eval.pause_head` (2 = "no new word within 2 s"): threshold (head >
  `eval.threshold`, default 0.5) and Unmute's (kyutai-labs/unmute `SpeechToText`): an EMA
  of the head with alpha = 1 - 2^(-0.08 / half_life) per step, starting at 1.0 and updated
  from step `smooth_warmup` (12) on, end of turn when above `smooth_threshold` (0.6). The
  default half-life is Unmute's 0.01 s (alpha = 0.996: almost no smoothing, so the rule
  differs from the threshold mainly by 0.6 and the warm-up); set e.g. 0.08 (alpha 0.5) to
  study a smoother client.
- End of turn: the latency is the first emission time at or after the last word's end at which
  the rule is on, minus that end (at 80 ms resolution); None ("never") if it is not on before
  the stream ends, which bounds what can be measured by the clip's tail + flush_seconds. A turn
  end is detected when the latency is at most 2 s (`END_OF_TURN_WINDOW`); the median latency
  is over the detected ones. The summary warns when the candidate detects fewer turn ends than
  the base (share lower by more than 2 points) or later (median longer by more than 0.1 s): a
  fine-tune that stops cutting callers off by never ending their turn is no fix.
- Utterances without word timings (a folder of audio with `<name>.txt` transcripts): the speech
  interval is found by energy (`pipeline.data.audio.speech_bounds`), so cut-offs and latency
  are measured against that (its end stands for the last word's start and end); number spans (written numbers in the transcript, or runs of digit
  words) get digit/exact figures but no cut-off figures (`timed_spans` counts those that do).

Public API: `evaluate(cfg, base=None, candidate=None, utterances=None) -> Path` (the report
folder), `rescore(folder, out, ...) -> Path` (a saved report scored again with these
definitions, from its traces), `resolve_models(cfg)`, `summary_table(folder)`; the pure layer in
`pipeline.evaluate.metrics` (`decode_words`, `span_hypotheses`, `error_counts`,
`vad_metrics`, `score_utterance`, `summarize`, `end_of_turn_flags`, ...).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import Checkpoint
from .config import Config
from .evaluate.metrics import (HypWord, Reference, Rules, Span, decode_words, end_of_turn_flags, error_counts,
                               score_utterance, span_hypotheses, summarize, vad_metrics)
from .evaluate.report import MODELS, format_summary, summary_table
from .evaluate.sources import EvalError, as_references, load_references
from .evaluate.stream import Runner, Streamed, reference_text, steps_of
from .io import atomic_dir

__all__ = ["EvalError", "HypWord", "Reference", "Rules", "Span", "Streamed", "decode_words", "end_of_turn_flags",
           "error_counts", "evaluate", "format_summary", "rescore", "resolve_models", "rules_of", "score_utterance",
           "span_hypotheses", "summarize", "summary_table", "vad_metrics"]


def rules_of(cfg: Config) -> Rules:
    e = cfg.eval
    return Rules(e.pause_head, e.threshold, e.smooth_threshold, e.smooth_half_life, e.smooth_warmup)


def resolve_models(cfg: Config) -> tuple[Checkpoint, Checkpoint]:
    """(base, candidate) checkpoints from `eval.base` / `eval.candidate`."""
    from .models import resolve_model

    def resolve(source: str) -> Checkpoint:
        return resolve_model(source, cfg.artifacts_dir, cfg.model.revision, cfg.checkpoint.seed)

    name = cfg.eval.candidate
    if name in ("merged", "export"):  # checked first: a missing one should not wait for a download
        candidate = cfg.output_path(cfg.merge.out if name == "merged" else cfg.export.out)
        if not (candidate / "config.json").is_file():
            stage = "merge" if name == "merged" else "export"
            raise EvalError(f"{candidate}: no {name} checkpoint yet; run `invoke {stage}` first, or set "
                            "eval.candidate to a checkpoint directory, preset or repo id")
        return resolve(cfg.eval.base or cfg.model.source), Checkpoint.open(candidate)
    return resolve(cfg.eval.base or cfg.model.source), resolve(name)


# Teacher forcing (`eval.text = reference`): each model reads back the labels it was trained on.
# The base has Kyutai's number habit (digits once the number is complete; the organism's base is
# trained so), the candidate is the fine-tune that writes numbers as words.
FORCED_NUMBER_FORM = {"base": "digits", "candidate": "words"}


# Runtimes that stream in-process outside the GIL (Kyutai's Rust crate): the base and the candidate
# stream side by side, one thread each, as the one-stream-at-a-time Rust code leaves a 2-core CPU
# partly idle. The server runtime runs one server at a time; 'torch' reloads per clip.
PARALLEL_RUNTIMES = ("candle", "server-semantics")


def _stream_all(ckpt: Checkpoint, refs: Sequence[Reference], cfg: Config, label: str,
                position: int = 0) -> list[Streamed]:
    from tqdm import tqdm

    from .data.audio import read_audio

    out, forced = [], cfg.eval.text == "reference"
    desc = f"{label} ({cfg.eval.runtime}{', reference text' if forced else ''})"
    with Runner(ckpt, cfg.eval.runtime, cfg.eval.flush_seconds) as runner:
        for ref in tqdm(refs, desc=desc, unit="utt", position=position):
            audio = read_audio(ref.path)
            text = reference_text(ref, ckpt, FORCED_NUMBER_FORM[label], steps_of(len(audio), cfg.eval.flush_seconds)) \
                if forced else None
            out.append(runner.run(audio, text))
            if out[-1].pause.shape[1] <= cfg.eval.pause_head:
                raise EvalError(f"eval.pause_head is {cfg.eval.pause_head} but {ckpt} has "
                                f"{out[-1].pause.shape[1]} pause heads")
    return out


def evaluate(cfg: Config, base: Checkpoint | Path | None = None, candidate: Checkpoint | Path | None = None,
             utterances: Sequence[Any] | None = None) -> Path:
    """Stream every eval utterance through both models, score them, write the report folder
    `cfg.output_path(cfg.eval.out)` atomically and return it.

    `utterances`: `pipeline.data.Utterance`s (or `Reference`s) instead of reading `eval.data`.
    `base` / `candidate`: checkpoint directories instead of `eval.base` / `eval.candidate`."""
    source = "given utterances" if utterances is not None else str(cfg.output_path(cfg.eval.data).resolve())
    refs = as_references(utterances) if utterances is not None else load_references(
        cfg.output_path(cfg.eval.data), cfg.eval.split, cfg.data.import_lang)
    refs = refs[: cfg.eval.limit] if cfg.eval.limit else refs
    if not refs:
        raise EvalError(f"{source}: no utterances to evaluate")
    if base is None or candidate is None:
        default_base, default_candidate = resolve_models(cfg)
        base, candidate = base or default_base, candidate or default_candidate
    base, candidate = Checkpoint.of(base), Checkpoint.of(candidate)
    start = time.perf_counter()
    rules = rules_of(cfg)
    models = {"base": base, "candidate": candidate}
    if cfg.eval.runtime in PARALLEL_RUNTIMES:
        with ThreadPoolExecutor(len(models)) as pool:
            futures = {m: pool.submit(_stream_all, ckpt, refs, cfg, m, i) for i, (m, ckpt) in enumerate(models.items())}
            runs = {m: f.result() for m, f in futures.items()}
    else:
        runs = {m: _stream_all(ckpt, refs, cfg, m) for m, ckpt in models.items()}
    meta = {"base": str(base), "candidate": str(candidate), "runtime": cfg.eval.runtime, "text": cfg.eval.text,
            "data": source,
            "split": cfg.eval.split, "delay": base.text_delay, "flush_seconds": cfg.eval.flush_seconds,
            "timings": dict(Counter(r.timing for r in refs)), "seconds": round(time.perf_counter() - start, 1)}
    out = cfg.output_path(cfg.eval.out)
    _score_and_write(out, meta, refs, runs, rules, cfg.eval.plots)
    return out


def _score_and_write(out: Path, meta: dict, refs: Sequence[Reference], runs: dict[str, list[Streamed]],
                     rules: Rules, plots: int) -> None:
    from .evaluate.report import write_report

    scores = {m: [score_utterance(r, [w.text for w in s.words], s.pause, rules) for r, s in zip(refs, runs[m])]
              for m in MODELS}
    summary = {m: summarize(scores[m]) for m in MODELS}
    meta = {**meta, "rules": asdict(rules),
            "smooth_alpha": 1.0 if rules.smooth_half_life <= 0 else 1 - 2 ** (-0.08 / rules.smooth_half_life),
            "flags": end_of_turn_flags(summary["base"], summary["candidate"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_dir(out) as tmp:
        write_report(tmp, meta, list(refs), runs, scores, summary, rules, plots)


def rescore(folder: Path, out: Path, rules: Rules | None = None, plots: int = 12, data: Path | None = None) -> Path:
    """Score a saved report (`metrics.json` + `traces.npz`) again with the current definitions
    and write a new report to `out`. The references are read again from the report's eval data
    (a dataset folder; `data` if it has moved), matched by utterance id; `rules` default to the
    report's own."""
    import json

    import numpy as np

    folder, out = Path(folder), Path(out)
    try:
        saved = json.loads((folder / "metrics.json").read_text())
        traces = np.load(folder / "traces.npz", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EvalError(f"{folder}: not a readable eval report (metrics.json + traces.npz): {e}") from e
    meta = saved["meta"]
    if data is not None:
        meta["data"] = str(Path(data).resolve())
    by_id = {r.id: r for r in load_references(Path(meta["data"]), meta.get("split", "eval"), "en")}
    missing = [u["id"] for u in saved["utterances"] if u["id"] not in by_id]
    if missing:
        raise EvalError(f"{folder}: utterance {missing[0]} is not in {meta['data']} any more; "
                        "re-score against the dataset the report was made from")
    refs = [by_id[u["id"]] for u in saved["utterances"]]
    runs = {m: [Streamed(traces[f"{m}_{i}_tokens"], traces[f"{m}_{i}_pause"],
                         [HypWord(w["text"], int(w["step"]), float(w["start"])) for w in u[m]["words"]])
                for i, u in enumerate(saved["utterances"])] for m in MODELS}
    rules = rules or Rules(**meta["rules"])
    keep = {k: meta[k] for k in ("base", "candidate", "runtime", "text", "data", "split", "delay", "flush_seconds",
                                 "timings", "seconds") if k in meta}
    _score_and_write(out, {**keep, "rescored_from": str(folder)}, refs, runs, rules, plots)
    return out
