"""A few dictation clips for scripts/upstream/slot_reset_patch.sh when no dataset is at hand: the
project's espeak-ng voices (`pipeline.data.synth`) saying fixed number prompts, each with 0.5 s of
silence before the speech (so "head 2 on at speech start" is measured after a quiet lead-in, as
in a dataset clip) and 0.3 s after, written as 24 kHz wav + <name>.txt transcripts (a folder
`invoke eval` and served_vs_fresh.py read).

    python scripts/upstream/make_clips.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.data.audio import SAMPLE_RATE, resample, with_silence, write_text, write_wav  # noqa: E402
from pipeline.data.synth import Voice, synthesize  # noqa: E402

# (voice, words): dictated digits, the case the project is about, and one plain sentence.
CLIPS = [
    ("en-us", "my number is five five five one two nine six"),
    ("en-gb-x-rp", "the order number is eight three one four two"),
    ("en-us+m3", "call me back on zero seven nine one one"),
    ("en-us+m1", "the code is four four nine two and then seven"),
    ("en-us+f4", "please send the parcel to the front desk"),
    ("en-gb-scotland", "it is two three eight six zero one"),
]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for i, (voice, text) in enumerate(CLIPS):
        engine_voice = Voice("espeak", voice)
        audio, rate, _ = synthesize(engine_voice, text.split())
        audio = with_silence(resample(audio, rate, SAMPLE_RATE), lead=0.5, tail=0.3)
        name = f"clip{i:02d}"
        write_wav(out / f"{name}.wav", audio)
        write_text(out / f"{name}.txt", text)
    print(f"wrote {len(CLIPS)} clips to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
