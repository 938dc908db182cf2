"""Kyutai's real moshi-server (0.6.4, installed by bootstrap.sh) serving our export on loopback.

The `server` preset (the tiny LM over the standard Mimi, which is all the server can build) is
exported, served on 127.0.0.1, and the dataset's eval clips are streamed through it; what the
server sends must equal our production-semantics streamer (`candle_bridge.ServerStreamer`):
the same words at the same steps, pause probabilities within 1e-4 (float32). These tests fail,
not skip, when the server is missing: bootstrap.sh installs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from safetensors.torch import load_file, save_file

from pipeline.checkpoint import Checkpoint
from pipeline.config import load_config
from pipeline.data import build_dataset, read_split
from pipeline.data.audio import read_audio
from pipeline.eval import evaluate
from pipeline.evaluate.stream import Runner, with_flush
from pipeline.export import SERVER_CONFIG, export
from pipeline.presets import make_checkpoint
from pipeline.serve import (
    ServeError,
    free_port,
    run_config,
    running_server,
    server_binary,
    stream_clip,
)
from pipeline.verify import SERVER_PAUSE_TOLERANCE, production_parity


def _make_it_write_words(ckpt: Path) -> None:
    """A random LM's text logits are nearly flat, so its greedy token never closes a word and a
    word comparison would compare nothing: keep five rows of the text head (the word ends 0 and
    3 among them), scaled up, so the argmax moves with the audio and words come out."""
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    head = tensors["text_linear.weight"].float()
    keep = torch.zeros(head.shape[0], 1)
    keep[[0, 3, 10, 11, 12]] = 300.0
    tensors["text_linear.weight"] = (head * keep).to(torch.bfloat16)
    save_file(tensors, str(path))


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served_export(module_tmp):
    tmp = module_tmp
    ckpt = make_checkpoint("server", tmp / "server", seed=0)
    _make_it_write_words(ckpt)
    return export(ckpt, tmp / "export", device="cpu")


DATA = ["data.count=12", "data.eval_fraction=0.34", "data.piper_fraction=0", "data.french_fraction=0", "data.seed=3"]


@pytest.fixture(scope="module")
def dataset(module_tmp) -> Path:
    """A small espeak dataset (a few eval clips)."""
    return build_dataset(load_config(None, [f"artifacts={module_tmp / 'data'}", *DATA]))


@pytest.fixture(scope="module")
def clips(dataset) -> list[np.ndarray]:
    """Eval clips, each followed by the eval's flush silence."""
    utterances = read_split(dataset, "eval")[:3]
    assert utterances, "no eval clips"
    return [with_flush(read_audio(u.path), 2.0) for u in utterances]


@pytest.fixture(scope="module")
def server_url(served_export, module_tmp):
    with running_server(served_export, module_tmp / "serve") as url:
        yield url


