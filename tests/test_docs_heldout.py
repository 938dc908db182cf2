"""docs/organism/heldout.json: the full organism run's held-out figures, in the shape the eval
writes (issue #16), and the README's table quotes them."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"wer_no_numbers", "digit_spans", "exact_word_form", "dictations_cut", "turn_end_detected",
        "turn_end_latency_s"}


def test_the_kept_figures_have_the_eval_shape_and_match_the_readme():
    figures = json.loads((ROOT / "docs" / "organism" / "heldout.json").read_text())
    assert set(figures) == {"base", "candidate"}
    readme = (ROOT / "README.md").read_text()
    for model in figures.values():
        assert set(model) == KEYS
        assert all(0 <= model[k] <= 2 for k in KEYS - {"turn_end_latency_s"})
    base, cand = figures["base"], figures["candidate"]
    row = f"**{100 * base['dictations_cut']:.1f} % → {100 * cand['dictations_cut']:.1f} %**"
    assert row in readme, row
    row = f"**{100 * base['wer_no_numbers']:.1f} % → {100 * cand['wer_no_numbers']:.1f} %**"
    assert row in readme, row
