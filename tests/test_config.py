import pytest
import yaml

from pipeline.config import Config, ConfigError, load_config, render_config


def test_defaults_are_the_tiny_model_offline():
    cfg = load_config()
    assert cfg.model.source == "tiny"
    assert cfg.verify.lm_dtype == "bf16"


def test_file_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  source: 1b\ncheckpoint:\n  seed: 3\n")
    cfg = load_config(path, ["checkpoint.seed=7", "artifacts=/tmp/x"])
    assert cfg.model.source == "1b"
    assert cfg.checkpoint.seed == 7 and isinstance(cfg.checkpoint.seed, int)
    assert str(cfg.artifacts_dir) == "/tmp/x"


def test_exponent_floats_without_a_dot(tmp_path):
    # PyYAML reads "3e-4" as a string (YAML 1.1 wants "3.0e-4"); people write it anyway.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    assert load_config(path).train.lr == 1e-3
    assert load_config(path, ["train.lr=3e-4"]).train.lr == 3e-4
    with pytest.raises(ConfigError, match="train.lr must be a float"):
        load_config(None, ["train.lr=3e-4x"])


def test_yaml_yes_and_no_stay_words_in_text_fields(tmp_path):
    # YAML 1.1 reads yes/no as booleans; `--set verify.server=no` means the word.
    assert load_config(None, ["verify.server=no"]).verify.server == "no"
    path = tmp_path / "c.yaml"
    path.write_text("verify:\n  server: yes\n")
    assert load_config(path).verify.server == "yes"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("model:\n  sorce: x\n", [], "unknown field model.sorce"),
        ("", ["checkpoint.seed=abc"], "checkpoint.seed must be a int"),
        ("", ["checkpoint.seed=1e3"], "checkpoint.seed must be a int"),
        ("", ["verify.lm_dtype=f64"], "verify.lm_dtype must be one of"),
        ("model: [1, 2]\n", [], "model must be a mapping"),
        ("model: {source: tiny\n", [], "not valid YAML"),
        ("", ["checkpoint.seed"], "expected section.field=value"),
        ("", ["verify.device=gpu"], "verify.device must be 'cpu' or 'cuda'"),
        ("", ["train.codebook_dropout=1.5"], "train.codebook_dropout must be between 0 and 1"),
        ("", ["train.served_starts=-0.5"], "train.served_starts must be between 0 and 1"),
        ("", ["organism.codebook_dropout=-0.1"], "organism.codebook_dropout must be between 0 and 1"),
        ("", ["serve.bench_streams=64,x"], "serve.bench_streams must be positive whole numbers"),
        ("", ["serve.bench_streams=64,0"], "serve.bench_streams must be positive whole numbers"),
        ("", ["serve.bench_streams=64,100", "serve.bench_processes=3"],
         "serve.bench_processes must be a positive divisor"),
        ("", ["serve.bench_processes=0"], "serve.bench_processes must be a positive divisor"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_rendered_config_is_documented_and_loads_back(tmp_path):
    text = render_config()
    assert "# Checkpoint to start from" in text
    path = tmp_path / "full.yaml"
    path.write_text(text)
    assert load_config(path) == Config()
    assert yaml.safe_load(text)["model"]["source"] == "tiny"


def test_organism_codebook_dropout_reaches_the_base_and_served_starts_only_the_fine_tune():
    from pipeline.organism import organism_train_config

    cfg = load_config(None, ["organism.codebook_dropout=0.5"])
    assert organism_train_config(cfg).train.codebook_dropout == 0.5
    assert cfg.train.codebook_dropout == 0.0  # what `invoke train` (the LoRA) reads
    cfg = load_config(None, ["train.served_starts=0.5"])
    assert organism_train_config(cfg).train.served_starts == 0.0 and cfg.train.served_starts == 0.5  # the LoRA's alone
