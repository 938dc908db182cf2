//! Maps a moshi-Python Mimi config (the JSON named by `mimi_config_name`) onto
//! `moshi::mimi::Config`.

use crate::json_fields::Fields;
use crate::transformer_keys::{transformer_config, FeedForward, TransformerSpec};
use anyhow::Result;
use candle_nn::Activation;
use moshi::conv::{Norm, PadMode};
use moshi::mimi::{Config, ResampleMethod};
use moshi::seanet;
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
    let transformer = transformer_config(
        &t,
        TransformerSpec {
            d_model_key: "d_model",
            feedforward: FeedForward::DimFeedforward,
            // The values of moshi's `mimi::Config::v0_1`.
            conv_kernel_size: 5,
            max_seq_len: 8192,
            conv_layout: t.bool_or("conv_layout", true)?,
        },
    )?;

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
