//! Maps a PyTorch-moshi `config.json` (LM keys) onto `moshi::lm::Config`.

use crate::json_fields::Fields;
use crate::transformer_keys::{transformer_config, FeedForward, TransformerSpec};
use anyhow::Result;
use moshi::lm::{Config, ExtraHeadsConfig};
use serde_json::Value;
use std::path::Path;

/// Builds the Rust LM config from the PyTorch config.json contents; `file` is only used in
/// error messages. Only text-only models (no depformer, no cross-attention, no conditioners)
/// are supported.
pub fn lm_config_from_json(json: &Value, file: &Path) -> Result<Config> {
    let f = Fields::root(file, json)?;
    check_text_only(&f)?;
    let transformer = transformer_config(
        &f,
        TransformerSpec {
            d_model_key: "dim",
            feedforward: FeedForward::HiddenScale,
            // The values of moshi's LM presets (`lm::Config::v0_1` and the others).
            conv_kernel_size: 3,
            max_seq_len: 4096,
            conv_layout: false,
        },
    )?;

    let text_card = f.usize("text_card")?;
    Ok(Config {
        transformer,
        depformer: None,
        // +1 for the text start token, which is an input only.
        text_in_vocab_size: text_card + 1,
        text_out_vocab_size: text_card,
        // +1 for the audio padding token.
        audio_vocab_size: f.usize("card")? + 1,
        // n_q - dep_q in general; dep_q is 0 here.
        audio_codebooks: f.usize("n_q")?,
        conditioners: None,
        extra_heads: parse_extra_heads(&f)?,
    })
}

/// Rejects the model kinds this mapping does not support, naming the config key, rather than
/// letting them fail later on missing or unexpected tensors.
fn check_text_only(f: &Fields) -> Result<()> {
    let dep_q = f.usize("dep_q")?;
    if dep_q != 0 {
        return Err(f.error(
            "dep_q",
            format!("must be 0 (only text-only STT models without a depformer are supported), got {dep_q}"),
        ));
    }
    if f.bool_or("cross_attention", false)? {
        return Err(f.error(
            "cross_attention",
            "must be false (cross-attention models are not supported)",
        ));
    }
    // Absent or `{}` means no conditioners.
    if f.opt_object("conditioners")?.is_some_and(|c| !c.is_empty()) {
        return Err(f.error(
            "conditioners",
            "must be empty (conditioned models are not supported)",
        ));
    }
    Ok(())
}

fn parse_extra_heads(f: &Fields) -> Result<Option<ExtraHeadsConfig>> {
    match f.usize_or("extra_heads_num_heads", 0)? {
        0 => Ok(None),
        num_heads => Ok(Some(ExtraHeadsConfig {
            num_heads,
            dim: f.usize("extra_heads_dim")?,
        })),
    }
}
