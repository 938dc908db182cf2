//! Builds tiny fixture checkpoints whose tensors come from the Rust models' own requests, so no
//! tensor name is written down here.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use candle::{DType, Device, Tensor};
use candle_bridge::{
    build_lm, build_mimi, lm_config_from_json, mimi_config_from_json, record_requests,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use tempfile::TempDir;

pub const LM_FILE: &str = "model.safetensors";
pub const MIMI_FILE: &str = "mimi.safetensors";
const MIMI_CONFIG_FILE: &str = "mimi_config.json";

/// A tiny LM in the PyTorch config.json format of kyutai/stt-1b-en_fr.
pub fn lm_json() -> Value {
    json!({
        "card": 64, "n_q": 4, "dep_q": 0, "delays": [0, 0, 0, 0, 0],
        "dim": 32, "text_card": 100, "existing_text_padding_id": 3,
        "num_heads": 2, "num_layers": 2, "hidden_scale": 4.125,
        "causal": true, "layer_scale": null, "context": 50,
        // A float on purpose: Python writes it that way.
        "max_period": 100000.0,
        "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "depformer_dim": 16, "extra_heads_num_heads": 4, "extra_heads_dim": 6,
        "conditioners": {}, "cross_attention": false, "model_type": "stt",
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
        "mimi_name": MIMI_FILE, "mimi_config_name": MIMI_CONFIG_FILE
    })
}

/// A tiny Mimi in moshi-Python's mimi-config format.
pub fn mimi_json() -> Value {
    json!({
        "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
        "seanet": {
            "channels": 1, "dimension": 16, "causal": true, "n_filters": 4,
            "n_residual_layers": 1, "activation": "ELU", "compress": 2, "dilation_base": 2,
            "disable_norm_outer_blocks": 0, "kernel_size": 7, "residual_kernel_size": 3,
            "last_kernel_size": 3, "norm": "none", "pad_mode": "constant",
            "ratios": [8, 6, 5, 4], "true_skip": true
        },
        "quantizer": {"dimension": 8, "n_q": 4, "bins": 64, "input_dimension": 16, "output_dimension": 16},
        "transformer": {
            "d_model": 16, "num_heads": 2, "num_layers": 1, "causal": true, "layer_scale": 0.01,
            "context": 250, "conv_layout": true, "max_period": 10000, "gating": "none",
            "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 32,
            "input_dimension": 16, "output_dimensions": [16]
        }
    })
}

/// Writes config.json and the Mimi config.
pub fn write_configs(dir: &Path, lm: &Value, mimi: &Value) {
    std::fs::write(dir.join("config.json"), lm.to_string()).unwrap();
    std::fs::write(dir.join(MIMI_CONFIG_FILE), mimi.to_string()).unwrap();
}

/// Writes a complete, consistent checkpoint: configs plus random weights for exactly the
/// tensors the Rust models request, the LM in `lm_dtype` and Mimi in f32.
pub fn write_checkpoint(dir: &Path, lm: &Value, lm_dtype: DType) {
    write_configs(dir, lm, &mimi_json());
    write_weights(dir, lm, lm_dtype);
}

/// Writes the weight files only, as the models described by `lm` (and the tiny Mimi) want them.
pub fn write_weights(dir: &Path, lm: &Value, lm_dtype: DType) {
    let lm_cfg = lm_config_from_json(lm, Path::new("config.json")).unwrap();
    let mimi_cfg = mimi_config_from_json(
        &mimi_json(),
        Path::new(MIMI_CONFIG_FILE),
        lm_cfg.audio_codebooks,
    )
    .unwrap();
    // Answers the constructors' probes the way a PyTorch export looks: plain `weight` tensors
    // rather than the weight-norm (`weight_g`/`weight_v`) or LayerNorm `alpha` alternatives.
    let pytorch_names = |name: &str| name.ends_with(".weight");
    let lm_req = record_requests(&pytorch_names, lm_dtype, |vb| build_lm(&lm_cfg, vb)).unwrap();
    let mimi_req =
        record_requests(&pytorch_names, DType::F32, |vb| build_mimi(&mimi_cfg, vb)).unwrap();
    save(
        &dir.join(LM_FILE),
        random_tensors(&lm_req.tensors, lm_dtype),
    );
    save(
        &dir.join(MIMI_FILE),
        random_tensors(&mimi_req.tensors, DType::F32),
    );
}

/// Loads a weights file, lets `edit` change it, and saves it back.
pub fn edit_weights(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    save(path, tensors);
}

fn random_tensors<'a>(
    shapes: impl IntoIterator<Item = (&'a String, &'a Vec<usize>)>,
    dtype: DType,
) -> HashMap<String, Tensor> {
    shapes
        .into_iter()
        .map(|(name, shape)| {
            // Seeded by the tensor's name, so every fixture (and every failure) is the same on
            // every run: uniform with std 0.02.
            let seed = name.bytes().fold(1469598103934665603u64, |h, b| {
                (h ^ b as u64).wrapping_mul(1099511628211)
            });
            let n: usize = shape.iter().product();
            let values: Vec<f32> = uniform(n, seed)
                .into_iter()
                .map(|u| (u - 0.5) * 0.02 * 12f32.sqrt())
                .collect();
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
            (name.clone(), t.to_dtype(dtype).unwrap())
        })
        .collect()
}

