"""Mimi codes for training audio, encoded once and cached on disk.

The cache key is the audio file's content hash inside a folder named after the Mimi weights'
content hash and the number of codebooks, so changing either never serves stale codes.

Each clip also keeps its first frame's codes as Kyutai's moshi-server encodes them
(`served_first_frame`): the server resets a connection's slot in a way that gives Mimi's first
frame other codes than a fresh stream's, and nothing else (README, "Serving"), so training can
show the model the stream starts production gives it (`train.served_starts`).
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import Checkpoint
from .constants import FRAME_SAMPLES
from .data.audio import read_audio
from .data.augment import AugmentConfig, Augmentation, augment, draw, generator
from .errors import StageError
from .io import atomic_file, sha256_file


def training_audio(path: Path) -> torch.Tensor:
    """A dataset clip as [1, 1, samples], read strictly (`read_audio(..., repair=False)`)."""
    return torch.from_numpy(read_audio(path, repair=False).copy())[None, None]


def served_first_frame(mimi, audio: torch.Tensor) -> torch.Tensor:
    """The codes [B, n_q] of the first frame of `audio` [B, 1, >= FRAME_SAMPLES] as moshi-server
    0.6.4 encodes it for a new connection. The server warms up, then resets the connection's slot
    (`reset_batch_idx`), which zeroes the buffer of Mimi's downsampling conv but leaves its
    "left padding applied" flag set: the first frame sees zeros where a fresh stream replicates
    its first sample, and every later frame is the fresh stream's. A test checks that a fresh
    stream with this frame 0 gives the server's outputs exactly (tests/test_codes.py)."""
    from moshi.modules.conv import StreamingConv1d
    from moshi.utils.compile import no_cuda_graph

    first = audio[..., :FRAME_SAMPLES]
    if first.shape[-1] < FRAME_SAMPLES:
        first = torch.nn.functional.pad(first, (0, FRAME_SAMPLES - first.shape[-1]))
    # One step per stream and batches of any size: nothing for moshi's CUDA graphs to replay.
    with torch.no_grad(), no_cuda_graph(), mimi.streaming(first.shape[0]):
        for module in mimi.modules():
            if isinstance(module, StreamingConv1d) and module.pad_mode == "replicate":
                module._streaming_state.first[:] = False  # the state a slot reset leaves
        return mimi.encode(first)[:, :, 0]


@dataclass(frozen=True)
class Clip:
    """A clip to encode: a dataset file as recorded (`copy` 0), or its augmented copy `copy`,
    drawn from (file name, copy, seed) and `augment_cfg` so every machine makes the same audio."""

    path: Path
    copy: int = 0
    augment_cfg: AugmentConfig | None = None
    seed: int = 0

    def augmentation(self) -> Augmentation | None:
        return draw(generator(self.path.name, self.copy, self.seed), self.augment_cfg) if self.copy else None

    def wave(self) -> np.ndarray:
        audio = read_audio(self.path, repair=False)
        if not self.copy:
            return audio
        rng = generator(self.path.name, self.copy, self.seed)
        return np.ascontiguousarray(augment(audio, draw(rng, self.augment_cfg), rng), dtype=np.float32)

    def cache_suffix(self) -> str:
        """'' as recorded; for a copy, what its audio is drawn from (a changed config is another key)."""
        if not self.copy:
            return ""
        recipe = repr((self.path.name, self.copy, self.seed, self.augment_cfg)).encode()
        return f"-copy{self.copy}-{hashlib.sha256(recipe).hexdigest()[:12]}"


