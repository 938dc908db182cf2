//! Config mapping and the one-line errors for bad checkpoints.

mod common;

use candle::DType;
use candle_bridge::{check_checkpoint, lm_config_from_json, mimi_config_from_json};
use common::{lm_json, mimi_json, write_checkpoint, write_configs, LM_FILE};
use serde_json::Value;
use std::path::Path;
use tempfile::TempDir;

/// The error `check_checkpoint` gives for this pair of configs (no weights are needed: configs
/// are checked first).
fn config_error(lm: &Value, mimi: &Value) -> String {
    let dir = TempDir::new().unwrap();
    write_configs(dir.path(), lm, mimi);
    let err = check_checkpoint(dir.path(), DType::BF16).unwrap_err();
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

#[test]
fn lm_config_maps_pytorch_keys() {
    let cfg = lm_config_from_json(&lm_json(), Path::new("config.json")).unwrap();
    assert_eq!(cfg.text_in_vocab_size, 101);
    assert_eq!(cfg.text_out_vocab_size, 100);
    assert_eq!(cfg.audio_vocab_size, 65);
    assert_eq!(cfg.audio_codebooks, 4);
    assert!(cfg.depformer.is_none());
    assert_eq!(cfg.transformer.dim_feedforward, 132); // int(4.125 * 32)
    assert_eq!(cfg.transformer.max_period, 100_000);
    assert_eq!(cfg.transformer.layer_scale, None);
    let heads = cfg.extra_heads.unwrap();
    assert_eq!((heads.num_heads, heads.dim), (4, 6));

    let mut no_heads = lm_json();
    no_heads
        .as_object_mut()
        .unwrap()
        .remove("extra_heads_num_heads");
    assert!(lm_config_from_json(&no_heads, Path::new("config.json"))
        .unwrap()
        .extra_heads
        .is_none());
}

#[test]
fn mimi_config_uses_the_lm_codebook_count() {
    let cfg = mimi_config_from_json(&mimi_json(), Path::new("mimi_config.json"), 3).unwrap();
    assert_eq!(cfg.quantizer_n_q, 3);
    assert_eq!(cfg.seanet.ratios, vec![8, 6, 5, 4]);
    assert_eq!(cfg.transformer.layer_scale, Some(0.01));
}

#[test]
fn nonzero_dep_q_is_rejected() {
    let mut lm = lm_json();
    lm["dep_q"] = 8.into();
    let msg = config_error(&lm, &mimi_json());
    assert!(
        msg.contains("config.json: field `dep_q`: must be 0"),
        "{msg}"
    );
}

#[test]
fn missing_dim_is_named() {
    let mut lm = lm_json();
    lm.as_object_mut().unwrap().remove("dim");
    let msg = config_error(&lm, &mimi_json());
    assert!(msg.contains("config.json: field `dim`: missing"), "{msg}");
}

#[test]
fn gated_feedforward_of_four_dim_is_rejected() {
    let mut lm = lm_json();
    lm["hidden_scale"] = 4.0.into();
    let msg = config_error(&lm, &mimi_json());
    assert!(msg.contains("field `hidden_scale`"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let mut lm = lm_json();
    lm["num_layers"] = "two".into();
    let msg = config_error(&lm, &mimi_json());
    assert!(
        msg.contains("field `num_layers`: expected a non-negative integer, got \"two\""),
        "{msg}"
    );
}

#[test]
fn nested_mimi_field_is_named() {
    let mut mimi = mimi_json();
    mimi["seanet"]["norm"] = "time_group_norm".into();
    let msg = config_error(&lm_json(), &mimi);
    assert!(
        msg.contains("mimi_config.json: field `seanet.norm`: unsupported value"),
        "{msg}"
    );
}

#[test]
fn missing_directory_names_config_json() {
    let err = check_checkpoint(Path::new("/nonexistent/ckpt"), DType::BF16).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("/nonexistent/ckpt/config.json: cannot read"),
        "{msg}"
    );
}

#[test]
fn missing_weights_file_is_named() {
    let dir = TempDir::new().unwrap();
    write_checkpoint(dir.path(), &lm_json(), DType::BF16);
    std::fs::remove_file(dir.path().join(LM_FILE)).unwrap();
    let msg = format!(
        "{:#}",
        check_checkpoint(dir.path(), DType::BF16).unwrap_err()
    );
    assert!(msg.contains("model.safetensors: file not found"), "{msg}");
}
