"""What Kyutai's PyTorch moshi does on a per-slot reset, on the same Mimi the Rust repro uses.

    python scripts/upstream/python_reset.py MODEL

MODEL: a checkpoint directory or preset name. PyTorch moshi (the version the project pins) keeps a
per-batch-entry `first` flag in each streaming conv's state (`_StreamingConv1dState`); a partial
reset, `reset_streaming(reset_mask)`, sets it again for the entries reset, and the next step fills
a replicate-padded conv's buffer with that entry's first sample. This script measures it: a
streaming Mimi warmed up with two silent frames and reset for entry 0 only encodes the first
frames of verify-candle's test audio as a fresh Mimi does; forcing `first` off after the reset (what
moshi 0.6.4's Rust `reset_batch_idx` leaves) changes frame 0 and nothing after it. Prints JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.checkpoint import Checkpoint  # noqa: E402
from pipeline.constants import FRAME_SAMPLES  # noqa: E402
from pipeline.verify import test_audio  # noqa: E402

FRAMES, WARMUP = 4, 2


def encode(mimi, frames: list[torch.Tensor]) -> list[list[int]]:
    return [mimi.encode(f)[0, :, 0].tolist() for f in frames]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from moshi.modules.conv import StreamingConv1d
    from moshi.utils.compile import no_cuda_graph

    source = sys.argv[1]
    if Path(source).is_dir():
        ckpt = Checkpoint.open(source)
    else:
        from pipeline.models import resolve_model

        ckpt = resolve_model(source, REPO / "artifacts")
    mimi = ckpt.load_mimi("cpu")
    audio = torch.from_numpy(test_audio()[: FRAMES * FRAME_SAMPLES].astype(np.float32))[None, None]
    frames = [audio[..., i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES] for i in range(FRAMES)]
    silence = torch.zeros(1, 1, FRAME_SAMPLES)
    replicate = [m for m in mimi.modules() if isinstance(m, StreamingConv1d) and m.pad_mode == "replicate"]

    def after_slot_reset(keep_first: bool) -> list[list[int]]:
        mimi.reset_streaming()  # a fresh server
        encode(mimi, [silence] * WARMUP)  # its warm-up
        mimi.reset_streaming(torch.tensor([True]))  # a new connection in batch entry 0
        if not keep_first:
            for m in replicate:
                m._streaming_state.first[:] = False  # the flag Rust's reset_batch_idx leaves set
        return encode(mimi, frames)

    with torch.no_grad(), no_cuda_graph(), mimi.streaming(1):
        fresh = encode(mimi, frames)
        python_reset = after_slot_reset(keep_first=True)
        rust_like = after_slot_reset(keep_first=False)
    result = {
        "model": str(ckpt), "replicate_padded_convs": len(replicate),
        "python_slot_reset_equals_fresh": [a == b for a, b in zip(python_reset, fresh)],
        "first_flag_left_off_equals_fresh": [a == b for a, b in zip(rust_like, fresh)],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
