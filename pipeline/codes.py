"""Mimi codes for training audio, encoded once and cached on disk.

The cache key is the audio file's content hash inside a folder named after the Mimi weights'
content hash and the number of codebooks, so changing either never serves stale codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .io import atomic_file, sha256_file

SAMPLE_RATE = 24_000


def read_audio(path: Path) -> torch.Tensor:
    """Mono float32 audio at 24 kHz as [1, 1, samples]; anything else is refused clearly."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read audio ({exc}); re-create it with `invoke data`") from None
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise ValueError(f"{path}: audio is {rate} Hz with {audio.shape[1]} channel(s); "
                         f"training needs mono {SAMPLE_RATE} Hz (`invoke data` writes that)")
    if len(audio) == 0 or not np.isfinite(audio).all():
        raise ValueError(f"{path}: audio is empty or contains NaN/inf; re-create or remove it")
    return torch.from_numpy(audio[:, 0].copy())[None, None]


class CodeCache:
    """Encodes audio files with a checkpoint's Mimi and keeps the codes on disk."""

    def __init__(self, mimi, mimi_file: Path, cache_root: Path, device: str = "cpu"):
        self.mimi, self.device = mimi.to(device), device
        n_q = mimi.num_codebooks
        self.folder = Path(cache_root) / f"mimi-{sha256_file(mimi_file)[:16]}-q{n_q}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def codes(self, audio_path: Path) -> torch.Tensor:
        """[n_q, frames] int64 codes for one file (encoded on first request)."""
        cached = self.folder / f"{sha256_file(audio_path)[:32]}.safetensors"
        if cached.is_file():
            return load_file(str(cached))["codes"].long()
        audio = read_audio(audio_path).to(self.device)
        with torch.no_grad():
            codes = self.mimi.encode(audio)[0].to("cpu", torch.int16)
        with atomic_file(cached) as tmp:
            save_file({"codes": codes.contiguous()}, str(tmp))
        return codes.long()

    def encode_all(self, paths: Sequence[Path]) -> list[torch.Tensor]:
        return [self.codes(p) for p in tqdm(paths, desc="Mimi codes", unit="file", leave=False)]
