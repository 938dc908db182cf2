"""The model-organism experiment (issue #7), shrunk to a few CPU minutes: the real commands on
configs/organism-ci.yaml, then the direction of each effect on the held-out eval prompts.

A model this small and this briefly trained transcribes poorly; what must hold: the base writes
dictated numbers as digits and its pause head fires mid-dictation; after the word-form
fine-tune, fewer spans come out as digits. Whether fewer held-out dictations are cut off is not
stable at this scale (see `test_the_base_is_cut_off_mid_dictation`). On the training clips, which
it does recognize, the fine-tune must write the words and cut in far less, both with its own words
and with the reference text forced (eval.text=reference: the heads alone). The full-size figures
are in docs/organism/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "organism-ci.yaml"


def _invoke(*args: str, artifacts: Path, check: bool = True) -> str:
    model = artifacts / "organism-ci" / "model"
    overrides = [f"artifacts={artifacts}", f"model.source={model}", f"eval.base={model}"]
    cmd = [sys.executable, "-m", "invoke", args[0], "--config", str(CONFIG)]
    for o in overrides:
        cmd += ["--set", o]
    cmd += list(args[1:])
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def experiment(module_tmp) -> dict:
    """The stages of `invoke all` one by one: verify-candle's bf16 row is a gate for shipped
    models, and a model this briefly trained has near-ties that bf16 may flip (98 % was seen),
    so its table is read here instead of stopping the run."""
    artifacts = module_tmp
    _invoke("organism", artifacts=artifacts)
    for stage in ("data", "train", "merge", "export"):
        _invoke(stage, artifacts=artifacts)
    export = artifacts / "organism-ci" / "export"
    verify = _invoke("verify-candle", "--model", str(export), artifacts=artifacts, check=False)
    _invoke("eval", artifacts=artifacts)
    _invoke("eval", "--set", "eval.text=reference", "--set", "eval.split=train", "--set", f"eval.limit={FORCED_CLIPS}",
            "--set", "eval.out=organism-ci/eval-forced-train", artifacts=artifacts)
    _invoke("eval", "--set", "eval.split=train", "--set", f"eval.limit={FORCED_CLIPS}",
            "--set", "eval.out=organism-ci/eval-own-train", artifacts=artifacts)
    runs = {name: json.loads((artifacts / "organism-ci" / name / "metrics.json").read_text())
            for name in ("eval", "eval-forced-train", "eval-own-train")}
    return {"artifacts": artifacts, "verify": verify, **runs["eval"],
            "forced": runs["eval-forced-train"]["summary"], "own_train": runs["eval-own-train"]["summary"]}


def test_the_base_is_an_stt_in_kyutais_layout_trained_on_digit_labels(experiment):
    model = experiment["artifacts"] / "organism-ci" / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["dep_q"] == 0 and config["extra_heads_num_heads"] == 4
    assert "number_form=digits" in config["model_id"]["origin"]


def test_the_fine_tuned_export_streams_the_same_in_candle(experiment):
    verify = experiment["verify"]
    assert "OK: the checkpoint loads cleanly in Kyutai's Rust runtime" in verify
    f32 = next(line for line in verify.splitlines() if line.startswith("candle f32 vs torch f32"))
    assert f32.endswith("ok") and "100.00%" in f32


def test_eval_is_on_held_out_prompts(experiment):
    data = experiment["artifacts"] / "organism-ci" / "data"
    written = {}
    for split in ("train", "eval"):
        lines = (data / f"{split}.jsonl").read_text().splitlines()
        written[split] = {json.loads((data / json.loads(line)["path"]).with_suffix(".json").read_text())["written"]
                          for line in lines}
    assert written["eval"] and not written["eval"] & written["train"]


# Held-out number spans written with digits, base -> fine-tune. On dataset generator v2 (one seeded
# generator per prompt, 2026-12-07), this CPU: seed 7 (CI's) 9.3 % -> 0 % and 18.6 % -> 2.3 % in two
# runs (espeak-ng is not bit-exact from run to run, so the same seed trains a slightly different
# organism), seed 11 15.6 % -> 2.2 %, seed 13 11.4 % -> 5.7 % (4 -> 2 of 35 spans); CI's machine
# 9.3 % -> 0 %. (Generator v1, 2026-12-02: 30 -> 5 %, 38 -> 2 %, 14 -> 3 %.) The base recognizes few
# held-out numbers at this scale, so these are counts of 4-8 spans: bars with room under the worst
# run: the base writes digits in at least 5 % of spans, the fine-tune in at most three quarters as many.
# The strong form of this claim is asserted where the organism recognizes its input (the training
# clips, `test_on_its_training_clips_the_fine_tune_writes_words_and_is_cut_off_less`).
MIN_BASE_DIGITS, MAX_DIGIT_RATIO = 0.05, 0.75


def test_digits_before_words_after(experiment):
    base, cand = experiment["summary"]["base"], experiment["summary"]["candidate"]
    assert base["number_spans"] >= 10
    assert base["digit_share"] >= MIN_BASE_DIGITS
    assert cand["digit_share"] <= MAX_DIGIT_RATIO * base["digit_share"]
    assert cand["exact_share"] >= base["exact_share"]


MIN_BASE_CUT = 0.25


def test_the_base_is_cut_off_mid_dictation(experiment):
    """The problem the fine-tune is for shows in the base: its pause head fires during many held-out
    dictations. Generator v2 (2026-12-07), this CPU: seed 7 42.5 % and 47.5 % (two runs), seed 11
    59.0 %, seed 13 55.9 %; CI's machine 32.5 %. (Generator v1, 2026-12-01: 50-68 % in four runs.)
    The bar, 25 %, leaves room under the worst.

    Whether the fine-tune then cuts off fewer held-out dictations is NOT asserted at this scale: on
    generator v2 the four runs here gave 42.5 -> 20.0, 47.5 -> 30.0, 59.0 -> 46.2, 55.9 -> 58.8 %;
    on v1, three dataset seeds and CI's CPU gave 27 -> 17, 20 -> 18, 22 -> 22 dictations cut (400
    LoRA steps or head-loss weight 2 did not make it consistent). A model trained for two CPU minutes
    cuts callers off mostly because it recognizes poorly, not because of the digit habit;
    the effect needs a credible organism (docs/organism/README.md)."""
    base = experiment["summary"]["base"]["vad"]["threshold"]
    assert base["dictations"] >= 20
    assert base["dictations_cut_share"] >= MIN_BASE_CUT
    # Every figure of the cut-off table, for both models, is the count of what the per-utterance
    # records say (recounted here from metrics.json's utterances, not through `summarize`).
    for model in ("base", "candidate"):
        summary = experiment["summary"][model]["vad"]["threshold"]
        recount = recount_cutoffs(experiment["utterances"], model)
        assert {key: summary[key] for key in recount} == recount, model
        assert summary["dictations_cut"] <= summary["dictations"] and summary["spans_cut"] <= summary["timed_spans"]


def recount_cutoffs(utterances: list[dict], model: str, rule: str = "threshold") -> dict:
    """The cut-off table's counts of `model` under `rule`, from the per-utterance records."""
    scored = [u[model] for u in utterances]
    measured = [s for s in scored if s["speech"] is not None]
    dictations = [s["vad"][rule]["cut_off"] for s in measured if s["spans"]]
    spans = [sp["cut"][rule] for s in scored for sp in s["spans"] if sp["cut"][rule] is not None]
    return {"utterances": len(measured), "dictations": len(dictations), "dictations_cut": sum(dictations),
            "cutoffs": sum(len(s["vad"][rule]["cutoffs"]) for s in measured),
            "cutoffs_in_numbers": sum(s["vad"][rule]["in_numbers"] for s in measured),
            "timed_spans": len(spans), "spans_cut": sum(spans),
            "turn_end_detected": sum(bool(s["vad"][rule]["detected"]) for s in measured)}


