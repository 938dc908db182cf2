//! Compares what the Rust models expect with what a checkpoint's safetensors files hold, then
//! loads the models for real when the tensors line up.

use crate::models::{build_lm, build_mimi};
use crate::recorder::{record_requests, Requests};
use crate::safetensors_header::{read_tensor_index, TensorInfo};
use crate::Checkpoint;
use anyhow::{Context, Result};
use candle::{DType, Device};
use candle_nn::VarBuilder;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub checkpoint: String,
    pub lm: PartReport,
    pub mimi: PartReport,
    /// Both parts are clean and loaded.
    pub ok: bool,
}

/// The report for one weights file. All name lists are sorted.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub file: String,
    pub expected_dtype: String,
    /// Tensors the Rust constructor asked for.
    pub expected_count: usize,
    /// Tensors in the file.
    pub found_count: usize,
    /// Expected but absent from the file.
    pub missing: Vec<String>,
    /// In the file but never asked for.
    pub unexpected: Vec<String>,
    /// Mimi codebooks past the ones the LM reads: a standard Mimi file holds all 32 (Kyutai's
    /// does) and a model with fewer codebooks reads the first `n_q`. Informational, not a problem.
    pub unread_codebooks: Vec<String>,
    pub wrong_shape: Vec<WrongShape>,
    /// File tensors whose dtype is not `expected_dtype`.
    pub wrong_dtype: Vec<WrongDtype>,
    /// Names the constructor checked for and did not find, before falling back to
    /// alternatives (e.g. LayerNorm `alpha` -> `weight`). Informational, not a problem.
    pub probed_absent: Vec<String>,
    /// Every tensor in the file.
    pub tensors: Vec<TensorEntry>,
    pub loaded: bool,
    /// Why the real load failed, or why it was not attempted.
    pub load_error: Option<String>,
    /// Duration of the real load; 0 when it was not attempted.
    pub load_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WrongShape {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WrongDtype {
    pub name: String,
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

impl PartReport {
    /// Moves the unexpected tensors of codebooks `n_q..` (the acoustic quantizer's layers
    /// `n_q - 1..`) to `unread_codebooks`.
    pub fn set_aside_unread_codebooks(&mut self, n_q: usize) {
        let (unread, unexpected) = std::mem::take(&mut self.unexpected)
            .into_iter()
            .partition(|name| is_unread_codebook(name, n_q));
        self.unexpected = unexpected;
        self.unread_codebooks = unread;
    }

    /// No tensor problem of any kind and the model loaded.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_shape.is_empty()
            && self.wrong_dtype.is_empty()
            && self.loaded
    }
}

/// Checks the checkpoint in `dir` against the Rust moshi LM and Mimi. `lm_dtype` is the dtype
/// the LM weights should be stored in; Mimi weights are expected in f32.
pub fn check_checkpoint(dir: &Path, lm_dtype: DType) -> Result<CheckpointReport> {
    let ckpt = Checkpoint::open(dir)?;
    let lm = check_part(&ckpt.lm_file, lm_dtype, |vb| build_lm(&ckpt.lm, vb))?;
    let mut mimi = check_part(&ckpt.mimi_file, DType::F32, |vb| build_mimi(&ckpt.mimi, vb))?;
    mimi.set_aside_unread_codebooks(ckpt.mimi.quantizer_n_q);
    let ok = lm.is_clean() && mimi.is_clean();
    Ok(CheckpointReport {
        checkpoint: dir.display().to_string(),
        lm,
        mimi,
        ok,
    })
}

fn check_part<T>(
    file: &Path,
    expected_dtype: DType,
    build: impl Fn(VarBuilder) -> candle::Result<T>,
) -> Result<PartReport> {
    let found = read_tensor_index(file)?;
    let requests = record_requests(&|name| found.contains_key(name), expected_dtype, &build)
        .with_context(|| {
            format!(
                "{}: the Rust model cannot be built from this config",
                file.display()
            )
        })?;
    let mut report = compare(file, expected_dtype, &requests, &found);

    // Loading with missing or misshaped tensors would only fail on the first one; the lists
    // above already say more.
    if report.missing.is_empty() && report.wrong_shape.is_empty() {
        let start = Instant::now();
        // SAFETY: the mapping is read-only and dropped (with the model) before returning; the
        // file must not be modified meanwhile, which holds for a checkpoint being verified.
        let loaded =
            unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
                .and_then(|vb| build(vb).map(drop));
        report.load_seconds = start.elapsed().as_secs_f64();
        report.loaded = loaded.is_ok();
        report.load_error = loaded.err().map(|e| e.to_string());
    } else {
        report.load_error = Some(format!(
            "not attempted: {} missing and {} misshaped tensors",
            report.missing.len(),
            report.wrong_shape.len()
        ));
    }
    Ok(report)
}

/// `quantizer.rvq_rest.vq.layers.{i}._codebook.*` with codebook `i + 1` (the first codebook is
/// `rvq_first`'s) at or past `n_q`.
fn is_unread_codebook(name: &str, n_q: usize) -> bool {
    let Some((layer, tail)) = name
        .strip_prefix("quantizer.rvq_rest.vq.layers.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    tail.starts_with("_codebook.") && layer.parse::<usize>().is_ok_and(|i| i + 1 >= n_q)
}

fn compare(
    file: &Path,
    expected_dtype: DType,
    requests: &Requests,
    found: &BTreeMap<String, TensorInfo>,
) -> PartReport {
    let expected = &requests.tensors;
    PartReport {
        file: file.display().to_string(),
        expected_dtype: expected_dtype.as_str().to_string(),
        expected_count: expected.len(),
        found_count: found.len(),
        missing: expected
            .keys()
            .filter(|n| !found.contains_key(*n))
            .cloned()
            .collect(),
        unexpected: found
            .keys()
            .filter(|n| !expected.contains_key(*n))
            .cloned()
            .collect(),
        unread_codebooks: Vec::new(),
        wrong_shape: expected
            .iter()
            .filter_map(|(name, shape)| {
                let info = found.get(name).filter(|info| &info.shape != shape)?;
                Some(WrongShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: info.shape.clone(),
                })
            })
            .collect(),
        wrong_dtype: found
            .iter()
            .filter(|(_, info)| info.dtype != expected_dtype.as_str())
            .map(|(name, info)| WrongDtype {
                name: name.clone(),
                dtype: info.dtype.clone(),
            })
            .collect(),
        probed_absent: requests.probed_absent.iter().cloned().collect(),
        tensors: found
            .iter()
            .map(|(name, info)| TensorEntry {
                name: name.clone(),
                shape: info.shape.clone(),
                dtype: info.dtype.clone(),
            })
            .collect(),
        loaded: false,
        load_error: None,
        load_seconds: 0.0,
    }
}
