"""serve: Kyutai's own moshi-server (crate 0.6.4) on 127.0.0.1 with an exported model, and a
client that speaks its protocol.

`bootstrap.sh` installs the server binary under `$STT_NUMERALS_CACHE` (default
`~/.cache/stt-numerals/`; built once with
`cargo install moshi-server --version 0.6.4 --locked`); `MOSHI_SERVER` points at another one.

Protocol (`/api/asr-streaming`, a websocket of MessagePack maps tagged by `type`), as the
server's `batched_asr.rs` implements it:
- the client authenticates with the header `kyutai-api-key`, then sends `Audio {pcm}` messages
  (float32 at 24 kHz; one 1920-sample frame per message here, so one message is one step);
- the server answers `Step {step_idx, prs}` for every step (prs: one pause probability per
  extra head), `Word {text, start_time}` when a word is closed, `EndWord {stop_time}`;
- it steps only while audio arrives: after the clip the client sends `Marker {id}` and keeps
  sending silence until the marker comes back (the server returns it once the text delay has
  passed), then closes;
- `Step.step_idx` counts over the whole server, not per connection: steps are counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .constants import FRAME_SAMPLES
from .errors import StageError

SERVER_VERSION = "0.6.4"
CACHE = Path(os.environ.get("STT_NUMERALS_CACHE", Path.home() / ".cache" / "stt-numerals"))
CACHED_SERVER = CACHE / f"moshi-server-{SERVER_VERSION}" / "bin" / "moshi-server"  # where bootstrap.sh installs it
ASR_PATH = "/api/asr-streaming"
API_KEY = "public_token"  # the placeholder key the exported config authorizes
READY_LINES = ("starting asr loop", "listening on")  # model warmed up; socket bound


class ServeError(StageError):
    """The server cannot be found, started or talked to."""


def server_binary() -> Path:
    """The moshi-server executable: $MOSHI_SERVER, the one bootstrap.sh installs, or PATH's."""
    if env := os.environ.get("MOSHI_SERVER"):
        if not Path(env).is_file():
            raise ServeError(f"MOSHI_SERVER={env}: no such file; unset it or point it at a moshi-server binary")
        return Path(env)
    if CACHED_SERVER.is_file():
        return CACHED_SERVER
    if found := shutil.which("moshi-server"):
        return Path(found)
    raise ServeError(f"moshi-server not found ({CACHED_SERVER}); run `bash bootstrap.sh` (it installs Kyutai's "
                     f"server {SERVER_VERSION}) or set MOSHI_SERVER")


def unservable(export: Path) -> str | None:
    """Why moshi-server cannot load the model in `export`, or None: it builds only the standard
    Mimi (`Config::v0_1`), and a config.json naming a mimi_config describes another one."""
    if "mimi_config_name" in json.loads((Path(export) / "config.json").read_text()):
        return ("custom-width Mimi (config.json names a mimi_config, e.g. the `tiny` preset's): "
                "moshi-server builds only the standard Mimi")
    return None


