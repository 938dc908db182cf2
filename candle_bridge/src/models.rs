//! The Rust models exactly as the production runtime constructs them. Used for recording the
//! expected tensors and for the real load, so both passes run the same constructor code.

use candle_nn::VarBuilder;
use moshi::lm::LmModel;
use moshi::mimi::Mimi;
use moshi::nn::MaybeQuantizedVarBuilder;

pub fn build_lm(cfg: &moshi::lm::Config, vb: VarBuilder) -> candle::Result<LmModel> {
    LmModel::new(cfg, MaybeQuantizedVarBuilder::Real(vb))
}

pub fn build_mimi(cfg: &moshi::mimi::Config, vb: VarBuilder) -> candle::Result<Mimi> {
    Mimi::new(cfg.clone(), vb)
}

/// The LM as moshi-server's `BatchedAsr` builds it (`LmModel::batched`).
pub fn build_lm_batched(
    cfg: &moshi::lm::Config,
    batch_size: usize,
    vb: VarBuilder,
) -> candle::Result<LmModel> {
    LmModel::batched(batch_size, cfg, MaybeQuantizedVarBuilder::Real(vb))
}

/// Mimi as moshi-server's `BatchedAsr` builds it (`Mimi::batched`).
pub fn build_mimi_batched(
    cfg: &moshi::mimi::Config,
    batch_size: usize,
    vb: VarBuilder,
) -> candle::Result<Mimi> {
    Mimi::batched(batch_size, cfg.clone(), vb)
}