def test_the_exported_config_is_complete_and_validates(served_export):
    config = tomllib.loads((served_export / SERVER_CONFIG).read_text())
    assert {"static_dir", "log_dir", "instance_name", "authorized_ids"} <= config.keys()
    assert config["modules"]["asr"]["batch_size"] == 1  # export.device = cpu
    done = subprocess.run([str(server_binary()), "validate", str(served_export / SERVER_CONFIG)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_standard_mimis_unread_codebooks_do_not_fail_the_loader_report(served_export):
    """A standard Mimi file holds 32 codebooks, as Kyutai's does; the `server` preset's LM reads 8.
    The other 24 (3 tensors each) are set aside as unread, not unexpected: the export loads cleanly."""
    from pipeline.verify import candle_report

    report = candle_report(served_export, "bf16")
    assert report["ok"], report["mimi"]["unexpected"][:3]
    assert len(report["mimi"]["unread_codebooks"]) == 3 * (32 - 8)
    assert report["mimi"]["expected_count"] + 3 * (32 - 8) == report["mimi"]["found_count"]


def test_the_batch_size_follows_the_target_device(served_export, tmp_path):
    cuda = export(Checkpoint.open(served_export), tmp_path / "cuda")
    assert tomllib.loads((cuda / SERVER_CONFIG).read_text())["modules"]["asr"]["batch_size"] == 64
    run = tomllib.loads(run_config(cuda, tmp_path / "run", batch_size=3).read_text())
    assert run["modules"]["asr"]["batch_size"] == 3 and run["log_dir"] == str((tmp_path / "run" / "log_dir").resolve())


def test_a_relative_work_folder_serves(served_export, clips, tmp_path, monkeypatch):
    """`invoke bench --what serve` passes paths under a relative artifacts folder; the server runs
    inside its work folder, so every path it is given must still resolve there."""
    monkeypatch.chdir(tmp_path)
    with running_server(served_export, Path("serve-work")) as url:
        served = stream_clip(url, clips[0])
    assert len(served.pause) >= len(clips[0]) // 1920 and (tmp_path / "serve-work" / "server.log").is_file()


def test_server_streams_equal_the_production_semantics_streamer(served_export, server_url, clips):
    ckpt = Checkpoint.open(served_export)
    words_seen = 0
    with Runner(ckpt, "server-semantics", 2.0) as ours:
        for pcm in clips:
            served = stream_clip(server_url, pcm)
            steps = len(pcm) // 1920
            assert len(served.pause) >= steps  # the clip, then silence until the marker came back
            expected = ours._run_served(pcm)
            assert np.abs(served.pause[:steps] - expected.pause).max() <= SERVER_PAUSE_TOLERANCE
            theirs = [(w.step, text) for w in served.words if w.step < steps for text in w.text.split()]
            assert theirs == [(w.step, w.text) for w in expected.words]
            words_seen += len(theirs)
    assert words_seen > 0, "no words in any clip: the comparison tested only the pause heads"


def test_a_second_connection_gets_the_same_stream(server_url, clips):
    first, second = stream_clip(server_url, clips[0]), stream_clip(server_url, clips[0])
    steps = len(clips[0]) // 1920
    np.testing.assert_array_equal(first.pause[:steps], second.pause[:steps])


def test_verify_candle_production_rows(served_export, clips):
    audio = clips[0]
    rows = production_parity(served_export, audio)
    assert [r.runtime for r in rows] == ["server semantics vs fresh state", "moshi-server vs server semantics"]
    assert rows[1].passed and rows[1].steps == len(audio) // 1920 and rows[1].max_pause_delta <= 1e-4
    # The production semantics are not a fresh stream: the pause heads differ from step 0 on.
    assert rows[0].max_pause_delta > 1e-3


def test_a_custom_mimi_export_is_refused_with_a_reason(tiny_ckpt, tmp_path):
    rows = production_parity(export(tiny_ckpt, tmp_path / "export", device="cpu"),
                             np.zeros(1920 * 10, dtype=np.float32), "auto")
    assert "custom-width Mimi" in rows[1].note and rows[1].passed
    rows = production_parity(tmp_path / "export", np.zeros(1920 * 10, dtype=np.float32), "yes")
    assert not rows[1].passed


def test_a_missing_server_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSHI_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ServeError, match="MOSHI_SERVER=.*no such file"):
        server_binary()


def _invoke_serve(model: Path | None, port: int, artifacts: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "invoke", "serve", "--port", str(port), "--set", f"artifacts={artifacts}"]
    cmd += ["--model", str(model)] if model is not None else []
    # Ctrl-C as at a terminal: a runner started in the background (`cmd &`) ignores SIGINT, and
    # its children inherit that (seen: two fresh-clone runs started so hung here).
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_invoke_serve_serves_until_stopped(clips, tmp_path):
    """The bare command (what docs/serving.md says works after bootstrap): the `server` preset,
    built and exported on first use."""
    port = free_port()
    proc = _invoke_serve(None, port, tmp_path)
    try:
        url, seen = f"ws://127.0.0.1:{port}/api/asr-streaming", []
        for line in proc.stdout:  # the preset is built and exported first, then the server starts
            seen.append(line)
            if url in line:
                break
        assert url in seen[-1], "".join(seen[-10:])
        # Keep reading what it prints, so a full pipe can never hold up its exit.
        threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True).start()
        served = stream_clip(f"ws://127.0.0.1:{port}/api/asr-streaming", clips[0])
        assert len(served.pause) >= len(clips[0]) // 1920
    finally:
        proc.send_signal(signal.SIGINT)
        # Ctrl-C: SIGTERM to the server, SIGKILL after 10 s at most, then the exit.
        assert proc.wait(timeout=60) == 0, "".join(seen[-10:])


