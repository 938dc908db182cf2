"""bench --what serve: how many real-time callers one GPU serves with the export (issue #19).

Production: Kyutai's moshi-server (a `--features cuda` build: bf16 LM, f32 Mimi, `BatchedAsr`
with `batch_size` = N slots) serves the export on 127.0.0.1. A load generator on the same
machine opens N websocket streams; each sends one 80 ms frame of audio every 80 ms, paced by
the wall clock (real time), for `seconds`. The server's own log gives each model step's time
(`{ms}ms step_idx=.. with_data=..`: Mimi encode + LM step of the whole batch); each client
records when the `Step` answering each of its frames arrives.

Peer: PyTorch moshi's batched streaming on the same weights and card: streaming `Mimi.encode`
then `LMGen.step_with_extra_heads`, bf16 LM, batch N, with moshi's own CUDA graphs (on by default
on CUDA), each step synchronized and timed.

Several server processes (`processes` > 1, `serve.bench_processes`): N streams are served by that
many moshi-server processes on the one GPU, N / processes slots each, the GPU time-sliced between
them (no MPS daemon is started). The row's step times pool every process's steps.

GPU busy: while the server runs, `nvidia-smi` samples `utilization.gpu` (NVML: the share of the
last sample period in which at least one kernel ran, not how many SMs it used) every 250 ms; the
row gives the median and minimum of the samples taken over the timed window. Well below 100 %
means the step waits on the host (Candle's CPU side), not on the GPU.

Convention, written once: both are timed over the same stream positions, steps
`[TIMED_FROM, TIMED_TO)` of each stream (past the 750-frame context, so attention runs at its
steady-state length), and a configuration is real time when the p99 of those step times is
below one frame (80 ms). Percentiles are numpy's default (linear interpolation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .constants import FRAME_RATE, FRAME_SAMPLES
from .serve import ServeError

FRAME_S = 1.0 / FRAME_RATE
TIMED_FROM, TIMED_TO = 700, 800  # stream steps timed, by default (see the module doc)
STREAMS_PER_PROCESS = 128  # load-generator connections per client process

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z\s.*?\s([\d.]+)ms step_idx=(\d+) with_data=(\d+)")


@dataclass
class ServerStep:
    at: float  # wall clock (seconds since the epoch) when the server logged the step
    ms: float  # the step's time as the server measured it
    with_data: int  # slots that had a frame at this step


def server_steps(log_text: str) -> list[ServerStep]:
    """The model steps in a moshi-server log (`batched_asr.rs`: one INFO line per step)."""
    steps = []
    for line in log_text.splitlines():
        if m := _STEP_LINE.match(_ANSI.sub("", line)):
            at = datetime.fromisoformat(m[1]).replace(tzinfo=timezone.utc).timestamp()
            steps.append(ServerStep(at, float(m[2]), int(m[4])))
    return steps


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict:
    v = np.asarray(values, dtype=np.float64) * scale
    if not v.size:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2),
            "max": round(float(v.max()), 2)}


# --- the load generator -------------------------------------------------------------------------

async def _streams(url: str, api_key: str, frames: list[bytes], count: int, start_at: float,
                   n_frames: int) -> dict:
    """`count` streams in this process; returns per stream the send and Step arrival times."""
    import msgpack
    import websockets

    conns = [await websockets.connect(url, additional_headers={"kyutai-api-key": api_key}, max_size=None,
                                      compression=None) for _ in range(count)]
    sent: list[list[float]] = [[] for _ in conns]
    answered: list[list[float]] = [[] for _ in conns]
    errors: list[str] = []

    async def receive(i: int, ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = msgpack.unpackb(raw)
                if msg.get("type") == "Step":
                    answered[i].append(time.time())
                elif msg.get("type") == "Error":
                    errors.append(str(msg.get("message")))

    receivers = [asyncio.create_task(receive(i, ws)) for i, ws in enumerate(conns)]
    for k in range(n_frames):
        await asyncio.sleep(max(0.0, start_at + k * FRAME_S - time.time()))
        for i, ws in enumerate(conns):
            sent[i].append(time.time())
            await ws.send(frames[k % len(frames)])
    deadline = time.time() + 10.0  # the server answers what is still buffered
    while time.time() < deadline and any(len(a) < n_frames for a in answered):
        await asyncio.sleep(0.05)
    for ws in conns:
        await ws.close()
    for task in receivers:
        task.cancel()
    return {"sent": sent, "answered": answered, "errors": errors}


def _client_process(url: str, api_key: str, frames: list[bytes], count: int, start_at: float, n_frames: int) -> dict:
    return asyncio.run(_streams(url, api_key, frames, count, start_at, n_frames))


def load_test(urls: str | Sequence[str], streams: int, n_frames: int, audio: np.ndarray, api_key: str,
              per_process: int = STREAMS_PER_PROCESS, connect_s: float = 10.0) -> list[dict]:
    """`streams` concurrent real-time streams of `n_frames` frames of `audio` (looped), shared
    evenly by the servers at `urls` and spread over client processes; all start sending at the
    same wall-clock instant, `connect_s` from now. Returns one {"sent", "answered", "errors"} per
    client process."""
    import msgpack

    urls = [urls] if isinstance(urls, str) else list(urls)
    if streams % len(urls):
        raise ServeError(f"{streams} streams do not split evenly over {len(urls)} servers")
    frames = [msgpack.packb({"type": "Audio", "pcm": f.tolist()}, use_single_float=True)
              for f in np.asarray(audio, dtype=np.float32).reshape(-1, FRAME_SAMPLES)]
    share = streams // len(urls)
    clients = [(url, min(per_process, share - i)) for url in urls for i in range(0, share, per_process)]
    start_at = time.time() + connect_s
    with ProcessPoolExecutor(len(clients), mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(_client_process, url, api_key, frames, size, start_at, n_frames) for url, size in clients]
        return [job.result() for job in jobs]


def timed_window(results: list[dict], n_frames: int, timed: tuple[int, int]) -> tuple[float, float]:
    """Wall-clock span of stream steps `timed`: from the first send of step `timed[0]` to one frame
    after the last send of step `timed[1] - 1`."""
    sent = [s for r in results for s in r["sent"]]
    lo, hi = timed
    return min(s[lo] for s in sent), max(s[min(hi, n_frames) - 1] for s in sent) + FRAME_S


def summarize_load(results: list[dict], steps: list[ServerStep], n_frames: int, timed: tuple[int, int]) -> dict:
    """Server step times and client lags over stream steps `timed` (see the module doc)."""
    sent = [s for r in results for s in r["sent"]]
    answered = [a for r in results for a in r["answered"]]
    lo, hi = timed
    lags = [a[k] - s[k] for s, a in zip(sent, answered) for k in range(lo, min(hi, len(a), len(s)))]
    window = timed_window(results, n_frames, timed)
    in_window = [st.ms for st in steps if window[0] <= st.at <= window[1]]
    complete = sum(len(a) >= n_frames for a in answered)
    return {"steps_timed": len(in_window), **{f"step_ms_{k}": v for k, v in percentiles(in_window).items()},
            **{f"lag_ms_{k}": v for k, v in percentiles(lags, 1000).items()},
            "streams_complete": complete, "errors": sorted({e for r in results for e in r["errors"]})}


def busy_in_window(samples: Sequence[tuple[float, float]], window: tuple[float, float]) -> dict:
    """Median and minimum of the (time, utilization %) samples inside `window`, both ends included."""
    inside = [u for at, u in samples if window[0] <= at <= window[1]]
    if not inside:
        return {"gpu_busy_pct_p50": None, "gpu_busy_pct_min": None, "gpu_busy_samples": 0}
    return {"gpu_busy_pct_p50": round(float(np.median(inside)), 1), "gpu_busy_pct_min": min(inside),
            "gpu_busy_samples": len(inside)}


@contextlib.contextmanager
def gpu_busy_sampler(period_ms: int = 250):
    """Samples GPU 0's `utilization.gpu` every `period_ms` while the block runs; yields the list of
    (wall-clock time, %) it fills. Without nvidia-smi the list stays empty."""
    samples: list[tuple[float, float]] = []
    try:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0",
                 f"--loop-ms={period_ms}"]
        proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        yield samples
        return

    def read() -> None:
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                samples.append((time.time(), float(line.strip())))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield samples
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=5)


def bench_server(export: Path, workdir: Path, streams: int, seconds: float | None = None, cpu: bool = False,
                 timed: tuple[int, int] = (TIMED_FROM, TIMED_TO), audio: np.ndarray | None = None,
                 processes: int = 1) -> dict:
    """One row: moshi-server serving `export` to `streams` real-time streams, from `processes`
    server processes of `streams / processes` slots each (their logs: workdir[/pK]/server.log)."""
    from .serve import API_KEY, running_server, server_binary
    from .verify import test_audio

    n_frames = int(round(seconds * FRAME_RATE)) if seconds else timed[1] + 5
    if n_frames < timed[1]:
        raise ServeError(f"a {n_frames}-frame stream has no steps {timed[0]}..{timed[1]} to time; stream longer")
    if processes < 1 or streams % processes:
        raise ServeError(f"{streams} streams do not split evenly over {processes} server processes; "
                         f"choose serve.bench_streams that are multiples of serve.bench_processes")
    audio = test_audio(30.0) if audio is None else audio
    workdirs = [workdir] if processes == 1 else [workdir / f"p{k}" for k in range(processes)]
    with contextlib.ExitStack() as servers:
        urls = [servers.enter_context(running_server(export, w, batch_size=streams // processes, cpu=cpu))
                for w in workdirs]
        with gpu_busy_sampler() if not cpu else contextlib.nullcontext([]) as busy:
            results = load_test(urls, streams, n_frames, audio, API_KEY)
        memory = None if cpu else _gpu_memory_mib()  # after the load, the servers still up: their peak
    steps = [st for w in workdirs for st in server_steps((w / "server.log").read_text(errors="replace"))]
    row = {"what": "serve_moshi_server", "streams": streams, "processes": processes,
           "device": "cpu" if cpu else "cuda",
           "server": str(server_binary()),  # a CPU build given a GPU runs on the CPU: say which binary ran
           "stream_s": round(n_frames * FRAME_S, 2), "timed_steps": list(timed),
           **summarize_load(results, steps, n_frames, timed),
           **(busy_in_window(busy, timed_window(results, n_frames, timed)) if not cpu else {}),
           "gpu_mib": memory}
    row["realtime"] = row["step_ms_p99"] is not None and row["step_ms_p99"] < 1000 * FRAME_S \
        and row["streams_complete"] == streams and not row["errors"]
    return row


def _gpu_memory_mib() -> int | None:
    """Memory in use on GPU 0 (the server is another process: torch cannot see it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=10)
        return int(out.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


# --- the PyTorch peer ---------------------------------------------------------------------------

def bench_peer(export: Path, streams: int, timed: tuple[int, int] = (TIMED_FROM, TIMED_TO)) -> dict:
    """One row: PyTorch moshi's batched streaming (see the module doc) at batch `streams`."""
    import torch
    from moshi.models import LMGen

    from .checkpoint import Checkpoint

    ckpt = Checkpoint.open(export)
    lm = ckpt.load_lm("cuda", dtype=torch.bfloat16).eval()
    mimi = ckpt.load_mimi("cuda").eval()
    gen = LMGen(lm, temp=0.0, temp_text=0.0)
    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad(), gen.streaming(streams), mimi.streaming(streams):
        pcm = torch.randn(streams, 1, FRAME_SAMPLES, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        for step in range(timed[1]):
            torch.cuda.synchronize()
            start = time.perf_counter()
            gen.step_with_extra_heads(mimi.encode(0.1 * pcm))
            torch.cuda.synchronize()
            if step >= timed[0]:
                times.append(time.perf_counter() - start)
    row = {"what": "serve_torch_peer", "streams": streams, "timed_steps": list(timed),
           **{f"step_ms_{k}": v for k, v in percentiles(times, 1000).items()},
           "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    row["realtime"] = row["step_ms_p99"] < 1000 * FRAME_S
    del gen, lm, mimi
    torch.cuda.empty_cache()
    return row


def bench_step_split(export: Path, streams: int, timed: tuple[int, int] = (TIMED_FROM, TIMED_TO),
                     device: str = "cuda") -> dict:
    """One row: the server's batched step in-process (Kyutai's Rust crate, as `BatchedAsr` builds
    it: candle_bridge.time_server_steps), whole and its Mimi encode alone; the LM's share is the
    difference, step by step. It says what bounds the server's step, without the server."""
    import candle_bridge

    step_ms, mimi_ms = candle_bridge.time_server_steps(str(export), streams, timed[0], timed[1], device)
    lm_ms = np.asarray(step_ms) - np.asarray(mimi_ms)
    return {"what": "serve_candle_step_split", "streams": streams, "device": device, "timed_steps": list(timed),
            **{f"step_ms_{k}": v for k, v in percentiles(step_ms).items()},
            **{f"mimi_ms_{k}": v for k, v in percentiles(mimi_ms).items()},
            **{f"lm_ms_{k}": v for k, v in percentiles(lm_ms).items()}}


def run_serve_benchmarks(export: Path, workdir: Path, streams: Sequence[int], emit: Callable[[dict], None],
                         which: Sequence[str] = ("server", "peer"), processes: int = 1) -> dict:
    """Each N of `streams` for the server (in `processes` processes) and the peer, then the
    streams-per-GPU row: the largest N of the sweep that stays real time for each, and their ratio."""
    rows: dict[str, list[dict]] = {"server": [], "peer": []}
    for n in streams:
        if "server" in which:
            try:
                rows["server"].append(bench_server(export, workdir / f"server-{n}", n, processes=processes))
            except ServeError as e:  # e.g. out of GPU memory at start-up: a row, and the sweep goes on
                rows["server"].append({"what": "serve_moshi_server", "streams": n, "realtime": False, "error": str(e)})
            emit(rows["server"][-1])
        if "peer" in which:
            rows["peer"].append(bench_peer(export, n))
            emit(rows["peer"][-1])
    best = {k: max((r["streams"] for r in v if r["realtime"]), default=0) for k, v in rows.items() if k in which}
    summary = {"what": "serve_streams_per_gpu", "export": str(export), "tested": list(streams),
               "server_processes": processes,
               **{f"{k}_realtime_streams": v for k, v in best.items()}}
    if len(best) == 2:
        summary["server_vs_peer"] = round(best["server"] / best["peer"], 2) if best["peer"] else None
    emit(summary)
    return summary


if __name__ == "__main__":
    # python -m pipeline.bench_serve EXPORT WORKDIR N [N ...] [--only server|peer|split] [--processes K]
    import sys

    args = sys.argv[1:]
    only = args[args.index("--only") + 1] if "--only" in args else None
    processes = int(args.pop(args.index("--processes") + 1)) if "--processes" in args else 1
    nums = [int(a) for a in args[2:] if a.isdigit()]
    if only == "split":  # the step split of each N (50 steps from TIMED_FROM), nothing else
        for n in nums:
            print(json.dumps(bench_step_split(Path(args[0]), n, (TIMED_FROM, TIMED_FROM + 50))), flush=True)
    else:
        run_serve_benchmarks(Path(args[0]), Path(args[1]), nums, lambda r: print(json.dumps(r), flush=True),
                             (only,) if only else ("server", "peer"), processes)
