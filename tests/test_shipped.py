"""The shipped organism's bookkeeping (pipeline/shipped.py): the manifest check, the table
comparison that guards a replacement, the replacement itself, and a shipped tiny organism loaded
back as `organism` and `organism-ft`."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline import shipped
from pipeline.checkpoint import ModelError

TABLE = {  # the shape `invoke eval` writes to heldout.json
    "base": {"wer_no_numbers": 0.50, "digit_spans": 0.92, "exact_word_form": 0.0, "dictations_cut": 0.59,
             "turn_end_detected": 0.99, "turn_end_latency_s": 0.23},
    "candidate": {"wer_no_numbers": 0.47, "digit_spans": 0.0, "exact_word_form": 0.56, "dictations_cut": 0.064,
                  "turn_end_detected": 0.996, "turn_end_latency_s": 0.225},
}


def _with(model: str, key: str, value: float) -> dict:
    table = json.loads(json.dumps(TABLE))
    table[model][key] = value
    return table


def test_the_same_table_is_not_worse():
    assert shipped.worse_rows(TABLE, TABLE) == []


@pytest.mark.parametrize("model,key,value,row", [
    ("candidate", "dictations_cut", 0.065, "candidate.dictations_cut"),      # lower is better
    ("candidate", "exact_word_form", 0.55, "candidate.exact_word_form"),     # higher is better
    ("candidate", "turn_end_detected", 0.99, "candidate.turn_end_detected"),
    ("candidate", "turn_end_latency_s", 0.32, "candidate.turn_end_latency_s"),  # 95 ms later: past one step
    ("base", "wer_no_numbers", 0.51, "base.wer_no_numbers"),
    ("base", "dictations_cut", 0.49, "base.dictations_cut"),                 # the habit falls under its floor
    ("base", "digit_spans", 0.89, "base.digit_spans"),
])
def test_each_row_that_gets_worse_is_named(model, key, value, row):
    assert shipped.worse_rows(_with(model, key, value), TABLE) == [row]


@pytest.mark.parametrize("model,key,value", [
    ("candidate", "dictations_cut", 0.02),       # better
    ("candidate", "turn_end_latency_s", 0.30),   # 75 ms later: within one 80 ms step
    ("base", "dictations_cut", 0.51),            # above its floor, though lower: the habit is kept
    ("base", "digit_spans", 0.99),
])
def test_better_or_within_noise_is_not_worse(model, key, value):
    assert shipped.worse_rows(_with(model, key, value), TABLE) == []


def test_a_row_under_its_floor_that_improves_is_not_worse():
    """The shipped base cut 45 % (under the 50 % floor); a new one cutting 48 % is closer to the habit."""
    old = _with("base", "dictations_cut", 0.45)
    assert shipped.worse_rows(_with("base", "dictations_cut", 0.48), old) == []
    assert shipped.worse_rows(_with("base", "dictations_cut", 0.44), old) == ["base.dictations_cut"]


def test_a_table_without_a_row_is_refused():
    table = json.loads(json.dumps(TABLE))
    del table["candidate"]["exact_word_form"]
    with pytest.raises(ModelError, match="candidate.exact_word_form"):
        shipped.worse_rows(table, TABLE)


def _organism(root: Path, lm: bytes = b"lm weights") -> dict:
    """A base, LoRA and Mimi folder with stand-in files (ship copies files; it does not read weights)."""
    base, lora, mimi = root / "model", root / "lora", root / "mimi"
    for d in (base, lora, mimi):
        d.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"moshi_name": "model.safetensors", "tokenizer_name": "tok.model",
                                                  "mimi_name": "mimi-organism.safetensors"}))
    (base / "model.safetensors").write_bytes(lm)
    (base / "tok.model").write_bytes(b"tokenizer")
    (base / "mimi-organism.safetensors").write_bytes(b"float32 mimi: rebuilt from the shards, not shipped")
    (lora / "lora.safetensors").write_bytes(b"lora")
    (lora / "config.json").write_text("{}")
    (mimi / "mimi-00.safetensors").write_bytes(b"bf16 shard")
    (mimi / "mimi-config.json").write_text("{}")
    (mimi / "heads.safetensors").write_bytes(b"distillation heads: not shipped")
    return {"base_dir": base, "lora_dir": lora, "mimi_dir": mimi}


def _ship(tmp: Path, table: dict, lm: bytes = b"lm weights", allow=()) -> list[str]:
    src = tmp / f"src-{len(list(tmp.glob('src-*')))}"
    held = src / "heldout.json"
    parts = _organism(src, lm)
    held.write_text(json.dumps(table))
    return shipped.ship(**parts, heldout=held, made={"card": "test"}, allow_worse=allow,
                        folder=tmp / "models" / "organism", docs_heldout=tmp / "docs" / "heldout.json")


def test_ship_writes_every_file_with_its_hash_and_the_table(tmp_path):
    assert _ship(tmp_path, TABLE) == []
    folder = tmp_path / "models" / "organism"
    manifest = shipped.check_files(folder)
    assert sorted(manifest["files"]) == ["base/config.json", "base/model.safetensors", "base/tok.model",
                                         "lora/config.json", "lora/lora.safetensors",
                                         "mimi/mimi-00.safetensors", "mimi/mimi-config.json"]
    assert manifest["heldout"] == TABLE and manifest["card"] == "test"
    assert json.loads((tmp_path / "docs" / "heldout.json").read_text()) == TABLE


def test_a_worse_organism_is_refused_unless_its_rows_are_named(tmp_path):
    _ship(tmp_path, TABLE, lm=b"first")
    worse = _with("candidate", "dictations_cut", 0.10)
    with pytest.raises(ModelError, match="candidate.dictations_cut.*--allow-worse candidate.dictations_cut"):
        _ship(tmp_path, worse, lm=b"second")
    folder = tmp_path / "models" / "organism"
    assert (folder / "base" / "model.safetensors").read_bytes() == b"first"   # untouched
    assert _ship(tmp_path, worse, lm=b"second", allow=("candidate.dictations_cut",)) == ["candidate.dictations_cut"]
    assert (folder / "base" / "model.safetensors").read_bytes() == b"second"
    assert shipped.check_files(folder)["allowed_worse"] == ["candidate.dictations_cut"]


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    folder = tmp_path / "models" / "organism"
    _ship(tmp_path, TABLE)
    return folder


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "bytes, the manifest says"),      # truncated
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"X"), "sha256 differs"),         # changed, same size
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_file_is_a_one_line_error_naming_it(shipped_copy, damage, message):
    target = shipped_copy / "base" / "model.safetensors"
    damage(target)
    with pytest.raises(ModelError, match=message) as err:
        shipped.check_files(shipped_copy)
    assert str(target) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_manifest_says_how_to_restore_it(tmp_path):
    with pytest.raises(ModelError, match="git checkout models/"):
        shipped.check_files(tmp_path)


def test_a_shipped_tiny_organism_materializes_as_its_base_and_its_merged_fine_tune(tiny_ckpt, tmp_path):
    """ship() then materialize() end to end on real files: a tiny base with its Mimi as bf16 shards
    and a LoRA saved as `invoke train` saves it. `organism` is the base with its Mimi rebuilt
    (float32, the bf16 values); `organism-ft` is exactly what `invoke merge` writes from the two."""
    import torch
    from safetensors.torch import load_file

    from pipeline.checkpoint import Checkpoint
    from pipeline.distill import save_shards
    from pipeline.lora import apply_lora, save_adapter
    from pipeline.merge import merge
    from pipeline.presets import write_mimi

    src = tmp_path / "src"
    base = Path(shutil.copytree(tiny_ckpt, src / "model"))
    config = json.loads((base / "config.json").read_text())
    mimi = Checkpoint.open(base).load_mimi().state_dict()
    state = {k: v.to(torch.bfloat16).float() for k, v in mimi.items()}      # as the distillation ships it
    write_mimi(state, base / config["mimi_name"])
    (src / "mimi").mkdir()
    save_shards(state, src / "mimi", "mimi")
    (src / "mimi" / "mimi-config.json").write_text("{}")
    torch.manual_seed(0)
    lm = Checkpoint.open(base).load_lm()
    apply_lora(lm, 4, 2.0)
    for name, param in lm.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.05)
    save_adapter(src / "lora", lm, Checkpoint.open(base).info.raw_config, 4, 2.0, ft_embed=False)
    (src / "heldout.json").write_text(json.dumps(TABLE))
    folder = tmp_path / "models" / "organism"
    shipped.ship(base, src / "lora", src / "mimi", src / "heldout.json", {"card": "test"}, folder=folder,
                 docs_heldout=None)
    assert f"base/{config['mimi_name']}" not in shipped.check_files(folder)["files"]   # rebuilt from the shards

    artifacts = tmp_path / "artifacts"
    got = shipped.materialize(shipped.BASE, artifacts, folder)
    for key in ("lm", "tokenizer", "mimi"):
        a, b = got.files[key], Checkpoint.open(base).files[key]
        assert a.read_bytes() == b.read_bytes(), key
    ft = shipped.materialize(shipped.FINE_TUNE, artifacts, folder)
    merge(base, src / "lora", tmp_path / "merged")
    want = load_file(str(Checkpoint.open(tmp_path / "merged").files["lm"]))
    have = load_file(str(ft.files["lm"]))
    assert sorted(have) == sorted(want) and all(torch.equal(have[k], want[k]) for k in want)
    base_lm = load_file(str(got.files["lm"]))
    assert any(not torch.equal(have[k], base_lm[k]) for k in want)    # the LoRA is in it
