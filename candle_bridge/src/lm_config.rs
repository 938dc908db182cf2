//! Maps a PyTorch-moshi `config.json` (LM keys) onto `moshi::lm::Config`.

use crate::json_fields::Fields;
use crate::transformer_keys::{
    check_gated_feedforward, parse_gating, parse_norm, parse_positional_embedding,
};
use anyhow::Result;
use moshi::lm::{Config, ExtraHeadsConfig};
use moshi::transformer;
use moshi::NormType;
use serde_json::Value;
use std::path::Path;

/// Builds the Rust LM config from the PyTorch config.json contents; `file` is only used in
/// error messages. Only text-only models (no depformer, no conditioners) are supported.
pub fn lm_config_from_json(json: &Value, file: &Path) -> Result<Config> {
    let f = Fields::root(file, json)?;

    let dim = f.usize("dim")?;
    let num_heads = f.usize("num_heads")?;
    if num_heads == 0 || dim % num_heads != 0 {
        return Err(f.error(
            "num_heads",
            format!("must be > 0 and divide `dim` ({dim}), got {num_heads}"),
        ));
    }

    let dep_q = f.usize("dep_q")?;
    if dep_q != 0 {
        return Err(f.error(
            "dep_q",
            format!("must be 0 (only text-only STT models without a depformer are supported), got {dep_q}"),
        ));
    }
    let n_q = f.usize("n_q")?;

    let gating = parse_gating(&f, "gating")?;
    let hidden_scale = f.f64("hidden_scale")?;
    // Same rounding as PyTorch's `int(hidden_scale * dim)`.
    let dim_feedforward = (hidden_scale * dim as f64) as usize;
    check_gated_feedforward(&f, "hidden_scale", gating, dim, dim_feedforward)?;

    let transformer = transformer::Config {
        d_model: dim,
        num_heads,
        num_layers: f.usize("num_layers")?,
        causal: f.bool_or("causal", true)?,
        norm_first: true,
        bias_ff: false,
        bias_attn: false,
        layer_scale: f.opt_f64("layer_scale")?,
        positional_embedding: parse_positional_embedding(&f, "positional_embedding")?,
        use_conv_block: false,
        cross_attention: parse_cross_attention(&f)?,
        // Only read when `use_conv_block` is set, which it never is here.
        conv_kernel_size: 3,
        use_conv_bias: true,
        gating,
        norm: parse_norm(&f, "norm")?,
        context: f.usize("context")?,
        max_period: f.usize("max_period")?,
        // Not read by moshi 0.6.4 (the KV cache is sized by `context`); 4096 as in moshi's presets.
        max_seq_len: 4096,
        kv_repeat: 1,
        dim_feedforward,
        conv_layout: false,
        shared_cross_attn: false,
    };

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
        audio_codebooks: n_q,
        conditioners: parse_conditioners(&f)?,
        extra_heads: parse_extra_heads(&f)?,
    })
}

type CrossAttention = Option<(transformer::CrossAttentionGating, NormType, Option<usize>)>;

fn parse_cross_attention(f: &Fields) -> Result<CrossAttention> {
    if f.bool_or("cross_attention", false)? {
        return Err(f.error(
            "cross_attention",
            "must be false (cross-attention models are not supported)",
        ));
    }
    Ok(None)
}

fn parse_conditioners(f: &Fields) -> Result<Option<moshi::conditioner::Config>> {
    match f.opt_object("conditioners")? {
        Some(c) if c.len() > 0 => Err(f.error(
            "conditioners",
            "must be empty (conditioned models are not supported)",
        )),
        _ => Ok(None),
    }
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
