"""docs/organism/heldout.json: the full organism run's held-out figures, in the shape the eval
writes (issue #16); the fine-tune beats its base where the project promises it, and the README's
table quotes them. The figures are read from the file, whichever run it holds: a new organism's
`heldout.json` from `invoke eval` must pass the same checks."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluate.metrics import WORSE_SHARE

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"wer_no_numbers", "digit_spans", "exact_word_form", "dictations_cut", "turn_end_detected",
        "turn_end_latency_s"}
SHARES = KEYS - {"wer_no_numbers", "turn_end_latency_s"}  # fractions of spans, dictations or turns


def figures() -> dict:
    return json.loads((ROOT / "docs" / "organism" / "heldout.json").read_text())


def test_the_kept_figures_have_the_eval_shape():
    kept = figures()
    assert set(kept) == {"base", "candidate"}
    for model in kept.values():
        assert set(model) == KEYS
        assert all(0 <= model[k] <= 1 for k in SHARES), model
        assert model["wer_no_numbers"] >= 0 and (model["turn_end_latency_s"] is None or model["turn_end_latency_s"] >= 0)


def test_the_fine_tune_writes_fewer_digits_cuts_fewer_dictations_and_still_ends_turns():
    """The direction of each effect (issue #16): fewer number spans written with digits, fewer
    dictations cut off by the 2 s head, and turn ends detected no less than 2 points below the
    base (`WORSE_SHARE`, the eval's own end-of-turn flag)."""
    base, cand = figures()["base"], figures()["candidate"]
    assert cand["digit_spans"] < base["digit_spans"], (base["digit_spans"], cand["digit_spans"])
    assert cand["dictations_cut"] < base["dictations_cut"], (base["dictations_cut"], cand["dictations_cut"])
    assert cand["turn_end_detected"] >= base["turn_end_detected"] - WORSE_SHARE, \
        (base["turn_end_detected"], cand["turn_end_detected"])


def test_the_readme_quotes_the_kept_figures():
    kept, readme = figures(), (ROOT / "README.md").read_text()
    base, cand = kept["base"], kept["candidate"]
    row = f"**{100 * base['dictations_cut']:.1f} % → {100 * cand['dictations_cut']:.1f} %**"
    assert row in readme, row
    row = f"**{100 * base['wer_no_numbers']:.1f} % → {100 * cand['wer_no_numbers']:.1f} %**"
    assert row in readme, row