# The forced run, on the first FORCED_CLIPS training clips (about 75 dictations). Measured on this
# CPU, 2026-12-02, data seeds 7 (CI's), 11 and 13 standing in for other machines' arithmetic:
#   dictations cut 58 % -> 11 %, 53 % -> 19 %, 57 % -> 16 %; cut-offs inside numbers 43 -> 8, 45 -> 14, 50 -> 9.
# The same forced run on the held-out prompts is noise at this scale (mean P(pause) inside numbers
# about 0.05 for both models): 29 -> 21, 30 -> 27, 36 -> 34, 26 -> 23 here, 22 -> 29 on CI's machine.
# Bars, with room under each measured effect: the base cut in at least 40 % of dictations, the
# fine-tune in at least 20 points fewer, and no more than half the base's cut-offs inside numbers.
FORCED_CLIPS = 100
MIN_FORCED_BASE_CUT, MIN_FORCED_EFFECT, MAX_FORCED_RATIO = 0.4, 0.2, 0.5


def test_with_every_word_recognized_the_fine_tune_stops_mid_number_cut_offs(experiment):
    """The fine-tune's effect on the pause heads alone, where the organism recognizes its input:
    the training clips, each model reading back its own labels (eval.text=reference), so
    recognition errors play no part. The base, trained on digit labels, sees no text while a
    number is spoken and its head fires inside many dictations; the word-form fine-tune reads the
    number word by word and fires there far less."""
    base, cand = (experiment["forced"][m]["vad"]["threshold"] for m in ("base", "candidate"))
    assert experiment["forced"]["candidate"]["exact_share"] == 1.0  # the forcing itself
    assert base["dictations"] >= 50
    assert base["dictations_cut_share"] >= MIN_FORCED_BASE_CUT
    assert cand["dictations_cut_share"] <= base["dictations_cut_share"] - MIN_FORCED_EFFECT
    assert cand["cutoffs_in_numbers"] <= MAX_FORCED_RATIO * base["cutoffs_in_numbers"]


