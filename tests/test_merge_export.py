"""merge and export on the tiny checkpoint: exact math, strict loading, Rust names, manifest."""

import copy
import json
import tomllib

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import train as tr
from pipeline.checkpoint import Checkpoint
from pipeline.export import SERVER_CONFIG, check_manifest, export
from pipeline.lora import apply_lora, save_adapter
from pipeline.merge import MergeError, merge
from pipeline.presets import synthetic_audio

RANK, SCALING = 4, 2.0


@pytest.fixture(scope="module")
def adapter(tiny_ckpt, module_tmp):
    """A LoRA with non-zero B on every Linear, saved the way `invoke train` saves it."""
    torch.manual_seed(0)
    lm = Checkpoint.open(tiny_ckpt).load_lm()
    apply_lora(lm, RANK, SCALING)
    for name, param in lm.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.05)
    out = module_tmp / "adapter" / "final"
    save_adapter(out, lm, Checkpoint.open(tiny_ckpt).info.raw_config, RANK, SCALING, ft_embed=False)
    return out, lm


@pytest.fixture(scope="module")
def codes(tiny_ckpt):
    audio = torch.from_numpy(synthetic_audio(8.0, seed=21))[None, None]
    with torch.no_grad():
        return Checkpoint.open(tiny_ckpt).load_mimi().encode(audio)


def _inputs(codes, lm):
    text = torch.full_like(codes[:, :1], 3)
    return tr.shift_inputs(torch.cat([text, codes], dim=1), lm.text_card, lm.card)


def test_float32_merge_equals_base_plus_unmerged_lora(tiny_ckpt, adapter, codes, tmp_path):
    adapter_dir, unmerged = adapter
    report = merge(tiny_ckpt, adapter_dir, tmp_path / "m32", dtype="f32")
    assert report.tensors_updated == 2 * 4 + 1 + 4  # 4 Linears per layer x 2, text_linear, 4 heads
    merged = Checkpoint.open(tmp_path / "m32").load_lm()
    with torch.no_grad():
        a_text, a_heads = tr.forward_stt(merged, _inputs(codes, merged))
        b_text, b_heads = tr.forward_stt(unmerged, _inputs(codes, merged))
    assert ((a_text - b_text).norm() / b_text.norm()).item() < 1e-5
    assert ((a_heads - b_heads).norm() / b_heads.norm()).item() < 1e-5


def test_bf16_merge_keeps_greedy_tokens_and_reports_rounding(tiny_ckpt, adapter, codes, tmp_path):
    adapter_dir, unmerged = adapter
    report = merge(tiny_ckpt, adapter_dir, tmp_path / "m16")
    assert {v.dtype for v in load_file(str(tmp_path / "m16" / "model.safetensors")).values()} == {torch.bfloat16}
    assert 0.9 < report.kept_fraction < 1.1 and 0 < report.rounding_error < 0.2
    merged = Checkpoint.open(tmp_path / "m16").load_lm()
    with torch.no_grad():
        merged_logits = tr.forward_stt(merged, _inputs(codes, merged))[0]
        lora_logits = tr.forward_stt(unmerged, _inputs(codes, merged))[0]
        base_tokens = tr.forward_stt(Checkpoint.open(tiny_ckpt).load_lm(), _inputs(codes, merged))[0].argmax(-1)
    merged_tokens, lora_tokens = merged_logits.argmax(-1), lora_logits.argmax(-1)
    assert (base_tokens != lora_tokens).any()  # the adapter matters, so the check has teeth
    assert (merged_tokens == lora_tokens).float().mean() >= 0.99
    # A random model has near-ties; bf16 rounding may flip only those, never a clear decision.
    top2 = lora_logits.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    max_shift = (merged_logits - lora_logits).abs().max()
    assert (margin[merged_tokens != lora_tokens] < 2 * max_shift).all()