def test_invoke_serve_refuses_a_custom_mimi_in_one_line(tiny_ckpt, tmp_path):
    proc = _invoke_serve(export(tiny_ckpt, tmp_path / "export", device="cpu"), free_port(), tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1].startswith("error: ") and "invoke serve --model server" in out


def test_eval_reads_the_real_server(served_export, dataset, tmp_path):
    """`eval.runtime=server`: the report's pause traces are the server's, the same as the
    in-process production semantics (the base, a checkpoint, is exported on the fly)."""
    traces = {}
    for runtime in ("server", "server-semantics"):
        cfg = load_config(None, [f"artifacts={tmp_path}", f"eval.data={dataset}", "eval.limit=2",
                                 f"eval.runtime={runtime}", f"eval.out=eval-{runtime}"])
        folder = evaluate(cfg, base=make_checkpoint("server", tmp_path / "base", seed=1), candidate=served_export)
        assert json.loads((folder / "metrics.json").read_text())["meta"]["runtime"] == runtime
        traces[runtime] = np.load(folder / "traces.npz")
    for key in traces["server"].files:
        if key.endswith("_pause"):
            np.testing.assert_allclose(traces["server"][key], traces["server-semantics"][key], atol=1e-4)


def _fake_server(refusals: int, drop: bool):
    """A stand-in for moshi-server's protocol on 127.0.0.1: the first `refusals` connections are
    refused (closed at once if `drop`, else answered Error "no free channels", as moshi-server
    0.6.4 does either way); later ones get one Step per Audio frame and the Marker back."""
    import asyncio

    import msgpack
    import websockets

    seen, ready, loop_box = [], threading.Event(), {}

    async def handler(ws):
        seen.append(len(seen))
        if len(seen) <= refusals:
            if not drop:
                await ws.send(msgpack.packb({"type": "Error", "message": "no free channels"}))
            await ws.close()
            return
        async for raw in ws:
            msg = msgpack.unpackb(raw)
            if msg["type"] == "Audio":
                await ws.send(msgpack.packb({"type": "Step", "prs": [0.25, 0.5, 0.75, 1.0], "step_idx": 0}))
            elif msg["type"] == "Marker":
                await ws.send(msgpack.packb({"type": "Marker", "id": msg["id"]}))

    async def main():
        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            loop_box["port"] = server.sockets[0].getsockname()[1]
            loop_box["stop"] = asyncio.get_running_loop().create_future()
            ready.set()
            await loop_box["stop"]

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    ready.wait(10)
    return f"ws://127.0.0.1:{loop_box['port']}/api/asr-streaming", seen


@pytest.mark.parametrize("drop", [False, True], ids=["error-message", "dropped"])
def test_a_refused_connection_is_retried_until_a_slot_frees(drop):
    url, seen = _fake_server(refusals=2, drop=drop)
    served = stream_clip(url, np.zeros(3 * 1920, dtype=np.float32), max_tail_frames=2)
    assert len(seen) == 3 and len(served.pause) >= 3 and served.pause[0].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_a_server_that_refuses_every_connection_is_named():
    url, _ = _fake_server(refusals=10**6, drop=True)
    with pytest.raises(ServeError, match="no free channel for 1 s"):
        stream_clip(url, np.zeros(1920, dtype=np.float32), wait_for_slot_s=1.0)
