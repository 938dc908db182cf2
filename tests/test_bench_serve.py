"""The serving benchmark (`invoke bench --what serve`): its conventions with known answers, and
the load generator against Kyutai's real moshi-server on the CPU (the GPU figures themselves are
measured on the GPU box: docs/benchmarks.md)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import pipeline.bench_serve as bs
from pipeline.export import export
from pipeline.presets import make_checkpoint

# A step line as moshi-server 0.6.4 writes it to its log (ANSI colours included).
LINE = ("\x1b[2m2026-12-01T15:44:36.398457Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mmoshi_server::batched_asr\x1b[0m"
        "\x1b[2m:\x1b[0m \x1b[2m/src/batched_asr.rs\x1b[0m\x1b[2m:\x1b[0m\x1b[2m268:\x1b[0m 54.69ms "
        "\x1b[3mstep_idx\x1b[0m\x1b[2m=\x1b[0m5 \x1b[3mwith_data\x1b[0m\x1b[2m=\x1b[0m64")


def test_server_steps_reads_the_servers_step_lines_only():
    log = "\n".join([LINE[40:], LINE, "2026-12-01T15:44:36.1Z INFO starting asr loop 64",  # a cut first line
                     LINE.replace("54.69ms", "7.5ms")])
    steps = bs.server_steps(log)
    assert [(s.ms, s.with_data) for s in steps] == [(54.69, 64), (7.5, 64)]
    expected = datetime(2026, 12, 1, 15, 44, 36, 398457, tzinfo=timezone.utc).timestamp()
    assert steps[0].at == pytest.approx(expected, abs=1e-6)


def test_percentiles_known_answers():
    assert bs.percentiles(range(1, 101)) == {"p50": 50.5, "p99": 99.01, "max": 100.0}
    assert bs.percentiles([0.01, 0.02], scale=1000) == {"p50": 15.0, "p99": 19.9, "max": 20.0}
    assert bs.percentiles([]) == {"p50": None, "p99": None, "max": None}


def test_summary_times_exactly_the_chosen_stream_steps():
    """Two streams of 10 frames sent 80 ms apart from t=100 s; each Step comes back 30 ms (stream
    0) or 50 ms (stream 1) later. Timed steps [2, 5): lags are 30 and 50 ms only, and the server
    steps counted are those logged from the first timed send to one frame after the last."""
    sent = [[100.0 + 0.08 * k for k in range(10)], [100.001 + 0.08 * k for k in range(10)]]
    answered = [[t + 0.03 for t in sent[0]], [t + 0.05 for t in sent[1][:9]]]  # stream 1 lost its last Step
    results = [{"sent": sent, "answered": answered, "errors": []}]
    window = (sent[0][2], sent[1][4] + bs.FRAME_S)  # 100.16 .. 100.401
    steps = [bs.ServerStep(window[0] - 0.001, 99.0, 2), bs.ServerStep(window[0], 10.0, 2),
             bs.ServerStep(100.3, 20.0, 1), bs.ServerStep(window[1], 30.0, 2),
             bs.ServerStep(window[1] + 0.001, 99.0, 2)]
    row = bs.summarize_load(results, steps, 10, (2, 5))
    assert row["steps_timed"] == 3 and row["step_ms_max"] == 30.0 and row["step_ms_p50"] == 20.0
    assert row["lag_ms_p50"] == pytest.approx(40.0) and row["lag_ms_max"] == pytest.approx(50.0)
    assert row["streams_complete"] == 1 and row["errors"] == []


def test_streams_per_gpu_is_the_largest_real_time_count_of_each(monkeypatch, tmp_path):
    verdict = {("server", 64): True, ("server", 256): True, ("server", 512): False,
               ("peer", 64): True, ("peer", 256): False, ("peer", 512): False}
    monkeypatch.setattr(bs, "bench_server", lambda export, work, n, processes: {"streams": n,
                                                                                "realtime": verdict["server", n]})
    monkeypatch.setattr(bs, "bench_peer", lambda export, n: {"streams": n, "realtime": verdict["peer", n]})
    rows = []
    summary = bs.run_serve_benchmarks(tmp_path, tmp_path, [64, 256, 512], rows.append)
    assert len(rows) == 7 and rows[-1] is summary
    assert summary["server_realtime_streams"] == 256 and summary["peer_realtime_streams"] == 64
    assert summary["server_vs_peer"] == 4.0


def test_load_generator_against_the_real_server_on_cpu(tmp_path):
    """Two real-time streams through Kyutai's moshi-server (CPU build, the `server` preset): every
    frame is answered, the server's step lines are found and timed."""
    ckpt = make_checkpoint("server", tmp_path / "server", seed=0)
    folder = export(ckpt, tmp_path / "export", device="cpu")
    row = bs.bench_server(folder, tmp_path / "work", 2, seconds=3.0, cpu=True, timed=(5, 30))
    assert row["streams_complete"] == 2 and row["errors"] == []
    assert row["steps_timed"] >= 5 and row["stream_s"] == 3.04 and row["streams"] == 2  # 38 whole frames
    # The timed steps are some of the server's own step lines: their percentiles lie within what the
    # log holds, in milliseconds as the log writes them, and in order.
    logged = [step.ms for step in bs.server_steps((tmp_path / "work" / "server.log").read_text())]
    assert len(logged) >= row["steps_timed"]
    assert min(logged) - 0.01 <= row["step_ms_p50"] <= row["step_ms_p99"] <= row["step_ms_max"] <= max(logged) + 0.01
    # A frame is answered after it was sent: every lag is positive, and the percentiles in order.
    assert 0 < row["lag_ms_p50"] <= row["lag_ms_p99"] <= row["lag_ms_max"]
    with pytest.raises(bs.ServeError, match="no steps 5..30 to time"):
        bs.bench_server(folder, tmp_path / "work2", 2, seconds=1.0, cpu=True, timed=(5, 30))


