"""Model resolution: presets, local directories, hub repo ids, and clear errors."""

import json

import pytest

from pipeline import models
from pipeline.checkpoint import Checkpoint
from pipeline.models import ModelError, resolve_model


def test_preset_is_built_on_first_use_then_reused(tmp_path, monkeypatch):
    built = []
    real = models.make_checkpoint

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "make_checkpoint", counting)
    first = resolve_model("tiny", tmp_path)
    second = resolve_model("tiny", tmp_path)
    assert first.path == second.path == tmp_path / "checkpoints" / "tiny"
    assert len(built) == 1
    assert first.files["config"] == first.path / "config.json" and first.files["config"].is_file()


def test_local_directory_is_used_as_is(tiny_ckpt):
    assert resolve_model(str(tiny_ckpt)).path == tiny_ckpt


def test_hub_id_downloads_the_checkpoint_files(tiny_ckpt, monkeypatch):
    calls = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tiny_ckpt)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("kyutai/stt-1b-en_fr-candle", revision="main").path == tiny_ckpt
    assert calls["repo_id"] == "kyutai/stt-1b-en_fr-candle" and calls["revision"] == "main"
    assert "config.json" in calls["allow_patterns"] and "*.safetensors" in calls["allow_patterns"]


def test_hub_id_offline_names_the_repo_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as err:
        resolve_model("kyutai/stt-1b-en_fr-candle")
    message = str(err.value)
    assert "kyutai/stt-1b-en_fr-candle" in message and "local directory" in message
    assert "\n" not in message


@pytest.mark.parametrize("source", ["./no/such/dir", "not a model", "a/b/c"])
def test_unusable_source_is_refused(source):
    with pytest.raises(ModelError, match="neither a preset"):
        resolve_model(source)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_malformed_config_json_is_named(tiny_copy):
    (tiny_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config.json: not valid JSON"):
        resolve_model(str(tiny_copy))


def test_missing_mimi_file_is_named(tiny_copy):
    (tiny_copy / "mimi-tiny.safetensors").unlink()
    with pytest.raises(ModelError, match=r"mimi-tiny.safetensors: mimi file named in config.json is missing"):
        resolve_model(str(tiny_copy))


def test_missing_tokenizer_field_is_named(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    del config["tokenizer_name"]
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="field 'tokenizer_name' is missing"):
        resolve_model(str(tiny_copy))


def test_non_stt_checkpoint_is_refused(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["dep_q"] = 8
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="dep_q is 8"):
        Checkpoint.open(tiny_copy).info


def test_extra_heads_are_detected(tiny_copy):
    assert Checkpoint.open(tiny_copy).has_extra_heads
    config = json.loads((tiny_copy / "config.json").read_text())
    config["extra_heads_num_heads"] = 0
    (tiny_copy / "config.json").write_text(json.dumps(config))
    assert not Checkpoint.open(tiny_copy).has_extra_heads


def test_pickle_weights_are_refused(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["moshi_name"] = "model.pt"
    (tiny_copy / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"model.pt: not a safetensors file; pickle checkpoints are refused"):
        resolve_model(str(tiny_copy))