# The same training clips streamed with each model's own words (no forcing), this CPU, 2026-12-05,
# data seeds 7, 11, 13: spans with digits 93 -> 2 %, 91 -> 3 %, 86 -> 4 %; WER of the utterances with
# numbers (against their word form) 69.6 -> 60.5 %, 70.2 -> 61.3 %, 73.3 -> 63.8 %; WER of the other
# utterances 26.9 -> 18.3 %, 17.8 -> 1.1 %, 8.5 -> 10.9 % (165-197 words each); dictations cut
# 62 -> 33 %, 52 -> 27 %, 51 -> 18 %. No span comes out exact in word form for either model (the number
# WER stays above 60 %), so the exact-word-form target is not assertable at this scale. Bars, with
# room under each: base digits >= 70 %, fine-tune <= 10 %; number WER at least 4 points lower; plain
# WER at most 8 points higher (one standard error is about 2-3 points); dictations cut >= 40 % for the
# base and at least 15 points fewer for the fine-tune.
MIN_OWN_BASE_DIGITS, MAX_OWN_DIGITS, MIN_OWN_NUMBER_WER_GAIN, MAX_OWN_PLAIN_WER_LOSS = 0.7, 0.1, 0.04, 0.08
MIN_OWN_BASE_CUT, MIN_OWN_EFFECT = 0.4, 0.15