def run_config(export: Path, workdir: Path, batch_size: int | None = None) -> Path:
    """A copy of the export's `moshi-server.toml` whose deployment keys point into `workdir`
    (static_dir, log_dir), optionally with another batch size; returns its path."""
    from .export import SERVER_CONFIG

    source = Path(export) / SERVER_CONFIG
    if not source.is_file():
        raise ServeError(f"{source}: not found; `invoke export` writes it (is {export} an exported folder?)")
    if (reason := unservable(export)) is not None:
        raise ServeError(f"{export}: {reason}; serve a model with the standard Mimi, e.g. `invoke serve --model server`")
    text = source.read_text()
    workdir.mkdir(parents=True, exist_ok=True)
    for key in ("static_dir", "log_dir"):
        (workdir / key).mkdir(exist_ok=True)
        text = re.sub(rf'^{key} = "[^"]*"', f'{key} = "{(workdir / key).resolve()}"', text, count=1, flags=re.M)
    if batch_size is not None:
        text = re.sub(r"^batch_size = \d+", f"batch_size = {batch_size}", text, count=1, flags=re.M)
    path = workdir / "server.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(export: Path, workdir: Path, port: int | None = None, batch_size: int | None = 1,
                   cpu: bool = True, timeout_s: float = 300.0) -> Iterator[str]:
    """moshi-server serving `export` on 127.0.0.1 until the block ends; yields its websocket URL.
    Waits until the model is loaded and warmed up; the server's log is `workdir/server.log`."""
    config = run_config(export, workdir, batch_size).resolve()  # absolute: the server runs in workdir
    port = port or free_port()
    cmd = [str(server_binary().resolve()), "worker", "--config", str(config), "--addr", "127.0.0.1",
           "--port", str(port)]
    if cpu:
        cmd.append("--cpu")
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + timeout_s
        while not all(line in log_path.read_text(errors="replace") for line in READY_LINES):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise ServeError(f"moshi-server exited ({proc.returncode}) before serving {export}; "
                                 f"see {log_path}: {' | '.join(tail)}")
            if time.monotonic() > deadline:
                raise ServeError(f"moshi-server did not become ready within {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}{ASR_PATH}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ServerWord:
    text: str
    start_time: float
    step: int  # index of the Step after which the Word arrived (the step that closed it)
    stop_time: float | None = None  # from the EndWord that followed, if any


@dataclass
class ServerStream:
    """What the server sent for one clip, steps counted from this connection's first."""

    pause: np.ndarray  # [steps, heads] Step.prs
    words: list[ServerWord] = field(default_factory=list)


class _NoFreeChannel(Exception):
    """The server's slots are all taken (a closed connection frees its slot a little later).
    moshi-server 0.6.4 answers Error "no free channels", or, when it drops the socket first, just
    closes it: a connection closed before its first Step is taken for the same."""


async def _stream(url: str, pcm: np.ndarray, max_tail_frames: int, api_key: str) -> ServerStream:
    import msgpack
    import websockets

    prs: list[list[float]] = []
    words: list[ServerWord] = []
    async with websockets.connect(url, additional_headers={"kyutai-api-key": api_key}, max_size=None) as ws:

        async def receive() -> None:
            async for raw in ws:
                msg = msgpack.unpackb(raw)
                kind = msg.get("type")
                if kind == "Step":
                    prs.append(list(msg["prs"]))
                elif kind == "Word":
                    words.append(ServerWord(msg["text"], float(msg["start_time"]), len(prs) - 1))
                elif kind == "EndWord" and words:
                    words[-1].stop_time = float(msg["stop_time"])
                elif kind == "Marker":
                    return
                elif kind == "Error" and msg.get("message") == "no free channels":
                    raise _NoFreeChannel()
                elif kind == "Error":
                    raise ServeError(f"{url}: the server answered Error: {msg.get('message')}")
            if not prs:
                raise _NoFreeChannel()
            raise ServeError(f"{url}: the server closed the connection before returning the marker")

        async def send() -> None:
            frames = [{"type": "Audio", "pcm": frame.tolist()} for frame in pcm.reshape(-1, FRAME_SAMPLES)]
            silence = {"type": "Audio", "pcm": [0.0] * FRAME_SAMPLES}
            for msg in frames + [{"type": "Marker", "id": 1}]:
                await ws.send(msgpack.packb(msg))
            # Silence only as fast as the server steps (a few frames ahead), so it stops soon
            # after the marker returns.
            for sent in range(len(frames), len(frames) + max_tail_frames):
                while sent - len(prs) > 4:
                    await asyncio.sleep(0.002)
                await ws.send(msgpack.packb(silence))

        receiver, sender = asyncio.create_task(receive()), asyncio.create_task(send())
        await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED, timeout=600)
        if not receiver.done():  # all the silence is sent: give the server time to step through it
            await asyncio.wait({receiver}, timeout=60)
        sender.cancel()
        if not receiver.done():
            receiver.cancel()
            raise ServeError(f"{url}: no Marker back after {max_tail_frames} frames of silence")
        try:
            receiver.result()  # raises what the server answered
        except (websockets.ConnectionClosed, OSError):
            if prs:
                raise
            raise _NoFreeChannel() from None
    return ServerStream(np.asarray(prs, dtype=np.float32).reshape(len(prs), -1), words)


def stream_clip(url: str, pcm: np.ndarray, max_tail_frames: int = 400, api_key: str = API_KEY,
                wait_for_slot_s: float = 10.0) -> ServerStream:
    """Streams `pcm` (float32 mono 24 kHz, a whole number of 1920-sample frames) through the
    server at `url` on a new connection; returns its Step probabilities and words. The server
    processes the clip and then some frames of silence (until the marker returns). While all
    slots are taken ("no free channels", or the connection closed before its first step) it
    retries for `wait_for_slot_s`."""
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1 or len(pcm) % FRAME_SAMPLES:
        raise ServeError(f"pcm must be 1-D with a multiple of {FRAME_SAMPLES} samples, got shape {pcm.shape}")
    deadline = time.monotonic() + wait_for_slot_s
    while True:
        try:
            return asyncio.run(_stream(url, pcm, max_tail_frames, api_key))
        except _NoFreeChannel:
            if time.monotonic() > deadline:
                raise ServeError(f"{url}: no free channel for {wait_for_slot_s:.0f} s: each connection was refused or "
                                 "closed before its first step (every slot in use: raise serve.batch_size; or "
                                 "the server is failing: see its log)") from None
            time.sleep(0.1)


def serve(export: Path, workdir: Path, port: int, batch_size: int | None, cpu: bool) -> None:
    """`invoke serve`: the server in the foreground until Ctrl-C."""
    with running_server(export, workdir, port, batch_size, cpu) as url:
        print(f"moshi-server {SERVER_VERSION} serving {export} at {url} (api key {API_KEY!r}); "
              f"log: {workdir / 'server.log'}; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