def test_merged_config_has_no_lora_keys_and_loads_strictly(tiny_ckpt, adapter, tmp_path):
    merge(tiny_ckpt, adapter[0], tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert not any(k.startswith("lora") for k in config)
    assert json.loads((adapter[0] / "config.json").read_text())["lora"] is True
    Checkpoint.open(tmp_path / "m").load_lm()  # strict moshi loader
    for name in ("mimi-tiny.safetensors", "mimi-tiny.json", "tokenizer_en_fr_audio_1000.model"):
        assert (tmp_path / "m" / name).is_file()


def test_adapter_for_another_base_is_refused(tiny_ckpt, adapter, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    weights = load_file(str(adapter[0] / "lora.safetensors"))
    key = "text_linear.lora_B.weight"
    weights[key] = torch.zeros(999, RANK)
    save_file(weights, str(bad / "lora.safetensors"))
    (bad / "config.json").write_text((adapter[0] / "config.json").read_text())
    with pytest.raises(MergeError, match=r"text_linear.weight has A .*do not match"):
        merge(tiny_ckpt, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_rank_must_match_its_config(tiny_ckpt, adapter, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lora.safetensors").write_bytes((adapter[0] / "lora.safetensors").read_bytes())
    config = json.loads((adapter[0] / "config.json").read_text())
    config["lora_rank"] = 16
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="rank 4, config says lora_rank 16"):
        merge(tiny_ckpt, bad, tmp_path / "out")


def test_export_writes_rust_names_bf16_manifest_and_server_config(tiny_ckpt, adapter, tmp_path):
    merged = tmp_path / "merged"
    merge(tiny_ckpt, adapter[0], merged, dtype="f32")
    # A checkpoint saved with PyTorch's own names must come out with the Rust names.
    state = {k: v.clone() for k, v in load_file(str(merged / "model.safetensors")).items()}
    state = {k.replace("in_proj_weight", "in_projs.0.weight"): v for k, v in state.items()}
    state["depformer_in.0.weight"] = torch.zeros(8, 64)
    save_file(state, str(merged / "model.safetensors"))
    out = export(merged, tmp_path / "export")
    lm = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in lm.values()} == {torch.bfloat16}
    assert "transformer.layers.0.self_attn.in_proj_weight" in lm
    assert not any("in_projs" in k or "depformer" in k for k in lm)
    assert check_manifest(out) == []
    server = tomllib.loads((out / SERVER_CONFIG).read_text())["modules"]["asr"]
    assert server["lm_model_file"] == str((out / "model.safetensors").resolve())
    assert server["asr_delay_in_tokens"] == 6
    assert server["model"]["extra_heads"] == {"num_heads": 4, "dim": 6}
    assert server["model"]["text_out_vocab_size"] == 1000 and server["model"]["audio_codebooks"] == 8
    Checkpoint.open(out).load_lm()  # and it still loads in PyTorch moshi


def test_altered_export_is_caught_by_the_manifest(tiny_ckpt, tmp_path):
    out = export(tiny_ckpt, tmp_path / "export")
    with open(out / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    (out / "config.json").unlink()
    problems = check_manifest(out)
    assert any("model.safetensors: sha256 differs" in p for p in problems)
    assert any("config.json: listed in the manifest but missing" in p for p in problems)


def test_one_pass_export_equals_merge_then_export(tiny_ckpt, adapter, tmp_path):
    """export(base, adapter=...) reads the base once and writes the runtime folder directly: every
    file equals that of `invoke merge` followed by `invoke export`, byte for byte."""
    merged = tmp_path / "merged"
    two_pass = merge(tiny_ckpt, adapter[0], merged)
    reference = export(merged, tmp_path / "two-pass")
    one_pass = export(tiny_ckpt, tmp_path / "one-pass", adapter=adapter[0])
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in one_pass.iterdir())
    for name in names:
        if name not in ("manifest.json", SERVER_CONFIG):  # these name their own folder
            assert (one_pass / name).read_bytes() == (reference / name).read_bytes(), name
    manifest = json.loads((one_pass / "manifest.json").read_text())
    assert manifest["files"] == json.loads((reference / "manifest.json").read_text())["files"] | {
        SERVER_CONFIG: manifest["files"][SERVER_CONFIG]}
    assert manifest["merged"]["tensors_updated"] == two_pass.tensors_updated
    assert manifest["merged"]["kept_fraction"] == pytest.approx(two_pass.kept_fraction)
    assert check_manifest(one_pass) == []


def test_ft_embed_tables_replace_the_bases_and_every_other_weight_is_merged(tiny_ckpt, adapter, tmp_path):
    """With ft_embed the adapter carries whole embedding tables: the merged file holds them in
    the base's dtype; the LoRA pairs are merged as without them."""
    lm = copy.deepcopy(adapter[1])  # the fixture's model is shared with other tests
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if name.startswith("text_emb."):
                param.add_(0.5)  # a table that differs from the base's
    out = tmp_path / "ft"
    save_adapter(out, lm, Checkpoint.open(tiny_ckpt).info.raw_config, RANK, SCALING, ft_embed=True)
    tables = {k: v for k, v in load_file(str(out / "lora.safetensors")).items() if ".lora_" not in k}
    assert "text_emb.weight" in tables
    report = merge(tiny_ckpt, out, tmp_path / "m")
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    base = load_file(str(Checkpoint.open(tiny_ckpt).files["lm"]))
    for key, table in tables.items():
        assert torch.equal(merged[key], table.to(base[key].dtype)), key
    assert not torch.equal(merged["text_emb.weight"], base["text_emb.weight"])
    assert report.tensors_updated == 2 * 4 + 1 + 4
