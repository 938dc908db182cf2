"""Served (moshi-server's semantics) against fresh streams, with whichever `candle_bridge` is on
the path: run by scripts/upstream/slot_reset_patch.sh once with the module built against moshi
0.6.4 as published and once against the patched crate.

    python scripts/upstream/served_vs_fresh.py MODEL [--clips DIR|FILE ...] [--limit N] [--out FILE]

MODEL: a checkpoint directory or a preset name (built under artifacts/checkpoints if missing).
Streams verify-candle's test audio (212 steps, `pipeline.verify.test_audio`, no flush, as its
production row) and each clip (padded to whole frames and followed by eval.flush_seconds of
silence, as `invoke eval` streams it). --clips takes a dataset folder from `invoke data` (its
`<split>.jsonl`, --split eval by default), a folder of audio with <name>.txt transcripts, or audio
files. Each stream goes through a fresh `Streamer` (a new `moshi::asr::State`) and through one
`ServerStreamer` connection (warm-up at start, then `reset_batch_idx` per connection, the
previous connection's clip before it), on the CPU in float32, as the tests compare them.

Per stream: max |delta pause| over every step and head, whether the LM was given the same text
token at every step (served `text_input[s+1]` = fresh greedy token `s`), whether the words
`invoke eval` decodes from the two text streams are the same (text and step), and, for clips with timings or speech bounds, whether head 2's threshold rule (> 0.5,
`pipeline.evaluate.metrics`) is on at the first step after speech starts, fresh and served.
Writes a JSON summary (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(REPO))  # the project's `pipeline`, after the candle_bridge chosen by PYTHONPATH

from pipeline.checkpoint import Checkpoint  # noqa: E402
from pipeline.evaluate.metrics import Reference, Rules, decode_words, fired_steps, vad_metrics  # noqa: E402
from pipeline.evaluate.sources import AUDIO_SUFFIXES, energy_bounds, load_references  # noqa: E402
from pipeline.evaluate.stream import with_flush  # noqa: E402

FLUSH_SECONDS = 2.0  # eval.flush_seconds' default
PAUSE_TOLERANCE = 1e-6  # what "equal" means here: float32 batched vs unbatched kernels


def open_model(source: str) -> Checkpoint:
    if Path(source).is_dir():
        return Checkpoint.open(source)
    from pipeline.models import resolve_model

    return resolve_model(source, REPO / "artifacts")


def clip_references(sources: list[str], split: str, limit: int) -> list[Reference]:
    refs: list[Reference] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            refs += load_references(path, split)
        elif path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            bounds = energy_bounds(path)  # the speech's start, as `invoke eval` finds it in untranscribed audio
            refs.append(Reference(path.stem, [], speech=bounds, timing="energy" if bounds else "none", path=str(path)))
        else:
            raise SystemExit(f"error: {source}: not a dataset folder, a folder of transcribed audio or an audio file")
    return refs[:limit] if limit else refs


def head2_on_at_start(pause: np.ndarray, ref: Reference | None) -> bool | None:
    if ref is None or ref.turn is None:
        return None
    fired, _ = fired_steps(pause, Rules())["threshold"]
    return vad_metrics(fired, ref.turn)["on_at_start"]


def compare(ckpt: Checkpoint, fresh, server, pcm: np.ndarray, ref: Reference | None, url: str | None = None) -> dict:
    fresh.reset()
    tokens, _, pause = fresh.step_pcm(pcm)
    tokens, pause = np.asarray(tokens), np.asarray(pause)
    server.new_connection()
    text_in, served_pause, events = server.step_pcm(pcm)
    text_in, served_pause = np.asarray(text_in), np.asarray(served_pause)
    if served_pause.shape != pause.shape:
        raise SystemExit(f"error: {len(served_pause)} served steps for {len(pause)} fresh ones")
    # The words `invoke eval` decodes from each side's greedy text stream. The served stream's
    # token of step s is its text_input at s + 1, so both are compared up to the last step but one.
    def words(stream: np.ndarray) -> list[tuple[str, int]]:
        return [(w.text, w.step) for w in decode_words(stream, ckpt.tokenizer.decode, ckpt.text_delay)]

    fresh_words, served_words = words(tokens[:-1]), words(text_in[1:])
    delta = np.abs(served_pause - pause)
    real = None
    if url is not None:  # the real moshi-server: one connection, the same pcm
        from pipeline.serve import stream_clip

        got = stream_clip(url, pcm)
        steps = len(pause)
        real_pause = got.pause[:steps]
        ours = [(step, ckpt.tokenizer.decode(list(toks)), round(start, 6)) for step, kind, toks, start in events
                if kind == "word"]
        theirs = [(w.step, w.text, round(w.start_time, 6)) for w in got.words if w.step < steps]
        real = {"steps": len(real_pause),
                "max_pause_delta_vs_fresh": float(np.abs(real_pause - pause).max()),
                "max_pause_delta_vs_server_streamer": float(np.abs(real_pause - served_pause).max()),
                "words_equal_server_streamer": ours == theirs, "words": len(theirs),
                "head2_on_at_start": head2_on_at_start(real_pause, ref)}
    return {
        "id": ref.id if ref else "verify-candle test audio", "steps": len(pause),
        "max_pause_delta": float(delta.max()), "mean_pause_delta": float(delta.mean()),
        # Where the streams part: step 0-1 is the first frame a slot reset changes; a later step is
        # another cause (e.g. a Mimi code that batched and unbatched float rounding break differently).
        "first_step_over_tolerance": next((int(i) for i in np.nonzero(delta.max(axis=1) > PAUSE_TOLERANCE)[0]), None),
        "max_head2_delta": float(delta[:, 2].max()) if pause.shape[1] > 2 else None,
        "tokens_equal": bool((text_in[1:] == tokens[:-1]).all()),
        "token_agreement": float((text_in[1:] == tokens[:-1]).mean()),
        "words_equal": fresh_words == served_words, "words": len(fresh_words),
        "server_word_messages": sum(kind == "word" for _, kind, _, _ in events),
        "head2_on_at_start": {"fresh": head2_on_at_start(pause, ref), "served": head2_on_at_start(served_pause, ref)},
        "moshi_server": real,
    }


@contextlib.contextmanager
def real_server(ckpt: Checkpoint, binary: Path):
    """moshi-server `binary` serving an export of `ckpt` (batch 1, CPU) as `invoke eval` runs it."""
    from pipeline.export import export
    from pipeline.serve import running_server, unservable

    if (reason := unservable(Path(ckpt))) is not None:
        raise SystemExit(f"error: --server-bin: {ckpt} cannot be served: {reason}")
    os.environ["MOSHI_SERVER"] = str(binary.resolve())
    with tempfile.TemporaryDirectory(prefix="stt-numerals-upstream-") as work:
        folder = export(ckpt, Path(work) / "export", batch_size=1, device="cpu")
        (Path(work) / "serve").mkdir()
        with running_server(folder, Path(work) / "serve", cpu=True) as url:
            yield url


def summarize(rows: list[dict]) -> dict:
    timed = [r for r in rows if r["head2_on_at_start"]["fresh"] is not None]
    real = [r["moshi_server"] for r in rows if r["moshi_server"] is not None]
    server = {} if not real else {
        "moshi_server_max_pause_delta_vs_fresh": max(r["max_pause_delta_vs_fresh"] for r in real),
        "moshi_server_max_pause_delta_vs_server_streamer": max(r["max_pause_delta_vs_server_streamer"] for r in real),
        "moshi_server_streams_words_equal_server_streamer": sum(r["words_equal_server_streamer"] for r in real),
        "moshi_server_head2_on_at_start": sum(bool(r["head2_on_at_start"]) for r in real),
    }
    return {
        "streams": len(rows), "max_pause_delta": max(r["max_pause_delta"] for r in rows),
        "streams_within_tolerance": sum(r["max_pause_delta"] <= PAUSE_TOLERANCE for r in rows),
        "streams_apart_from_step_0_or_1": sum(r["first_step_over_tolerance"] in (0, 1) for r in rows),
        "streams_apart_later": {r["id"]: r["first_step_over_tolerance"] for r in rows
                                if (r["first_step_over_tolerance"] or 0) > 1},
        "streams_tokens_equal": sum(r["tokens_equal"] for r in rows),
        "streams_words_equal": sum(r["words_equal"] for r in rows),
        "timed_streams": len(timed),
        "head2_on_at_start_fresh": sum(r["head2_on_at_start"]["fresh"] for r in timed),
        "head2_on_at_start_served": sum(r["head2_on_at_start"]["served"] for r in timed),
        "served_equals_fresh": all(r["max_pause_delta"] <= PAUSE_TOLERANCE and r["tokens_equal"] and r["words_equal"]
                                   for r in rows),
        **server,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--clips", nargs="*", default=[])
    parser.add_argument("--split", default="eval")
    parser.add_argument("--limit", type=int, default=0, help="first N clips only (0: all)")
    parser.add_argument("--label", default="", help="what this run is (e.g. 'moshi 0.6.4 patched'), for the summary")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dump-pcm", type=Path, help="only write each stream's audio to DIR/NNN.f32 (raw "
                        "little-endian f32, in the order streamed: the test signal first) for the Rust repro, and exit")
    parser.add_argument("--server-bin", type=Path,
                        help="also stream through this moshi-server binary (MODEL must be servable: the standard Mimi)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import candle_bridge

    from pipeline.data.audio import read_audio
    from pipeline.verify import test_audio

    ckpt = open_model(args.model)
    refs = clip_references(args.clips, args.split, args.limit)
    if args.dump_pcm:
        args.dump_pcm.mkdir(parents=True, exist_ok=True)
        for old in args.dump_pcm.glob("*.f32"):
            old.unlink()
        streams = [test_audio()] + [with_flush(read_audio(Path(r.path)), FLUSH_SECONDS) for r in refs]
        for i, pcm in enumerate(streams):
            np.asarray(pcm, dtype="<f4").tofile(args.dump_pcm / f"{i:03d}.f32")
        (args.dump_pcm / "index.json").write_text(json.dumps(["verify-candle test audio"] + [r.id for r in refs]))
        return 0
    fresh = candle_bridge.Streamer(str(ckpt), "f32", "cpu")
    server = candle_bridge.ServerStreamer(str(ckpt), ckpt.delay_frames, "cpu")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(real_server(ckpt, args.server_bin)) if args.server_bin else None
        rows = [compare(ckpt, fresh, server, test_audio().astype(np.float32), None, url)]
        for i, ref in enumerate(refs):
            pcm = with_flush(read_audio(Path(ref.path)), FLUSH_SECONDS)
            rows.append(compare(ckpt, fresh, server, pcm, ref, url))
            print(f"\r{i + 1}/{len(refs)} clips", end="", file=sys.stderr, flush=True)
    if refs:
        print(file=sys.stderr)
    result = {"label": args.label, "candle_bridge": candle_bridge.__file__, "model": str(ckpt),
              "clips": args.clips, "split": args.split, "limit": args.limit, "flush_seconds": FLUSH_SECONDS,
              "pause_tolerance": PAUSE_TOLERANCE, "summary": summarize(rows), "streams": rows}
    print(f"{args.label or 'candle_bridge'} ({candle_bridge.__file__}), {ckpt}")
    print(f"{'stream':<40} {'steps':>5} {'max|dpause|':>11} {'from':>5} {'tokens':>6} {'words':>6}  "
          "head 2 on at start (fresh/served)")
    for r in rows:
        on = r["head2_on_at_start"]
        at_start = "-" if on["fresh"] is None else f"{on['fresh']}/{on['served']}"
        real = r["moshi_server"]
        real = "" if real is None else (f"  moshi-server: max|dpause| {real['max_pause_delta_vs_fresh']:.2e} vs fresh, "
                                        f"{real['max_pause_delta_vs_server_streamer']:.2e} vs ServerStreamer, words "
                                        f"{'equal' if real['words_equal_server_streamer'] else 'differ'}")
        apart = "-" if r["first_step_over_tolerance"] is None else r["first_step_over_tolerance"]
        print(f"{r['id'][-40:]:<40} {r['steps']:>5} {r['max_pause_delta']:>11.2e} {apart:>5} "
              f"{'equal' if r['tokens_equal'] else 'differ':>6} {'equal' if r['words_equal'] else 'differ':>6}  "
              f"{at_start}{real}")
    print(json.dumps(result["summary"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
