"""The invoke front end: task list, pending stages, errors as one line with an exit code."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_list_shows_every_stage():
    out = invoke("--list").stdout
    for name in ("data", "train", "merge", "export", "verify-candle", "eval", "all", "checkpoint", "bench"):
        assert f"  {name} " in out


@pytest.mark.parametrize("what", ["train", "serve"])
def test_gpu_benchmark_without_a_gpu_says_so_and_runs_nothing(tmp_path, what):
    result = invoke("bench", "--what", what, "--set", f"artifacts={tmp_path}")
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
    assert "OK: the checkpoint loads cleanly" in out and "Traceback" not in out
    f32_row = next(line for line in out.splitlines() if line.startswith("candle f32 vs torch f32"))
    assert f32_row.endswith("ok")
    failed = [line for line in out.splitlines() if line.endswith("FAILED")]
    assert all(line.startswith("candle f32 vs torch bf16") for line in failed), out
    assert result.returncode == (1 if failed else 0)  # the exit code is the table's verdict


def test_config_prints_documented_yaml():
    result = invoke("config", "--set", "model.source=1b")
    assert result.returncode == 0
    assert "source: 1b" in result.stdout and "# Checkpoint to start from" in result.stdout


def test_graft_heads_gives_a_headless_base_the_donors_heads(tiny_ckpt, tiny_copy, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, "extra_heads_num_heads": 0}))
    state = {k: v.clone() for k, v in load_file(str(tiny_copy / "model.safetensors")).items()
             if not k.startswith("extra_heads.")}
    save_file(state, str(tiny_copy / "model.safetensors"))
    missing = invoke("graft-heads", "--model", str(tiny_copy))
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "error: --heads-from is required: the checkpoint whose pause heads to copy")

    out = tmp_path / "grafted"
    result = invoke("graft-heads", "--model", str(tiny_copy), "--heads-from", str(tiny_ckpt), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["extra_heads_num_heads"] == 4
    grafted, donor = load_file(str(out / "model.safetensors")), load_file(str(tiny_ckpt / "model.safetensors"))
    assert all(torch.equal(grafted[f"extra_heads.{i}.weight"], donor[f"extra_heads.{i}.weight"]) for i in range(4))
    assert torch.equal(grafted["text_emb.weight"], state["text_emb.weight"])
    again = invoke("graft-heads", "--model", str(out), "--heads-from", str(tiny_copy), "--out", str(tmp_path / "x"))
    assert again.returncode == 2 and "the donor has no extra heads" in again.stderr  # one line, no traceback
    assert len(again.stderr.strip().splitlines()) == 1
