//! End-to-end reports on tiny fixture checkpoints.

mod common;

use candle::{DType, Tensor};
use candle_bridge::{check_checkpoint, CheckpointReport, PartReport};
use common::{edit_weights, lm_json, write_checkpoint, write_configs, write_weights, LM_FILE, MIMI_FILE};
use tempfile::TempDir;

fn clean_fixture(lm_dtype: DType) -> TempDir {
    let dir = TempDir::new().unwrap();
    write_checkpoint(dir.path(), &lm_json(), lm_dtype);
    dir
}

fn check(dir: &TempDir) -> CheckpointReport {
    check_checkpoint(dir.path(), DType::BF16).unwrap()
}

fn assert_clean(part: &PartReport) {
    assert!(part.missing.is_empty(), "missing: {:?}", part.missing);
    assert!(
        part.unexpected.is_empty(),
        "unexpected: {:?}",
        part.unexpected
    );
    assert!(
        part.wrong_shape.is_empty(),
        "wrong_shape: {:?}",
        part.wrong_shape
    );
    assert!(
        part.wrong_dtype.is_empty(),
        "wrong_dtype: {:?}",
        part.wrong_dtype
    );
    assert!(part.loaded, "load_error: {:?}", part.load_error);
    assert_eq!(part.load_error, None);
    assert_eq!(part.expected_count + part.unread_codebooks.len(), part.found_count);
    assert_eq!(part.tensors.len(), part.found_count);
}

#[test]
fn clean_checkpoint_is_ok_and_loads() {
    let dir = clean_fixture(DType::BF16);
    let report = check(&dir);
    assert_clean(&report.lm);
    assert_clean(&report.mimi);
    assert!(report.ok);
    assert_eq!(report.lm.expected_dtype, "bf16");
    assert_eq!(report.mimi.expected_dtype, "f32");
    // The Rust Mimi probes for LayerNorm `alpha` before falling back to PyTorch's `weight`.
    assert!(report
        .mimi
        .probed_absent
        .iter()
        .any(|n| n.ends_with(".alpha")));
    // The report is what the Python side parses.
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], true);
    assert!(json["lm"]["tensors"][0]["shape"].is_array());
}

#[test]
fn renamed_tensor_is_missing_and_unexpected() {
    let dir = clean_fixture(DType::BF16);
    let lm_path = dir.path().join(LM_FILE);
    let mut name = String::new();
    edit_weights(&lm_path, |tensors| {
        name = tensors.keys().min().unwrap().clone();
        let t = tensors.remove(&name).unwrap();
        tensors.insert(format!("{name}_renamed"), t);
    });
    let report = check(&dir);
    assert_eq!(report.lm.missing, vec![name.clone()]);
    assert_eq!(report.lm.unexpected, vec![format!("{name}_renamed")]);
    assert!(!report.lm.loaded);
    assert!(report
        .lm
        .load_error
        .as_deref()
        .unwrap()
        .starts_with("not attempted"));
    assert_clean(&report.mimi);
    assert!(!report.ok);
}

#[test]
fn codebooks_past_the_ones_the_lm_reads_are_unread_not_unexpected() {
    // A standard Mimi file holds 32 codebooks (Kyutai's does); an LM with n_q = 4 reads the first
    // 4: rvq_first and rvq_rest layers 0..=2. Layers 3 and 4 of rvq_rest are codebooks 5 and 6.
    let dir = clean_fixture(DType::BF16);
    let prefix = "quantizer.rvq_rest.vq.layers.0._codebook.";
    let (mut unread, mut stray) = (vec![], String::new());
    edit_weights(&dir.path().join(MIMI_FILE), |tensors| {
        let mut first: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        first.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!first.is_empty());
        for layer in [3, 4] {
            for (name, t) in &first {
                let copy = name.replace("layers.0.", &format!("layers.{layer}."));
                unread.push(copy.clone());
                tensors.insert(copy, t.clone());
            }
        }
        stray = first[0].0.replace("layers.0.", "layers.2.") + "_stray";
    });
    unread.sort();
    let report = check(&dir);
    assert_eq!(report.mimi.unread_codebooks, unread);
    assert_clean(&report.mimi);
    assert!(report.ok);

    // A stray tensor beside a codebook the LM does read stays a problem.
    edit_weights(&dir.path().join(MIMI_FILE), |tensors| {
        let t = tensors[&format!("{prefix}embedding_sum")].clone();
        tensors.insert(stray.clone(), t);
    });
    let report = check(&dir);
    assert_eq!(report.mimi.unexpected, vec![stray]);
    assert!(!report.ok);
}

#[test]
fn wrong_shape_reports_both_shapes() {
    let dir = clean_fixture(DType::BF16);
    let lm_path = dir.path().join(LM_FILE);
    let (mut name, mut expected) = (String::new(), vec![]);
    edit_weights(&lm_path, |tensors| {
        let (n, t) = tensors
            .iter()
            .filter(|(_, t)| t.rank() == 2)
            .min_by_key(|(n, _)| *n)
            .unwrap();
        (name, expected) = (n.clone(), t.dims().to_vec());
        let longer = Tensor::cat(&[t, &t.narrow(0, 0, 1).unwrap()], 0).unwrap();
        tensors.insert(name.clone(), longer);
    });
    let report = check(&dir);
    assert_eq!(report.lm.wrong_shape.len(), 1);
    let wrong = &report.lm.wrong_shape[0];
    assert_eq!(wrong.name, name);
    assert_eq!(wrong.expected, expected);
    assert_eq!(wrong.found, vec![expected[0] + 1, expected[1]]);
    assert!(report.lm.missing.is_empty() && report.lm.unexpected.is_empty());
    assert!(!report.lm.loaded);
    assert!(!report.ok);
}

#[test]
fn removed_extra_heads_are_missing() {
    let dir = TempDir::new().unwrap();
    let mut without_heads = lm_json();
    without_heads["extra_heads_num_heads"] = 0.into();
    write_weights(dir.path(), &without_heads, DType::BF16);
    write_configs(dir.path(), &lm_json(), &common::mimi_json());
    let report = check(&dir);
    let expected: Vec<String> = (0..4).map(|i| format!("extra_heads.{i}.weight")).collect();
    assert_eq!(report.lm.missing, expected);
    assert!(report.lm.unexpected.is_empty());
    assert!(!report.ok);
}

#[test]
fn f32_lm_is_reported_as_wrong_dtype_but_loads() {
    let dir = clean_fixture(DType::F32);
    let report = check(&dir);
    assert_eq!(report.lm.wrong_dtype.len(), report.lm.found_count);
    assert!(report.lm.wrong_dtype.iter().all(|w| w.dtype == "f32"));
    assert!(report.lm.loaded, "load_error: {:?}", report.lm.load_error);
    assert!(!report.ok);

    let as_f32 = check_checkpoint(dir.path(), DType::F32).unwrap();
    assert!(as_f32.ok);
}
