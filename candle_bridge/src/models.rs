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
