//! A `VarBuilder` backend that records which tensors a moshi constructor asks for, so the
//! expected tensor names and shapes come from the Rust model code itself rather than from a
//! hand-written list.

use candle::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// What a constructor asked of its `VarBuilder`.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    /// Tensor name -> shape the constructor expects.
    pub tensors: BTreeMap<String, Vec<usize>>,
    /// Names the constructor probed with `contains_tensor` and was told are absent; it then
    /// fell back to alternative names (e.g. conv `weight_g`/`weight_v` instead of `weight`).
    pub probed_absent: BTreeSet<String>,
}

/// Runs `build` against a recording backend and returns what it asked for.
///
/// `has_tensor` answers the constructors' `contains_tensor` probes; pass the real file's index
/// so that branches (plain vs weight-norm conv weights, LayerNorm `alpha` vs `weight`) follow
/// what the file holds. Every `get` returns a zero scalar broadcast to the requested shape,
/// so recording a 1B model allocates next to nothing.
pub fn record_requests<T>(
    has_tensor: &(dyn Fn(&str) -> bool + Sync),
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> candle::Result<T>,
) -> candle::Result<Requests> {
    let log = Mutex::new(Requests::default());
    let backend = Recorder {
        has_tensor,
        log: &log,
    };
    build(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        Device::Cpu,
    ))?;
    Ok(log.into_inner().expect("recorder lock poisoned"))
}

struct Recorder<'a> {
    has_tensor: &'a (dyn Fn(&str) -> bool + Sync),
    log: &'a Mutex<Requests>,
}

impl SimpleBackend for Recorder<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle::Result<Tensor> {
        let mut log = self.log.lock().expect("recorder lock poisoned");
        // First request wins: moshi never asks for one name with two shapes.
        log.tensors
            .entry(name.to_string())
            .or_insert_with(|| shape.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let present = (self.has_tensor)(name);
        if !present {
            self.log
                .lock()
                .expect("recorder lock poisoned")
                .probed_absent
                .insert(name.to_string());
        }
        present
    }
}
