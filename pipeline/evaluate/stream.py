"""Stream audio through a checkpoint as Kyutai's ASR server does: Candle (production) or PyTorch.

Each clip is padded to whole 1920-sample frames and followed by `flush_seconds` of silence, so
the words the model writes `audio_delay_seconds` late still come out; one step per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..constants import FRAME_SAMPLES, SAMPLE_RATE
from .metrics import HypWord, decode_words
from .sources import EvalError


@dataclass
class Streamed:
    tokens: np.ndarray  # [T] greedy text tokens
    pause: np.ndarray  # [T, heads] P(pause) per head
    words: list[HypWord]


def with_flush(audio: np.ndarray, flush_seconds: float) -> np.ndarray:
    """The clip padded to whole frames, then at least `flush_seconds` of silence (whole frames)."""
    frames = math.ceil(len(audio) / FRAME_SAMPLES) + math.ceil(flush_seconds * SAMPLE_RATE / FRAME_SAMPLES - 1e-9)
    out = np.zeros(frames * FRAME_SAMPLES, dtype=np.float32)
    out[: len(audio)] = audio
    return out


class Runner:
    """One checkpoint in one runtime; `run(audio)` streams a fresh clip (state reset)."""

    def __init__(self, ckpt: Checkpoint | Path, runtime: str = "candle", flush_seconds: float = 2.0):
        self.ckpt, self.runtime, self.flush_seconds = Checkpoint.of(ckpt), runtime, flush_seconds
        self.delay = self.ckpt.text_delay
        if flush_seconds < self.delay + 1.0:
            raise EvalError(f"eval.flush_seconds is {flush_seconds} s; {self.ckpt} writes words {self.delay} s late, "
                            f"so at least {self.delay + 1.0} s of silence is needed to flush the last words")
        if not self.ckpt.has_extra_heads:
            raise EvalError(f"{self.ckpt}: the checkpoint has no pause heads (extra_heads_num_heads = 0); "
                            "use a '-candle' checkpoint such as kyutai/stt-1b-en_fr-candle")
        self.tokenizer = self.ckpt.tokenizer
        self._streamer = None
        if runtime == "candle":
            import candle_bridge

            self._streamer = candle_bridge.Streamer(str(self.ckpt))
        elif runtime != "torch":
            raise EvalError(f"eval.runtime must be 'candle' or 'torch', got {runtime!r}")

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def run(self, audio: np.ndarray) -> Streamed:
        pcm = with_flush(np.asarray(audio, dtype=np.float32), self.flush_seconds)
        if self._streamer is not None:
            self._streamer.reset()
            tokens, _, pause = self._streamer.step_pcm(pcm)
        else:
            from ..verify import torch_codes, torch_stream

            out = torch_stream(self.ckpt, torch_codes(self.ckpt, pcm))
            tokens, pause = out.tokens, out.pause
        tokens = np.asarray(tokens, dtype=np.int64)
        return Streamed(tokens, np.asarray(pause, dtype=np.float32), decode_words(tokens, self.decode, self.delay))
