"""The invoke front end: task list, pending stages, errors as one line with an exit code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_list_shows_every_stage():
    out = invoke("--list").stdout
    for name in ("data", "train", "merge", "export", "verify-candle", "eval", "all", "checkpoint", "bench"):
        assert f"  {name} " in out


def test_gpu_benchmark_without_a_gpu_says_so_and_runs_nothing(tmp_path):
    result = invoke("bench", "--what", "train", "--set", f"artifacts={tmp_path}")
    assert result.returncode == 3
    assert "needs a CUDA GPU" in result.stderr and "docs/benchmarks.md" in result.stderr


def test_unknown_benchmark_is_one_line_with_exit_code_2(tmp_path):
    result = invoke("bench", "--what", "data,speed", "--set", f"artifacts={tmp_path}")
    assert result.returncode == 2 and "unknown benchmark 'speed'" in result.stderr


def test_bad_override_is_one_line_with_exit_code_2():
    result = invoke("verify-candle", "--set", "verify.lm_dtype=f64")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "verify.lm_dtype" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_verify_candle_on_a_broken_checkpoint_exits_nonzero(tiny_copy):
    from safetensors.torch import load_file, save_file

    tensors = {k: v.clone() for k, v in load_file(str(tiny_copy / "model.safetensors")).items()}
    del tensors["text_emb.weight"]
    save_file(tensors, str(tiny_copy / "model.safetensors"))
    result = invoke("verify-candle", "--model", str(tiny_copy))
    assert result.returncode == 1
    assert "lm missing: text_emb.weight" in result.stderr


def test_verify_candle_on_a_clean_random_checkpoint(tiny_ckpt):
    """Loader and float32 parity pass; a random model's flat logits may fail only the bf16 gate
    (the whole table passing is checked on a trained model by `invoke all`)."""
    result = invoke("verify-candle", "--model", str(tiny_ckpt))
    out = result.stdout + result.stderr
    assert "OK: the checkpoint loads cleanly" in out
    f32_row = next(line for line in out.splitlines() if line.startswith("candle f32 vs torch f32"))
    assert f32_row.endswith("ok")
    if result.returncode != 0:
        failed = [line for line in out.splitlines() if line.endswith("FAILED")]
        assert failed and all(line.startswith("candle f32 vs torch bf16") for line in failed), out


def test_config_prints_documented_yaml():
    result = invoke("config", "--set", "model.source=1b")
    assert result.returncode == 0
    assert "source: 1b" in result.stdout and "# Checkpoint to start from" in result.stdout