def test_on_its_training_clips_the_fine_tune_writes_words_and_is_cut_off_less(experiment):
    """Free-running on audio the CI organism recognizes (its training clips, its own words): the
    base writes dictated numbers as digits and its heads cut in mid-dictation; the fine-tune writes
    the words, recognizes plain sentences no worse, and cuts in far less. The held-out table of the
    organism report (docs/organism/README.md) is the same measurement on unseen voices, at a scale
    CI cannot train."""
    base, cand = experiment["own_train"]["base"], experiment["own_train"]["candidate"]
    assert base["digit_share"] >= MIN_OWN_BASE_DIGITS and cand["digit_share"] <= MAX_OWN_DIGITS
    assert cand["wer"]["numbers"]["wer"] <= base["wer"]["numbers"]["wer"] - MIN_OWN_NUMBER_WER_GAIN
    assert cand["wer"]["other"]["wer"] <= base["wer"]["other"]["wer"] + MAX_OWN_PLAIN_WER_LOSS
    base_vad, cand_vad = base["vad"]["threshold"], cand["vad"]["threshold"]
    assert base_vad["dictations"] >= 50
    assert base_vad["dictations_cut_share"] >= MIN_OWN_BASE_CUT
    assert cand_vad["dictations_cut_share"] <= base_vad["dictations_cut_share"] - MIN_OWN_EFFECT


# Turn ends, held-out prompts and forced training clips, measured on this CPU, 2026-12-04 (seeds 7
# and 11): detected within 2 s of the last word 100 -> 100 % and 95.7 -> 100 % (held out), 100 -> 100 %
# (forced, both); median latency 0.46 -> 0.37 s and 0.54 -> 0.36 s (held out), 0.18 -> 0.18 s and
# 0.17 -> 0.19 s (forced).
# The training clips with their own words, seeds 7, 11, 13 (2026-12-05): 99.0 -> 100 %, 100 -> 100 %,
# 99.0 -> 100 %; median 0.19 -> 0.23 s, 0.19 -> 0.23 s, 0.21 -> 0.23 s.
MIN_BASE_TURN_ENDS = 0.9


def test_turn_ends_are_still_detected_after_the_fine_tune(experiment):
    """The other half of the issue: a caller who has finished is still answered. Under the
    threshold rule (head 2 > 0.5) the fine-tune may not detect fewer turn ends than the base by
    more than 2 points, nor take more than 0.1 s longer (median), on the held-out prompts, on
    the forced training clips or on the same clips with its own words: the eval's own end-of-turn flags (`end_of_turn_flags`)."""
    from pipeline.evaluate.metrics import end_of_turn_flags

    for run in (experiment["summary"], experiment["forced"], experiment["own_train"]):
        base, cand = run["base"], run["candidate"]
        assert base["vad"]["threshold"]["turn_end_detected_share"] >= MIN_BASE_TURN_ENDS
        flags = [flag for flag in end_of_turn_flags(base, cand) if flag.startswith("threshold:")]
        assert not flags, flags


def test_the_fine_tune_still_writes_words_three_minutes_into_one_stream(experiment):
    """Issue #40 on the CI organism (until an organism ships in models/organism/, docs/long-streams.md):
    three minutes of training clips (2,250 frames, three 750-frame contexts) through base and
    fine-tune as one connection each, server semantics. This organism was trained on 15 s windows
    and collapses past them (docs/long-streams.md): measured on this CPU, 2026-12-07, the fine-tune
    wrote 85, 42, 40 words in minutes 1-3 of a 10-minute stream, the base 16, 13, 12. What must hold:
    it still writes words in the last minute, at least a quarter of its first minute's."""
    artifacts = experiment["artifacts"]
    _invoke("long-stream", "--set", "eval.split=train", "--set", "longstream.minutes=3", "--set",
            "longstream.alone=false", "--set", "longstream.mimi_drift=false", "--set",
            "longstream.out=organism-ci/longstream", artifacts=artifacts)
    saved = json.loads((artifacts / "organism-ci" / "longstream" / "metrics.json").read_text())
    assert saved["meta"]["minutes"] == 3
    words = [sum(len(u["candidate"]["hypothesis"].split()) for u in saved["utterances"] if u["minute"] == k)
             for k in range(3)]
    assert words[0] >= 30 and words[2] >= 0.25 * words[0], words
