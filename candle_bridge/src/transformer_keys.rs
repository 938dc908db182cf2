//! The `moshi::transformer::Config` of the LM and of Mimi, built from PyTorch-moshi transformer
//! keys by one function, so the two cannot drift apart on what they share.

use crate::json_fields::Fields;
use anyhow::Result;
use candle_nn::Activation;
use moshi::transformer::{self, PositionalEmbedding};
use moshi::NormType;

/// What differs between the LM and the Mimi transformer; [`transformer_config`] reads or fixes
/// everything else the same way for both.
pub(crate) struct TransformerSpec {
    /// Key of the model width: `dim` in the LM config, `d_model` in Mimi's.
    pub d_model_key: &'static str,
    pub feedforward: FeedForward,
    /// Only read when `use_conv_block` is set, which it never is here; the value of the
    /// matching moshi preset.
    pub conv_kernel_size: usize,
    /// Not read by moshi 0.6.4 (the KV cache is sized by `context`); the value of the matching
    /// moshi preset.
    pub max_seq_len: usize,
    pub conv_layout: bool,
}

/// How the config gives the feed-forward size.
pub(crate) enum FeedForward {
    /// `hidden_scale` times the width (the LM config).
    HiddenScale,
    /// `dim_feedforward` itself (the Mimi config).
    DimFeedforward,
}

impl FeedForward {
    fn key(&self) -> &'static str {
        match self {
            FeedForward::HiddenScale => "hidden_scale",
            FeedForward::DimFeedforward => "dim_feedforward",
        }
    }

    fn read(&self, f: &Fields, d_model: usize) -> Result<usize> {
        match self {
            // Same rounding as PyTorch's `int(hidden_scale * dim)`.
            FeedForward::HiddenScale => Ok((f.f64(self.key())? * d_model as f64) as usize),
            FeedForward::DimFeedforward => f.usize(self.key()),
        }
    }
}

/// The transformer config from the keys of `f`. Neither model has cross-attention here: the
/// LM config rejects it before this is called and Mimi has none.
pub(crate) fn transformer_config(f: &Fields, spec: TransformerSpec) -> Result<transformer::Config> {
    let d_model = f.usize(spec.d_model_key)?;
    let num_heads = f.usize("num_heads")?;
    if num_heads == 0 || d_model % num_heads != 0 {
        return Err(f.error(
            "num_heads",
            format!(
                "must be > 0 and divide `{}` ({d_model}), got {num_heads}",
                spec.d_model_key
            ),
        ));
    }
    let gating = parse_gating(f, "gating")?;
    let dim_feedforward = spec.feedforward.read(f, d_model)?;
    check_gated_feedforward(f, spec.feedforward.key(), gating, d_model, dim_feedforward)?;
    Ok(transformer::Config {
        d_model,
        num_heads,
        num_layers: f.usize("num_layers")?,
        causal: f.bool_or("causal", true)?,
        // PyTorch-moshi's transformer layers are always pre-norm with bias-free linears, and
        // neither config sets `kv_repeat` (default 1) or uses a conv block.
        norm_first: true,
        bias_ff: false,
        bias_attn: false,
        layer_scale: f.opt_f64("layer_scale")?,
        positional_embedding: parse_positional_embedding(f, "positional_embedding")?,
        use_conv_block: false,
        cross_attention: None,
        conv_kernel_size: spec.conv_kernel_size,
        use_conv_bias: true,
        gating,
        norm: parse_norm(f, "norm")?,
        context: f.usize("context")?,
        max_period: f.usize("max_period")?,
        max_seq_len: spec.max_seq_len,
        kv_repeat: 1,
        dim_feedforward,
        conv_layout: spec.conv_layout,
        shared_cross_attn: false,
    })
}

fn parse_gating(f: &Fields, key: &str) -> Result<Option<Activation>> {
    match f.str(key)? {
        "none" => Ok(None),
        "silu" => Ok(Some(Activation::Silu)),
        other => Err(f.error(
            key,
            format!("unsupported value {other:?} (expected \"silu\" or \"none\")"),
        )),
    }
}

/// PyTorch sizes a gated MLP with `dim_feedforward == 4 * dim` as 21*dim/8 while Rust moshi
/// uses 11*dim/4, so such a checkpoint cannot load; any other ratio gives 2*dff/3 on both sides.
fn check_gated_feedforward(
    f: &Fields,
    key: &str,
    gating: Option<Activation>,
    dim: usize,
    dim_feedforward: usize,
) -> Result<()> {
    if gating.is_some() && dim_feedforward == 4 * dim {
        return Err(f.error(
            key,
            "makes the gated feed-forward exactly 4*dim, which PyTorch (hidden 21*dim/8) and Rust moshi (11*dim/4) size differently; pick another size (e.g. hidden_scale 4.125)",
        ));
    }
    Ok(())
}

fn parse_norm(f: &Fields, key: &str) -> Result<NormType> {
    match f.str(key)? {
        // "rms_norm_f32" only changes the compute dtype in PyTorch; the weights are the same.
        "rms_norm" | "rms_norm_f32" => Ok(NormType::RmsNorm),
        "layer_norm" => Ok(NormType::LayerNorm),
        other => Err(f.error(
            key,
            format!("unsupported value {other:?} (expected \"rms_norm_f32\", \"rms_norm\" or \"layer_norm\")"),
        )),
    }
}

fn parse_positional_embedding(f: &Fields, key: &str) -> Result<PositionalEmbedding> {
    match f.str(key)? {
        "rope" => Ok(PositionalEmbedding::Rope),
        "sin" => Ok(PositionalEmbedding::Sin),
        "none" => Ok(PositionalEmbedding::None),
        other => Err(f.error(
            key,
            format!("unsupported value {other:?} (expected \"rope\", \"sin\" or \"none\")"),
        )),
    }
}
