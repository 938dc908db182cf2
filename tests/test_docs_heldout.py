"""docs/organism/heldout.json: the shipped organism's held-out figures, in the shape the eval
writes (issue #16); the fine-tune beats its base where the project promises it, and the README's
"Results at a glance" table quotes every one of them. The figures are read from the file, whichever
run it holds: a new organism's `heldout.json` from `invoke eval` must pass the same checks."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluate.metrics import WORSE_SHARE

ROOT = Path(__file__).resolve().parents[1]
# metrics.json key -> the README row that quotes it
ROWS = {"digit_spans": "number spans written as digits", "exact_word_form": "number spans exact in word form",
        "dictations_cut": "dictations with a premature cut-off", "wer_no_numbers": "raw WER, sentences without numbers",
        "turn_end_detected": "turn end detected within 2 s", "turn_end_latency_s": "median end-of-turn latency"}
SHARES = set(ROWS) - {"wer_no_numbers", "turn_end_latency_s"}  # fractions of spans, dictations or turns


def figures() -> dict:
    return json.loads((ROOT / "docs" / "organism" / "heldout.json").read_text())


def quoted(key: str, base: float, cand: float) -> str:
    """The README's "base → fine-tuned" cell: shares in % with one decimal, latency in s with two."""
    if key == "turn_end_latency_s":
        return f"{base:.2f} s → {cand:.2f} s"
    return f"{100 * base:.1f} % → {100 * cand:.1f} %"


def test_quoted_cells_round_as_the_table_does():
    # 0.5859872611 -> 58.6 %, 0.0636942675 -> 6.4 %; 0.231 -> 0.23 s, 0.22500000000000053 -> 0.23 s
    assert quoted("dictations_cut", 0.5859872611464968, 0.06369426751592357) == "58.6 % → 6.4 %"
    assert quoted("turn_end_latency_s", 0.231, 0.22500000000000053) == "0.23 s → 0.23 s"


def test_the_kept_figures_have_the_eval_shape():
    kept = figures()
    assert set(kept) == {"base", "candidate"}
    for model in kept.values():
        assert set(model) == set(ROWS)
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
    kept, lines = figures(), (ROOT / "README.md").read_text().splitlines()
    for key, label in ROWS.items():
        row = [line for line in lines if line.startswith(f"| {label} |")]
        assert len(row) == 1, f"README: one table row '{label}' expected, found {len(row)}"
        cell = quoted(key, kept["base"][key], kept["candidate"][key])
        assert f"| {cell} |" in row[0], (row[0], cell)
