"""Stream audio through a checkpoint in one of four runtimes:

- 'candle': Kyutai's Rust crate with a fresh `moshi::asr::State` per clip (`candle_bridge.Streamer`);
- 'torch': PyTorch moshi with the same input convention;
- 'server-semantics': the Rust crate with moshi-server's semantics, warm-up then a slot reset per
  connection (`candle_bridge.ServerStreamer`), in-process;
- 'server': Kyutai's moshi-server itself on 127.0.0.1, one websocket connection per clip (the
  checkpoint is exported to a temporary folder first unless it is an export).

Each clip is padded to whole 1920-sample frames and followed by `flush_seconds` of silence, so
the words the model writes `audio_delay_seconds` late still come out; one step per frame.
With the two server runtimes the words are the server's `Word` messages: `HypWord.step` is the
step that closed the word and `start` the server's `start_time` (the previous word's end).

Teacher forcing (`eval.text = reference`, 'candle' and 'torch' only): after each step the model
reads back the reference's text stream (`reference_text`, the labels training builds) instead
of its own token, so its pause heads answer as if it had recognized every word. The `tokens` and
words returned are then that forced stream.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..constants import FRAME_SAMPLES, SAMPLE_RATE
from ..labels import Word, build_text_stream, digit_form
from .metrics import HypWord, Reference, decode_words
from .sources import EvalError


@dataclass
class Streamed:
    tokens: np.ndarray  # [T] greedy text tokens ('candle', 'torch'); empty for the server runtimes
    pause: np.ndarray  # [T, heads] P(pause) per head
    words: list[HypWord]


def with_flush(audio: np.ndarray, flush_seconds: float) -> np.ndarray:
    """The clip padded to whole frames, then at least `flush_seconds` of silence (whole frames)."""
    out = np.zeros(steps_of(len(audio), flush_seconds) * FRAME_SAMPLES, dtype=np.float32)
    out[: len(audio)] = audio
    return out


def steps_of(samples: int, flush_seconds: float) -> int:
    """Stream steps of a clip of `samples` samples once flushed (one per frame)."""
    return math.ceil(samples / FRAME_SAMPLES) + math.ceil(flush_seconds * SAMPLE_RATE / FRAME_SAMPLES - 1e-9)


def reference_text(ref: Reference, ckpt: Checkpoint, number_form: str, steps: int) -> np.ndarray:
    """The text stream a model trained on `ref` would write, over `steps` frames: its labels as
    training builds them (`labels.build_text_stream`, the checkpoint's tokenizer and text delay),
    numbers as spoken words ('words') or in Kyutai's digit form ('digits', `labels.digit_form`)."""
    if not ref.times:
        raise EvalError(f"{ref.path or ref.id}: eval.text=reference needs word timings; evaluate a dataset "
                        "from `invoke data` (its alignments), not a folder of transcripts")
    words = [Word(w, start, end) for w, (start, end) in zip(ref.words, ref.times)]
    if number_form == "digits":
        words = digit_form(words, [(s.first, s.last, s.written) for s in ref.spans])
    return build_text_stream(words, ckpt.tokenizer.encode, steps, ckpt.text_delay).tokens.numpy()


RUNTIMES = ("candle", "torch", "server-semantics", "server")


class Runner:
    """One checkpoint in one runtime; `run(audio)` streams a fresh clip (state reset, or a new
    connection). Use as a context manager: the 'server' runtime runs a server until `close()`."""

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
        self._streamer, self._url, self._resources = None, None, contextlib.ExitStack()
        if runtime not in RUNTIMES:
            raise EvalError(f"eval.runtime must be one of {RUNTIMES}, got {runtime!r}")
        import candle_bridge

        if runtime == "candle":
            self._streamer = candle_bridge.Streamer(str(self.ckpt))
        elif runtime == "server-semantics":
            self._streamer = candle_bridge.ServerStreamer(str(self.ckpt), self.ckpt.delay_frames)
        elif runtime == "server":
            self._url = self._start_server()

    def _start_server(self) -> str:
        from ..export import SERVER_CONFIG, export
        from ..serve import running_server

        work = Path(self._resources.enter_context(tempfile.TemporaryDirectory(prefix="stt-numerals-eval-")))
        folder = Path(self.ckpt)
        if not (folder / SERVER_CONFIG).is_file():
            folder = export(self.ckpt, work / "export", batch_size=1, device="cpu")
        return self._resources.enter_context(running_server(folder, work / "serve"))

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def run(self, audio: np.ndarray, forced_text: np.ndarray | None = None) -> Streamed:
        """`forced_text`: teacher forcing (see the module doc), one token per step
        (`steps_of(len(audio), flush_seconds)`)."""
        pcm = with_flush(np.asarray(audio, dtype=np.float32), self.flush_seconds)
        if self.runtime in ("server", "server-semantics"):
            if forced_text is not None:
                raise EvalError(f"the {self.runtime!r} runtime cannot force the text stream; use 'candle' or 'torch'")
            return self._run_served(pcm)
        forced = None if forced_text is None else [int(t) for t in forced_text]
        if self._streamer is not None:
            self._streamer.reset()
            tokens, _, pause = self._streamer.step_pcm(pcm, forced)
        else:
            from ..verify import torch_codes, torch_stream

            codes = torch_codes(self.ckpt, pcm)
            if forced is not None and len(forced) != len(codes):
                raise EvalError(f"forced text has {len(forced)} tokens for {len(codes)} audio frames")
            out = torch_stream(self.ckpt, codes, forced_text=forced_text)
            tokens, pause = out.tokens, out.pause
        tokens = np.asarray(tokens if forced is None else forced, dtype=np.int64)
        return Streamed(tokens, np.asarray(pause, dtype=np.float32), decode_words(tokens, self.decode, self.delay))

    def _run_served(self, pcm: np.ndarray) -> Streamed:
        """The clip's steps and words as the server sends them (steps beyond the clip, which the
        server runs while the client waits for its marker, are dropped)."""
        steps = len(pcm) // FRAME_SAMPLES
        if self.runtime == "server":
            from ..serve import stream_clip

            served = stream_clip(self._url, pcm)
            pause, words = served.pause[:steps], [(w.step, w.text, w.start_time) for w in served.words]
        else:
            self._streamer.new_connection()
            _, pause, events = self._streamer.step_pcm(pcm)
            words = [(step, self.decode(list(tokens)), start) for step, kind, tokens, start in events if kind == "word"]
        hyp = [HypWord(text, step, start) for step, group, start in words if step < steps for text in group.split()]
        return Streamed(np.zeros(0, dtype=np.int64), np.asarray(pause, dtype=np.float32), hyp)