class CodeCache:
    """Encodes audio files (and augmented copies of them) with a checkpoint's Mimi and keeps the
    codes on disk."""

    def __init__(self, mimi, mimi_file: Path, cache_root: Path, device: str = "cpu"):
        self.mimi, self.device = mimi.to(device), device
        n_q = mimi.num_codebooks
        self.folder = Path(cache_root) / f"mimi-{sha256_file(mimi_file)[:16]}-q{n_q}"
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _store(cached: Path, codes: torch.Tensor, served_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        entry = {"codes": codes.to("cpu", torch.int16).contiguous(),
                 "served_first": served_first.to("cpu", torch.int16).contiguous()}
        with atomic_file(cached) as tmp:
            save_file(entry, str(tmp))
        return entry["codes"].long(), entry["served_first"].long()

    @staticmethod
    def _load(cached: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A cached entry; None when absent or written before the served first frame was kept."""
        if not cached.is_file():
            return None
        entry = load_file(str(cached))
        return (entry["codes"].long(), entry["served_first"].long()) if "served_first" in entry else None

    def encode_all(self, clips: Sequence[Clip | Path], batch_size: int | None = None,
                   workers: int | None = None) -> list[torch.Tensor]:
        """Codes [n_q, frames] of every clip, in order (see `encode_with_served_first`)."""
        return [codes for codes, _ in self.encode_with_served_first(clips, batch_size, workers)]

    def encode_with_served_first(self, clips: Sequence[Clip | Path], batch_size: int | None = None,
                                 workers: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(codes [n_q, frames], first frame as moshi-server encodes it [n_q]) of every clip, in
        order. Clips not cached yet are encoded `batch_size` at a time
        (default: 32 on a GPU, which one 5 s clip at a time leaves waiting on kernel launches:
        22 files/s for the standard Mimi on an H100, 2026-12-06; 1 on the CPU), similar lengths
        together, each clip zero-padded to the batch's longest. Mimi is causal and pads with
        zeros, so a clip's frames see the same samples either way (a test compares them). The
        audio is read and augmented by `workers` threads (default: every core on a GPU; one on
        the CPU, where the Mimi already uses the cores) a few batches ahead of the encoder."""
        on_gpu = str(self.device).startswith("cuda")
        batch_size = batch_size or (32 if on_gpu else 1)
        workers = workers or ((os.cpu_count() or 1) if on_gpu else 1)
        clips = [c if isinstance(c, Clip) else Clip(Path(c)) for c in clips]
        digests = {p: sha256_file(p)[:32] for p in {c.path for c in clips}}  # once per file, copies share it
        cached = [self.folder / f"{digests[c.path]}{c.cache_suffix()}.safetensors" for c in clips]
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [self._load(c) for c in cached]

        def length(i: int) -> float:  # the encoded length, for batching similar lengths together
            aug = clips[i].augmentation()
            return clips[i].path.stat().st_size / (aug.speed if aug else 1.0)

        todo = sorted((i for i, entry in enumerate(out) if entry is None), key=length)
        batches = [todo[lo:lo + batch_size] for lo in range(0, len(todo), batch_size)]
        with tqdm(total=len(clips), desc="Mimi codes", unit="clip", leave=False) as bar, \
                ThreadPoolExecutor(workers) as pool:
            bar.update(len(clips) - len(todo))

            def read(batch: list[int]) -> list[Future]:
                return [pool.submit(clips[i].wave) for i in batch]

            ahead = [read(b) for b in batches[:4]]
            for n, batch in enumerate(batches):
                waves = [f.result() for f in ahead.pop(0)]
                if n + 4 < len(batches):
                    ahead.append(read(batches[n + 4]))
                x = torch.zeros(len(batch), 1, max(len(w) for w in waves))
                for row, wave in zip(x, waves):
                    row[0, :len(wave)] = torch.from_numpy(wave)
                x = x.to(self.device)
                with torch.no_grad():
                    codes = self.mimi.encode(x)
                firsts = served_first_frame(self.mimi, x)
                for i, wave, c, first in zip(batch, waves, codes, firsts):
                    out[i] = self._store(cached[i], c[:, :math.ceil(len(wave) / FRAME_SAMPLES)], first)
                bar.update(len(batch))
        return out


# --- code packs: a dataset's codes and labels in one file, no audio needed ------------------------

PACK_FORMAT = "stt-numerals code pack v4"  # v3: the dataset's text delay; v4: the served first frames


class Pack(NamedTuple):
    labels: list[dict]
    codes: list[torch.Tensor]  # [n_q, frames] per utterance
    served_first: list[torch.Tensor]  # [n_q] per utterance: frame 0 as moshi-server encodes it
    text_delay: float | None  # the one the dataset was built for


def write_pack(path: Path, utterances: Sequence, codes: Sequence[torch.Tensor], served_first: Sequence[torch.Tensor],
               mimi_file: Path, text_delay: float | None = None, augments: Sequence[str] | None = None) -> Path:
    """One safetensors file with every utterance's codes (concatenated; uint8 when the codebooks
    have at most 256 entries), their offsets, each one's first frame as moshi-server encodes it,
    the labels the trainer reads (zlib-compressed JSON) and, in its metadata, the hash of the Mimi
    that made the codes and the text delay the dataset was built for. Training on another machine
    then needs neither the audio nor a Mimi pass."""
    import json
    import zlib

    offsets = torch.tensor([0] + [c.shape[1] for c in codes]).cumsum(0)
    labels = [{"path": str(u.path), "alignments": [[w, list(t), sp] for w, t, sp in u.alignments],
               "number_spans": [dict(s.to_json()) if hasattr(s, "to_json") else dict(s) for s in u.number_spans],
               "category": u.category, "voice": u.voice} for u in utterances]
    for label, augment in zip(labels, augments or []):
        if augment:
            label["augment"] = augment
    packed = zlib.compress(json.dumps(labels).encode(), 9)
    every = torch.cat([c.long() for c in codes], dim=1)
    firsts = torch.stack([f.long() for f in served_first], dim=1) if len(served_first) else every[:, :0]
    if firsts.shape != (every.shape[0], len(codes)):
        raise ValueError(f"{path}: {firsts.shape[1]} served first frames for {len(codes)} utterances")
    small = every.numel() == 0 or max(int(every.max()), int(firsts.max())) < 256
    dtype = torch.uint8 if small else torch.int16
    tensors = {"codes": every.to(dtype).contiguous(), "served_first": firsts.to(dtype).contiguous(), "offsets": offsets,
               "labels": torch.frombuffer(bytearray(packed), dtype=torch.uint8)}
    with atomic_file(path) as tmp:
        metadata = {"format": PACK_FORMAT, "mimi_sha256": sha256_file(mimi_file)}
        if text_delay is not None:
            metadata["text_delay"] = repr(float(text_delay))
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def pack_utterances(ckpt: Checkpoint | Path, utterances: Sequence, out: Path, cache_root: Path,
                    text_delay: float | None = None, copies: int = 0, augment_cfg=None, seed: int = 0) -> Path:
    """Encode `utterances` with checkpoint `ckpt`'s Mimi (through the code cache) into a pack;
    `text_delay`: the one their dataset was built for (its manifest's). `copies` augmented
    copies of each clip follow it (`pipeline.data.augment`, drawn from `augment_cfg` and `seed`;
    word timings scaled with the speed, the augmentation named in the label)."""
    import dataclasses

    from .data.augment import scale_alignments

    ckpt = Checkpoint.of(ckpt)
    mimi_file = ckpt.files["mimi"]
    # On a GPU box the Mimi encodes there (the standard Mimi runs at about 8.5x real time on 2 CPU cores).
    cache = CodeCache(ckpt.load_mimi(), mimi_file, cache_root, "cuda" if torch.cuda.is_available() else "cpu")
    copied = [(u, Clip(u.path, copy, augment_cfg, seed)) for u in utterances for copy in range(1, copies + 1)]
    encoded = cache.encode_with_served_first([Clip(u.path) for u in utterances] + [clip for _, clip in copied])
    entries, augments = list(utterances), [""] * len(utterances)
    for u, clip in copied:
        aug = clip.augmentation()
        entries.append(dataclasses.replace(u, alignments=scale_alignments(u.alignments, aug.speed),
                                           duration=u.duration / aug.speed))
        augments.append(aug.describe())
    return write_pack(out, entries, [c for c, _ in encoded], [f for _, f in encoded], mimi_file, text_delay, augments)


def read_pack(path: Path, mimi_file: Path) -> Pack:
    """A pack's labels, codes, served first frames and text delay; refused if it was made by
    another Mimi than `mimi_file`."""
    import json
    import zlib

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != PACK_FORMAT:
                raise StageError(f"{path}: not a code pack of this version (format {metadata.get('format')!r}); "
                                 "rebuild it with `invoke pack`")
            codes, offsets, packed = f.get_tensor("codes"), f.get_tensor("offsets"), f.get_tensor("labels")
            firsts = f.get_tensor("served_first")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise StageError(f"{path}: not a readable code pack ({exc.__class__.__name__}); rebuild it with `invoke pack`") from None
    if metadata.get("mimi_sha256") != sha256_file(mimi_file):
        raise StageError(f"{path}: its codes come from another Mimi than {mimi_file}; rebuild the pack with this model")
    labels = json.loads(zlib.decompress(packed.numpy().tobytes()))
    pieces = [codes[:, a:b].long() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    if len(pieces) != len(labels):
        raise StageError(f"{path}: {len(pieces)} code runs for {len(labels)} labels; rebuild it with `invoke pack`")
    delay = metadata.get("text_delay")
    return Pack(labels, pieces, list(firsts.long().T), None if delay is None else float(delay))
