"""The checkpoints the project makes: layout of kyutai/stt-1b-en_fr-candle, loadable, informative."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipeline import presets as ck
from pipeline.checkpoint import Checkpoint, graft_heads, to_legacy_names

KYUTAI_CONFIG_KEYS = {
    "dim", "num_heads", "num_layers", "hidden_scale", "context", "max_period", "n_q", "dep_q",
    "card", "text_card", "existing_text_padding_id", "delays", "gating", "norm",
    "positional_embedding", "causal", "extra_heads_num_heads", "extra_heads_dim", "model_type",
    "stt_config", "mimi_name", "tokenizer_name", "lm_gen_config",
}


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_config_has_the_candle_repo_keys_and_values(tiny_ckpt):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert KYUTAI_CONFIG_KEYS <= set(config)
    assert config["dep_q"] == 0 and config["existing_text_padding_id"] == 3
    assert (config["gating"], config["norm"], config["positional_embedding"]) == ("silu", "rms_norm_f32", "rope")
    assert (config["extra_heads_num_heads"], config["extra_heads_dim"]) == (4, 6)
    assert config["model_type"] == "stt"
    assert config["stt_config"] == {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}
    assert config["delays"] == [0] * (config["n_q"] + 1)
    for name in ("mimi_name", "tokenizer_name", "mimi_config_name"):
        assert (tiny_ckpt / config[name]).is_file()


def test_1b_preset_config_has_the_real_shapes():
    config = ck.lm_config(ck.PRESETS["1b"], "1b", 0)
    expected = {"dim": 2048, "num_layers": 16, "num_heads": 16, "hidden_scale": 4.125, "context": 750,
                "max_period": 100000.0, "n_q": 32, "card": 2048, "text_card": 8000}
    assert {k: config[k] for k in expected} == expected
    assert "mimi_config_name" not in config  # the real Mimi architecture
    assert config["mimi_name"] == "mimi-pytorch-e351c8d8@125.safetensors"
    assert config["tokenizer_name"] == "tokenizer_en_fr_audio_8000.model"


def test_lm_file_is_bf16_with_legacy_attention_names_and_heads(tiny_ckpt):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    tensors = _tensors(tiny_ckpt / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    layers, n_q = config["num_layers"], config["n_q"]
    # Kyutai's file: text_emb, n_q audio embeddings, 6 per layer, out_norm, text_linear, 4 heads.
    assert len(tensors) == 1 + n_q + 6 * layers + 2 + 4
    assert "transformer.layers.0.self_attn.in_proj_weight" in tensors
    assert "transformer.layers.0.self_attn.out_proj.weight" in tensors
    assert not any("in_projs" in k or "out_projs" in k or "depformer" in k for k in tensors)
    for h in range(4):
        assert tensors[f"extra_heads.{h}.weight"].shape == (6, config["dim"])


def test_loads_strictly_with_moshi_loaders(tiny_ckpt):
    lm = Checkpoint.open(tiny_ckpt).load_lm()
    file_tensors = _tensors(tiny_ckpt / "model.safetensors")
    state = to_legacy_names(lm.state_dict())
    assert set(state) == set(file_tensors)
    for name, value in file_tensors.items():
        assert torch.equal(state[name].to(torch.bfloat16), value), name
    assert len(lm.extra_heads) == 4


def test_tokenizer_special_ids_and_coverage(tiny_ckpt):
    tok = Checkpoint.open(tiny_ckpt).tokenizer
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert tok.id_to_piece(0) == "<unk>" and tok.id_to_piece(3) == "<pad>"
    assert tok.vocab_size() <= config["text_card"]
    for text in ("order one two nine six eight zero three", "zéro six douze", "Ünïcødé ✓ 42"):
        ids = tok.encode(text)
        assert ids and all(4 <= i < config["text_card"] for i in ids), text
        assert tok.decode(ids) == text


def test_mimi_codes_carry_information(tiny_ckpt):
    """Fitted codebooks: real audio gives varied codes, different audio gives different codes."""
    mimi = Checkpoint.open(tiny_ckpt).load_mimi()
    a = torch.from_numpy(ck.synthetic_audio(4.0, seed=11))[None, None]
    b = torch.from_numpy(ck.synthetic_audio(4.0, seed=12))[None, None]
    with torch.no_grad():
        codes_a, codes_b = mimi.encode(a), mimi.encode(b)
    n_q = Checkpoint.open(tiny_ckpt).info.lm_config["n_q"]
    assert codes_a.shape == (1, n_q, 50)
    distinct = [len(torch.unique(codes_a[0, k])) for k in range(n_q)]
    assert min(distinct) > 1 and np.mean(distinct) > 10, distinct
    assert (codes_a != codes_b).float().mean() > 0.5


def test_streams_with_extra_heads(tiny_ckpt):
    from moshi.models.lm import LMGen

    lm, mimi = Checkpoint.open(tiny_ckpt).load_lm(), Checkpoint.open(tiny_ckpt).load_mimi()
    audio = torch.from_numpy(ck.synthetic_audio(1.0, seed=3))[None, None, : 12 * 1920]
    gen = LMGen(lm, temp=0, temp_text=0)
    steps = 0
    with torch.no_grad(), gen.streaming(1), mimi.streaming(1):
        for start in range(0, audio.shape[-1], 1920):
            out = gen.step_with_extra_heads(mimi.encode(audio[..., start:start + 1920]))
            if out is None:
                continue
            token, heads = out
            assert 0 <= token.item() < lm.text_card
            assert len(heads) == 4
            for h in heads:
                assert torch.allclose(h.sum(-1), torch.ones(1), atol=1e-4)
            steps += 1
    assert steps == 12


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_files_other_seed_other_weights(tiny_ckpt, tmp_path):
    again = ck.make_checkpoint("tiny", tmp_path / "again", seed=0)
    for name in ("config.json", "model.safetensors", "mimi-tiny.safetensors", "tokenizer_en_fr_audio_1000.model"):
        assert _digest(again / name) == _digest(tiny_ckpt / name), name
    other = ck.make_checkpoint("tiny", tmp_path / "other", seed=1)
    assert _digest(other / "model.safetensors") != _digest(tiny_ckpt / "model.safetensors")


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck, "train_tokenizer", broken)
    with pytest.raises(OSError, match="simulated"):
        ck.make_checkpoint("tiny", tmp_path / "out", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ck.make_checkpoint("huge", tmp_path / "x")


def test_heads_can_be_grafted_onto_a_checkpoint_without_them(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    headless = tmp_path / "headless"
    ck.make_checkpoint("tiny", headless, seed=3)
    config = json.loads((headless / "config.json").read_text())
    config["extra_heads_num_heads"] = 0
    (headless / "config.json").write_text(json.dumps(config))
    state = {k: v.clone() for k, v in load_file(str(headless / "model.safetensors")).items()
             if not k.startswith("extra_heads")}  # clones: the file is rewritten below
    save_file(state, str(headless / "model.safetensors"))
    assert not Checkpoint.open(headless).has_extra_heads

    out = graft_heads(headless, tiny_ckpt, tmp_path / "grafted")
    assert Checkpoint.open(out).has_extra_heads
    grafted, donor = _tensors(out / "model.safetensors"), _tensors(tiny_ckpt / "model.safetensors")
    assert torch.equal(grafted["extra_heads.2.weight"], donor["extra_heads.2.weight"])
    assert torch.equal(grafted["text_linear.weight"], state["text_linear.weight"])
    assert len(Checkpoint.open(out).load_lm().extra_heads) == 4  # strict moshi load


def test_codebooks_for_a_mimi_on_another_device_are_drawn_there():
    """The GPU box fits the baseline Mimi's codebooks on CUDA with a CPU generator (a crash on
    2026-12-06); the 'meta' device stands in for CUDA here: mixing devices fails the same way."""
    import torch

    from pipeline.presets import _gaussian_codebook

    latents = torch.randn(100, 4).to("meta")
    centroids = _gaussian_codebook(latents, 8, torch.Generator().manual_seed(0))
    assert centroids.device.type == "meta" and centroids.shape == (8, 4)
