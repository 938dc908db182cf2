//! PyTorch-moshi transformer options (strings in the JSON configs) mapped to the Rust enums,
//! shared by the LM and the Mimi config.

use crate::json_fields::Fields;
use anyhow::Result;
use candle_nn::Activation;
use moshi::transformer::PositionalEmbedding;
use moshi::NormType;

pub(crate) fn parse_gating(f: &Fields, key: &str) -> Result<Option<Activation>> {
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
pub(crate) fn check_gated_feedforward(
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

pub(crate) fn parse_norm(f: &Fields, key: &str) -> Result<NormType> {
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

pub(crate) fn parse_positional_embedding(f: &Fields, key: &str) -> Result<PositionalEmbedding> {
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