fn save(path: &Path, tensors: HashMap<String, Tensor>) {
    candle::safetensors::save(&tensors, path).unwrap();
}

pub const FRAME: usize = 1920;
pub const TEXT_CARD: usize = 100;

/// A fixture whose Mimi codes and greedy text tokens change from step to step, the tokens
/// including the word ends 0 and 3; otherwise the comparisons below would test little.
///
/// The common fixture's weights (std 0.02, seeded by name) shrink the signal layer by layer, so Mimi gives the
/// same codes for any audio: rescale its matrices to std 1/sqrt(fan_in) and its cluster usage
/// to 1. The LM's text logits are
/// nearly flat and the argmax barely moves, so no word would ever be closed: keep a few rows of
/// `text_linear`, scaled up, and zero the others.
pub fn fixture() -> TempDir {
    let dir = TempDir::new().unwrap();
    write_checkpoint(dir.path(), &lm_json(), DType::BF16);
    edit_weights(&dir.path().join(MIMI_FILE), |tensors| {
        for (name, t) in tensors.iter_mut() {
            if name.ends_with("cluster_usage") {
                // Codebook entries are embedding_sum / cluster_usage: keep them near the latents.
                *t = t.ones_like().unwrap();
            } else if t.rank() >= 2 {
                let fan_in: usize = t.dims()[1..].iter().product();
                *t = (&*t * (1.0 / (0.02 * (fan_in as f64).sqrt()))).unwrap();
            }
        }
    });
    edit_weights(&dir.path().join(LM_FILE), |tensors| {
        let name = "text_linear.weight".to_string();
        let scale: Vec<f32> = (0..TEXT_CARD)
            .map(|i| {
                if [0, 3, 10, 11, 12].contains(&i) {
                    300.0
                } else {
                    0.0
                }
            })
            .collect();
        let scale = Tensor::from_vec(scale, (TEXT_CARD, 1), &Device::Cpu).unwrap();
        let w = tensors[&name].to_dtype(DType::F32).unwrap();
        let w = w
            .broadcast_mul(&scale)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        tensors.insert(name, w);
    });
    dir
}

/// Deterministic pseudo-random numbers in [0, 1) (a 64-bit LCG), so failures reproduce.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `frames` frames of noise in [-0.5, 0.5).
pub fn noise(frames: usize) -> Vec<f32> {
    uniform(frames * FRAME, 2)
        .into_iter()
        .map(|u| u - 0.5)
        .collect()
}
