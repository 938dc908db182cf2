"""candle_bridge from Python: Kyutai's Rust loader reports clean and broken checkpoints by name."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.verify import VerificationFailed, candle_report, format_report, verify_candle

# A missing extension must fail these tests, not skip them: they are the Rust loader's tests.
try:
    import candle_bridge  # noqa: F401 - pipeline.verify imports it; fail here with the fix
except ImportError as e:
    raise ImportError("candle_bridge is not built: run `pip install -e .` (or `bash bootstrap.sh`)") from e


def _rewrite(ckpt, edit):
    path = ckpt / "model.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}  # no views into the file we rewrite
    edit(tensors)
    save_file(tensors, str(path))


def _problems(part):
    return {k: part[k] for k in ("missing", "unexpected", "wrong_shape", "wrong_dtype") if part[k]}


def test_clean_tiny_checkpoint_gives_a_clean_report(tiny_ckpt):
    report = candle_report(tiny_ckpt)
    assert report["ok"], format_report(report)
    for part in ("lm", "mimi"):
        assert _problems(report[part]) == {}
        assert report[part]["loaded"] and report[part]["load_error"] is None
        assert report[part]["expected_count"] == report[part]["found_count"] > 0
    lm_names = {t["name"] for t in report["lm"]["tensors"]}
    assert {f"extra_heads.{h}.weight" for h in range(4)} <= lm_names
    assert all(t["dtype"] == "bf16" for t in report["lm"]["tensors"])


def test_renamed_tensor_is_missing_and_unexpected_by_name(tiny_copy):
    name = "transformer.layers.1.gating.linear_in.weight"
    _rewrite(tiny_copy, lambda t: t.__setitem__("transformer.layers.1.gating.lin_in.weight", t.pop(name)))
    lm = candle_report(tiny_copy)["lm"]
    assert lm["missing"] == [name]
    assert lm["unexpected"] == ["transformer.layers.1.gating.lin_in.weight"]
    assert not lm["loaded"]


def test_wrong_shape_reports_both_shapes(tiny_copy):
    name = "text_linear.weight"
    _rewrite(tiny_copy, lambda t: t.__setitem__(name, t[name][:-1].clone()))
    (problem,) = candle_report(tiny_copy)["lm"]["wrong_shape"]
    assert problem["name"] == name
    assert problem["expected"] == [1000, 64] and problem["found"] == [999, 64]


def test_checkpoint_without_extra_heads_is_reported(tiny_copy):
    _rewrite(tiny_copy, lambda t: [t.pop(f"extra_heads.{h}.weight") for h in range(4)])
    lm = candle_report(tiny_copy)["lm"]
    assert lm["missing"] == [f"extra_heads.{h}.weight" for h in range(4)]


def test_pytorch_attention_names_are_not_what_rust_reads(tiny_copy):
    """Kyutai's runtime reads the legacy names; a raw PyTorch state dict must be renamed on export."""
    def to_pytorch_names(t):
        for key in [k for k in t if k.endswith("self_attn.in_proj_weight")]:
            t[key.replace("in_proj_weight", "in_projs.0.weight")] = t.pop(key)

    _rewrite(tiny_copy, to_pytorch_names)
    lm = candle_report(tiny_copy)["lm"]
    assert lm["missing"] == ["transformer.layers.0.self_attn.in_proj_weight",
                             "transformer.layers.1.self_attn.in_proj_weight"]
    assert "transformer.layers.0.self_attn.in_projs.0.weight" in lm["unexpected"]


def test_wrong_dtype_is_reported(tiny_copy):
    _rewrite(tiny_copy, lambda t: t.__setitem__("out_norm.alpha", t["out_norm.alpha"].to(torch.float32)))
    report = candle_report(tiny_copy)
    assert report["lm"]["wrong_dtype"] == [{"name": "out_norm.alpha", "dtype": "f32"}]
    assert not report["ok"]
    assert candle_report(tiny_copy, "f32")["lm"]["wrong_dtype"] != []  # bf16 tensors now differ


def test_missing_mimi_tensor_is_reported(tiny_copy):
    path = tiny_copy / "mimi-tiny.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}  # no views into the file we rewrite
    victim = sorted(k for k in tensors if "embedding_sum" in k)[0]
    del tensors[victim]
    save_file(tensors, str(path))
    report = candle_report(tiny_copy)
    assert report["mimi"]["missing"] == [victim]
    assert report["lm"]["loaded"] and not report["ok"]


def test_verify_candle_fails_with_a_table_naming_the_problem(tiny_copy):
    _rewrite(tiny_copy, lambda t: t.pop("extra_heads.2.weight"))
    with pytest.raises(VerificationFailed) as err:
        verify_candle(tiny_copy)
    assert "lm missing: extra_heads.2.weight" in str(err.value)
    assert "FAILED" in str(err.value)


def test_bad_config_gives_one_line_error_naming_the_field(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    del config["dim"]
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        candle_report(tiny_copy)
    assert "dim" in str(err.value) and "config.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_directory_is_an_error():
    with pytest.raises(ValueError, match="config.json"):
        candle_report("/nonexistent/checkpoint")


def test_device_names_are_checked_and_a_cpu_build_refuses_cuda(tiny_ckpt):
    with pytest.raises(ValueError, match='device "gpu": expected "cpu", "cuda" or "cuda:N"'):
        candle_bridge.Streamer(str(tiny_ckpt), "f32", "gpu")
    with pytest.raises(ValueError, match=r"built without CUDA; rebuild it with feature cuda \(docs/gpu.md\)"):
        candle_bridge.Streamer(str(tiny_ckpt), "bf16", "cuda")
    with pytest.raises(ValueError, match="built without CUDA"):
        candle_bridge.ServerStreamer(str(tiny_ckpt), 6, "cuda:0")
    assert candle_bridge.Streamer(str(tiny_ckpt), "f32", "cpu").n_q > 0
