"""docs/organism/heldout.json: the full organism run's held-out figures, in the shape the eval
writes (issue #16), and the README's "Results at a glance" table quotes every one of them."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# metrics.json key -> the README row that quotes it
ROWS = {"digit_spans": "number spans written as digits", "exact_word_form": "number spans exact in word form",
        "dictations_cut": "dictations with a premature cut-off", "wer_no_numbers": "raw WER, sentences without numbers",
        "turn_end_detected": "turn end detected within 2 s", "turn_end_latency_s": "median end-of-turn latency"}


def quoted(key: str, base: float, cand: float) -> str:
    """The README's "base → fine-tuned" cell: shares in % with one decimal, latency in s with two."""
    if key == "turn_end_latency_s":
        return f"{base:.2f} s → {cand:.2f} s"
    return f"{100 * base:.1f} % → {100 * cand:.1f} %"


def test_quoted_cells_round_as_the_table_does():
    # 0.5859872611 -> 58.6 %, 0.0636942675 -> 6.4 %; 0.231 -> 0.23 s, 0.22500000000000053 -> 0.23 s
    assert quoted("dictations_cut", 0.5859872611464968, 0.06369426751592357) == "58.6 % → 6.4 %"
    assert quoted("turn_end_latency_s", 0.231, 0.22500000000000053) == "0.23 s → 0.23 s"


def test_the_kept_figures_have_the_eval_shape_and_match_the_readme():
    figures = json.loads((ROOT / "docs" / "organism" / "heldout.json").read_text())
    assert set(figures) == {"base", "candidate"}
    for model in figures.values():
        assert set(model) == set(ROWS)
        assert all(0 <= model[k] <= 2 for k in set(ROWS) - {"turn_end_latency_s"})
    lines = (ROOT / "README.md").read_text().splitlines()
    for key, label in ROWS.items():
        row = [line for line in lines if line.startswith(f"| {label} |")]
        assert len(row) == 1, f"README: one table row '{label}' expected, found {len(row)}"
        cell = quoted(key, figures["base"][key], figures["candidate"][key])
        assert f"| {cell} |" in row[0], (row[0], cell)
