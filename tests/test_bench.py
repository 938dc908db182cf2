"""The train benchmark's table (GPU-only to measure): rows, names and ratios, with the timing
replaced by known figures; the export benchmark's jobs on the tiny checkpoint."""

from __future__ import annotations

import pipeline.bench as bench


def test_every_row_of_ours_carries_its_ratios_to_both_peers(monkeypatch):
    # (impl, compiled, CUDA graphs) -> frames/s; the compiled peer is faster with CUDA graphs
    speed = {("peer", False, False): 40_000, ("peer", True, False): 80_000, ("peer", True, True): 90_000,
             ("ours", False, False): 30_000, ("ours", True, False): 100_000, ("ours", True, True): 117_000}
    seen = []

    def fake(impl, checkpointing=False, compile=False, profile=None, compile_mode="default", **_):
        graphs = compile_mode == "reduce-overhead"
        seen.append((impl, compile, compile_mode, checkpointing))
        name = f"train_{impl}{'_compiled' if compile else ''}{'_cudagraphs' if graphs else ''}"
        return {"what": name, "checkpointing": checkpointing,
                "frames_per_s": speed[impl, compile, graphs] // (1 + checkpointing),
                "peak_gib": 8.0 if impl == "ours" else 4.0 * (1 + compile) + graphs, "model_tflops": 100.0}

    monkeypatch.setattr(bench, "bench_train", fake)
    monkeypatch.setattr(bench, "matmul_rate", lambda: 800e12)
    monkeypatch.setattr(bench.torch.cuda, "empty_cache", lambda: None)
    rows = bench.run_train_benchmarks(out=lambda line: None)
    assert seen == list(bench.TRAIN_ROWS)  # every configuration, peers before ours
    by = {(r["what"], r["checkpointing"]): r for r in rows}
    assert set(by) == {("train_peer", False), ("train_peer_compiled", False), ("train_peer_compiled_cudagraphs", False),
                       ("train_ours", False), ("train_ours_compiled", False), ("train_ours_compiled_cudagraphs", False),
                       ("train_peer", True), ("train_ours", True)}
    # against the compiled peer at its faster mode (CUDA graphs: 90k frames/s, 9 GiB)
    graphs = by["train_ours_compiled_cudagraphs", False]
    assert graphs["speed_vs_compiled_peer"] == 1.3 and graphs["memory_vs_compiled_peer"] == 0.89
    compiled = by["train_ours_compiled", False]
    assert compiled["speed_vs_compiled_peer"] == 1.11 and compiled["speed_vs_peer"] == 2.5
    assert compiled["memory_vs_peer"] == 2.0
    assert compiled["mfu_pct"] == 12.5
    # with checkpointing there is no compiled peer, and the ratio is to that pass's own peer
    assert "speed_vs_compiled_peer" not in by["train_ours", True] and by["train_ours", True]["speed_vs_peer"] == 0.75
    assert "speed_vs_peer" not in by["train_peer_compiled", False]


def test_the_batch_sweep_measures_batch_8_first_and_compares_memory_with_the_peer_there(monkeypatch):
    def fake(impl, batch=8, compile=False, compile_mode="default", **_):
        assert compile and compile_mode == "reduce-overhead"
        return {"what": f"train_{impl}_compiled_cudagraphs", "batch": batch,
                "frames_per_s": batch * (12_000 if impl == "ours" else 10_000),
                "peak_gib": batch * (1.0 if impl == "ours" else 0.5), "model_tflops": 40.0 * batch}

    monkeypatch.setattr(bench, "bench_train", fake)
    monkeypatch.setattr(bench, "matmul_rate", lambda: 800e12)
    monkeypatch.setattr(bench.torch.cuda, "empty_cache", lambda: None)
    rows = bench.run_batch_sweep([16], out=lambda line: None)
    assert [(r["what"][6:10], r["batch"]) for r in rows] == [("peer", 8), ("ours", 8), ("peer", 16), ("ours", 16)]
    ours16 = rows[3]
    assert ours16["speed_vs_compiled_peer"] == 1.2 and ours16["memory_vs_compiled_peer"] == 2.0
    assert ours16["memory_vs_compiled_peer_batch_8"] == 4.0 and ours16["mfu_pct"] == 80.0


def test_the_export_benchmark_times_every_job_and_its_direct_copy_is_a_true_copy(tiny_ckpt, tmp_path, monkeypatch):
    """`invoke bench --what export` on the tiny checkpoint: each job runs and writes what it
    says, its row reports each job's own time and peak RAM (in the order the jobs ran) and the
    ratios of those times, and the direct-I/O copy it compares against holds the same bytes as
    the source."""
    from pipeline.bench import bench_export
    from pipeline.checkpoint import Checkpoint

    timed, real = [], bench._in_child
    monkeypatch.setattr(bench, "_in_child", lambda *a, **k: timed.append(real(*a, **k)) or timed[-1])
    work = tmp_path / "work"
    row = bench_export(tiny_ckpt, work, rank=4)
    # The jobs ran in this order: copy, direct copy, merge, export, one-pass export. Their
    # seconds (unrounded) come from a clock around real work in a child process, so each is > 0;
    # the row rounds them to 10 ms (copying the tiny files can round to 0.0, as seen on CI).
    assert len(timed) == 5 and all(seconds > 0 and mib > 0 for seconds, mib in timed), timed
    (copy, _), (direct, _), (merge_s, _), (export_s, _), (one_pass, _) = timed
    assert [row[k] for k in ("copy_s", "copy_direct_s", "merge_s", "export_s", "one_pass_s")] == \
        [round(s, 2) for s, _ in timed]
    assert row["ratio"] == round((merge_s + export_s) / copy, 2)
    assert row["one_pass_ratio"] == round(one_pass / copy, 2)
    assert row["one_pass_vs_direct_copy"] == round(one_pass / direct, 2)
    assert row["peak_mib"] == dict(zip(("copy", "merge", "export", "one_pass"), [timed[i][1] for i in (0, 2, 3, 4)]))
    for src in Checkpoint.of(tiny_ckpt).files.values():
        for copy in ("copy", "copy-direct"):
            assert (work / copy / src.name).read_bytes() == src.read_bytes(), (copy, src.name)
    assert Checkpoint.of(work / "merged").files["lm"].is_file()
    for exported in ("export", "export-1"):
        assert (work / exported / "manifest.json").is_file(), exported
