//! Maps a moshi-Python Mimi config (the JSON named by `mimi_config_name`) onto
//! `moshi::mimi::Config`.

use crate::json_fields::Fields;
use crate::transformer_keys::{
    check_gated_feedforward, parse_gating, parse_norm, parse_positional_embedding,
};
use anyhow::Result;
use candle_nn::Activation;
use moshi::conv::{Norm, PadMode};
use moshi::mimi::{Config, ResampleMethod};
use moshi::{seanet, transformer};
use serde_json::Value;
use std::path::Path;

/// Builds the Rust Mimi config from moshi-Python's mimi-config format; `file` is only used in
/// error messages. `n_q` is the number of codebooks the LM consumes, which is how many the
/// Rust Mimi instantiates (the file may hold more, see `quantizer.n_q`).
pub fn mimi_config_from_json(json: &Value, file: &Path, n_q: usize) -> Result<Config> {
    let f = Fields::root(file, json)?;
    let seanet = seanet_config(&f.object("seanet")?)?;
    let dim = seanet.dimension;

    let t = f.object("transformer")?;
    // Rust moshi wires the transformer projections to the SEANet dimension, whatever the config says.
    if t.usize("input_dimension")? != dim {
        return Err(t.error(
            "input_dimension",
            format!("must equal seanet.dimension ({dim})"),
        ));
    }
    if t.usize_list("output_dimensions")? != [dim] {
        return Err(t.error(
            "output_dimensions",
            format!("must be [{dim}] (seanet.dimension)"),
        ));
    }
    let transformer = transformer_config(&t)?;

    let q = f.object("quantizer")?;
    for key in ["input_dimension", "output_dimension"] {
        if q.usize(key)? != dim {
            return Err(q.error(key, format!("must equal seanet.dimension ({dim})")));
        }
    }
    let file_n_q = q.usize("n_q")?;
    if n_q == 0 || n_q > file_n_q {
        return Err(q.error(
            "n_q",
            format!("is {file_n_q}, but the LM needs {n_q} codebooks (config.json `n_q`)"),
        ));
    }

    Ok(Config {
        channels: f.usize("channels")?,
        sample_rate: f.f64("sample_rate")?,
        frame_rate: f.f64("frame_rate")?,
        // Not read by the Rust Mimi constructor; same values as moshi's `Config::v0_1`.
        renormalize: true,
        resample_method: ResampleMethod::Conv,
        seanet,
        transformer,
        quantizer_n_q: n_q,
        quantizer_bins: q.usize("bins")?,
        quantizer_dim: q.usize("dimension")?,
    })
}

fn seanet_config(s: &Fields) -> Result<seanet::Config> {
    if s.usize_or("lstm", 0)? != 0 {
        return Err(s.error("lstm", "must be 0 (Rust moshi has no SEANet LSTM)"));
    }
    Ok(seanet::Config {
        dimension: s.usize("dimension")?,
        channels: s.usize("channels")?,
        causal: s.bool_or("causal", true)?,
        n_filters: s.usize("n_filters")?,
        n_residual_layers: s.usize("n_residual_layers")?,
        ratios: s.usize_list("ratios")?,
        activation: activation(s)?,
        norm: conv_norm(s)?,
        kernel_size: s.usize("kernel_size")?,
        residual_kernel_size: s.usize("residual_kernel_size")?,
        last_kernel_size: s.usize("last_kernel_size")?,
        dilation_base: s.usize("dilation_base")?,
        pad_mode: pad_mode(s)?,
        true_skip: s.bool_or("true_skip", true)?,
        compress: s.usize("compress")?,
        lstm: 0,
        disable_norm_outer_blocks: s.usize_or("disable_norm_outer_blocks", 0)?,
        final_activation: None,
    })
}

fn transformer_config(t: &Fields) -> Result<transformer::Config> {
    let d_model = t.usize("d_model")?;
    let num_heads = t.usize("num_heads")?;
    if num_heads == 0 || d_model % num_heads != 0 {
        return Err(t.error(
            "num_heads",
            format!("must be > 0 and divide `d_model` ({d_model}), got {num_heads}"),
        ));
    }
    let gating = parse_gating(t, "gating")?;
    let dim_feedforward = t.usize("dim_feedforward")?;
    check_gated_feedforward(t, "dim_feedforward", gating, d_model, dim_feedforward)?;
    Ok(transformer::Config {
        d_model,
        num_heads,
        num_layers: t.usize("num_layers")?,
        causal: t.bool_or("causal", true)?,
        norm_first: true,
        bias_ff: false,
        bias_attn: false,
        layer_scale: t.opt_f64("layer_scale")?,
        positional_embedding: parse_positional_embedding(t, "positional_embedding")?,
        use_conv_block: false,
        cross_attention: None,
        // Only read when `use_conv_block` is set, which it never is here.
        conv_kernel_size: 5,
        use_conv_bias: true,
        gating,
        norm: parse_norm(t, "norm")?,
        context: t.usize("context")?,
        max_period: t.usize("max_period")?,
        // Not read by moshi 0.6.4; same value as moshi's `mimi::Config::v0_1`.
        max_seq_len: 8192,
        kv_repeat: 1,
        dim_feedforward,
        conv_layout: t.bool_or("conv_layout", true)?,
        shared_cross_attn: false,
    })
}

fn activation(s: &Fields) -> Result<Activation> {
    match s.str("activation")? {
        "ELU" => {
            let alpha = match s.opt_object("activation_params")? {
                Some(p) => p.f64("alpha")?,
                None => 1.0, // moshi-Python's SEANet default.
            };
            Ok(Activation::Elu(alpha))
        }
        other => Err(s.error(
            "activation",
            format!("unsupported value {other:?} (expected \"ELU\")"),
        )),
    }
}

/// Rust `conv::Norm::WeightNorm` loads either a plain `weight` (what PyTorch "none" exports)
/// or `weight_g`/`weight_v`, and adds no extra layer. `TimeGroupNorm` would add a GroupNorm
/// that causal Mimi rejects, and there is no "no norm" variant.
fn conv_norm(s: &Fields) -> Result<Norm> {
    match s.str("norm")? {
        "none" | "weight_norm" => Ok(Norm::WeightNorm),
        other => Err(s.error(
            "norm",
            format!("unsupported value {other:?} (expected \"none\" or \"weight_norm\")"),
        )),
    }
}

fn pad_mode(s: &Fields) -> Result<PadMode> {
    match s.str("pad_mode")? {
        "constant" => Ok(PadMode::Constant),
        "replicate" => Ok(PadMode::Replicate),
        other => Err(s.error(
            "pad_mode",
            format!("unsupported value {other:?} (expected \"constant\" or \"replicate\")"),
        )),
    }
}
