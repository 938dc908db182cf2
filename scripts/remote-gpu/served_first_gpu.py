"""The served first frame on the GPU box (a remote GPU machine, scripts/remote-gpu/README.md; the script
runs as it is on any machine with a GPU): what keeping it costs a code pack, and whether the GPU
gives the CPU's codes (issue #16). Run on the box with the .whl wheels on PYTHONPATH:

    python3 scripts/remote-gpu/served_first_gpu.py [CLIPS]

The `server` preset's standard Mimi (Kyutai's architecture, random weights, codebooks fitted by k-means)
encodes CLIPS synthetic 5 s clips in batches of 32, as `invoke pack` does on a GPU, once through
`CodeCache.encode_with_served_first` (codes and served first frames, what a pack now keeps) and
once timing `served_first_frame` alone on the same batches. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from pipeline.checkpoint import Checkpoint
from pipeline.codes import CodeCache, served_first_frame
from pipeline.constants import FRAME_SAMPLES
from pipeline.presets import make_checkpoint, synthetic_audio


def main(clips: int = 256) -> dict:
    work = Path(tempfile.mkdtemp(prefix="served-first-"))
    ckpt = Checkpoint.open(make_checkpoint("server", work / "server", seed=0))
    paths = []
    for i in range(clips):
        paths.append(work / f"{i:04d}.wav")
        sf.write(str(paths[-1]), synthetic_audio(5.0, seed=i), 24000)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU for a dry run
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cache = CodeCache(ckpt.load_mimi(), ckpt.files["mimi"], work / "cache", device)
    sync()
    start = time.perf_counter()
    encoded = cache.encode_with_served_first(paths, batch_size=32)
    sync()
    whole = time.perf_counter() - start

    batches = [torch.stack([torch.from_numpy(synthetic_audio(5.0, seed=i)[:FRAME_SAMPLES])[None] for i in range(lo, lo + 32)])
               for lo in range(0, clips, 32) if lo + 32 <= clips]
    sync()
    start = time.perf_counter()
    for batch in batches:
        served_first_frame(cache.mimi, batch.to(device))
    sync()
    first_only = time.perf_counter() - start

    cpu_mimi = ckpt.load_mimi()  # the CPU's served frames of the first 16 clips, against the GPU's
    on_cpu = served_first_frame(cpu_mimi, torch.stack([torch.from_numpy(synthetic_audio(5.0, seed=i))[None]
                                                       for i in range(min(16, clips))]))
    on_gpu = torch.stack([first for _, first in encoded[:min(16, clips)]])
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__, "clips": clips,
            "encode_with_served_first_s": round(whole, 2), "clips_per_s": round(clips / whole, 1),
            "served_first_frame_alone_s": round(first_only, 3),
            "served_first_share_of_encode": round(first_only / whole, 4),
            "gpu_vs_cpu_served_first_equal_share": float((on_cpu == on_gpu).float().mean())}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)))
