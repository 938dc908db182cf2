"""The shipped fine-tune (models/organism/, `--model organism-ft`) streams past its context: three
minutes of held-out clips (2,250 frames, three times the 750-frame context) through the base and
the fine-tune as one connection each, with server semantics (issue #40). In the last minute, all
of it past twice the context, the fine-tune must still write words, about as many as in its first
minute, and not pad more than its base does.

The held-out clips are the shipped organism's own (its MANIFEST.json's data recipe, eval split,
rebuilt in seconds with data.only_split); the full 10-minute figures are in docs/long-streams.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"  # model.source: the shipped base
MINUTES = 3
CLIPS = 60  # about 6 minutes of held-out speech: no clip repeats within 3 minutes
RATIO, WER_POINTS = 0.5, 0.15  # the last minute against the first: words written, WER (to be set from the measurement)


def _data_recipe(manifest: dict) -> list[str]:
    """The organism's own data recipe, as its manifest records it."""
    d = manifest["data"]
    voices = "[" + ",".join(f"'{v}'" for v in d["eval_voices"]) + "]"
    return [f"data.seed={d['seed']}", f"data.count={d['count']}", f"data.eval_fraction={d['eval_fraction']}",
            f"data.piper_fraction={d['piper_fraction']}", f"data.french_fraction={d['french_fraction']}",
            f"data.eval_voices={voices}"]


@pytest.fixture(scope="module")
def streamed(module_tmp) -> dict:
    from pipeline import shipped
    from pipeline.config import load_config
    from pipeline.data import build_dataset
    from pipeline.longstream import long_stream_eval

    sets = _data_recipe(shipped.check_files()) + [
        f"artifacts={module_tmp}", "data.out=heldout", "data.only_split=eval", f"data.split_limit={CLIPS}",
        "eval.data=heldout", "eval.base=organism", "eval.candidate=organism-ft", f"longstream.minutes={MINUTES}",
        "longstream.alone=false", "longstream.mimi_drift=false", "longstream.out=longstream"]
    cfg = load_config(CONFIG, sets)
    build_dataset(cfg)
    out = long_stream_eval(cfg)
    return json.loads((out / "metrics.json").read_text())


def _words(saved: dict, model: str, minute: int) -> int:
    return sum(len(u[model]["hypothesis"].split()) for u in saved["utterances"] if u["minute"] == minute)


def test_the_stream_is_three_contexts_long(streamed):
    meta = streamed["meta"]
    assert meta["minutes"] == MINUTES and meta["runtime"] == "server-semantics"
    assert len(streamed["padding_10s"]["candidate"]) * 125 == MINUTES * 750  # 2,250 frames streamed
    assert all(row["utterances"] >= 5 for row in streamed["minutes"]["candidate"])


def test_the_fine_tune_still_writes_words_in_the_last_minute(streamed):
    first, last = _words(streamed, "candidate", 0), _words(streamed, "candidate", MINUTES - 1)
    assert first >= 20
    assert last >= RATIO * first, f"{last} words in minute {MINUTES} against {first} in minute 1"
    table = streamed["minutes"]
    assert table["candidate"][-1]["wer"] <= table["candidate"][0]["wer"] + WER_POINTS
    assert table["candidate"][-1]["padding_share"] <= table["base"][-1]["padding_share"] + 0.05
