"""The data stage (issue #3): number prompts -> speech with word timings -> a validated dataset.

Public entry points:
- `build_dataset(cfg)`: what `invoke data` runs; returns the dataset folder.
- `check_dataset(folder)`: problems, one line each naming the file (`invoke data --check DIR`).
- `read_split(folder, split)`: the `Utterance`s of 'train' or 'eval', for the trainer.
- `record_session(...)`: what `invoke record` runs (capture function injectable).
- `measure_annotation(...)`, `bench_data(...)`: the acceptance figures and a benchmark.
- `normalize_text`, `verbalize`, `Reading`, `digits_of`: the digit -> word normalizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from .check import check_dataset
from .dataset import build_dataset
from .layout import DataError, Utterance, dataset_text_delay, read_split
from .measure import bench_data, measure_annotation
from .normalize import NormalizationError, NumberSpan, Reading, digits_of, normalize_text, verbalize
from .record import record_session

__all__ = [
    "DataError", "NormalizationError", "NumberSpan", "Reading", "Utterance", "bench_data", "build_dataset",
    "check_dataset", "digits_of", "measure_annotation", "normalize_text", "read_split", "record_session",
    "dataset_text_delay", "summary", "verbalize",
]



def summary(folder: str | Path) -> str:
    """One line about a built dataset, from its manifest."""
    m = json.loads((Path(folder) / "manifest.json").read_text())
    langs = {k: sum(v.get(k, 0) for v in m["lang_counts"].values()) for k in ("en", "fr")}
    return (f"{m['splits']['train']} train + {m['splits']['eval']} eval utterances ({m['hours'] * 60:.1f} min of audio; "
            f"en {langs['en']}, fr {langs['fr']}; {m['flagged']} flagged by Whisper)")