def test_gpu_busy_is_read_inside_the_timed_window_only():
    samples = [(9.9, 5.0), (10.0, 40.0), (10.5, 90.0), (11.0, 60.0), (11.1, 1.0)]
    assert bs.busy_in_window(samples, (10.0, 11.0)) == {"gpu_busy_pct_p50": 60.0, "gpu_busy_pct_min": 40.0,
                                                        "gpu_busy_samples": 3}
    assert bs.busy_in_window(samples, (20.0, 21.0))["gpu_busy_pct_p50"] is None
    assert bs.busy_in_window([], (0.0, 1.0))["gpu_busy_samples"] == 0


def test_streams_must_split_evenly_over_server_processes(tmp_path):
    with pytest.raises(bs.ServeError, match="3 streams do not split evenly over 2 server processes"):
        bs.bench_server(tmp_path, tmp_path / "work", 3, seconds=3.0, cpu=True, timed=(5, 30), processes=2)


def test_two_server_processes_share_the_streams(tmp_path):
    """Two streams over two moshi-server processes of one slot each: a stream sent to a full server
    would be refused ('no free channels'), so every stream completing without an error shows the
    load generator split them."""
    ckpt = make_checkpoint("server", tmp_path / "server", seed=0)
    folder = export(ckpt, tmp_path / "export", device="cpu")
    row = bs.bench_server(folder, tmp_path / "work", 2, seconds=3.0, cpu=True, timed=(5, 30), processes=2)
    assert row["processes"] == 2 and row["streams_complete"] == 2 and row["errors"] == []
    for k in range(2):  # each server stepped, never with more than its one stream's frame
        steps = bs.server_steps((tmp_path / "work" / f"p{k}" / "server.log").read_text())
        assert steps and max(s.with_data for s in steps) == 1
    assert row["steps_timed"] >= 10
