//! The merge/export weight writer (`rewrite`): known answers across its 64-row chunks and its
//! 8 MiB blocks, the sha256 it returns, and a plan that does not match its header.

use candle::{DType, Device, Tensor};
use candle_bridge::{read_layout, rewrite, Entry, Source};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The 8-byte length and JSON header of a file holding (name, dtype, shape) in that order.
fn header(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let (mut fields, mut offset) = (Vec::new(), 0usize);
    for (name, dtype, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * if *dtype == "F32" { 4 } else { 2 };
        fields.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + bytes
        ));
        offset += bytes;
    }
    let mut json = format!("{{{}}}", fields.join(",")).into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    [(json.len() as u64).to_le_bytes().to_vec(), json].concat()
}

fn entry(name: &str, dtype: &str, source: Source) -> Entry {
    Entry {
        name: name.into(),
        key: name.into(),
        dtype: dtype.into(),
        source,
    }
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: std::collections::HashMap<_, _> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle::safetensors::save(&map, path).unwrap();
}

#[test]
fn a_merge_and_a_copy_bigger_than_a_block_come_out_exact() {
    let dir = tempfile::TempDir::new().unwrap();
    let cpu = &Device::Cpu;
    // 130 rows: three chunks of the merge. 2.5 M floats: a copy across two 8 MiB blocks.
    let w = Tensor::ones((130, 20), DType::BF16, cpu).unwrap();
    let big = Tensor::arange(0f32, 2_500_000f32, cpu).unwrap();
    save(
        &dir.path().join("base.safetensors"),
        &[("w", w), ("big", big.clone())],
    );
    let a = (Tensor::ones((2, 20), DType::F32, cpu).unwrap() * 0.25).unwrap();
    let b = (Tensor::ones((130, 2), DType::F32, cpu).unwrap() * 0.5).unwrap();
    save(&dir.path().join("lora.safetensors"), &[("A", a), ("B", b)]);

    let dst = dir.path().join("out.safetensors");
    let entries = [
        entry("big", "f32", Source::Base),
        entry(
            "w",
            "bf16",
            Source::Merge {
                a: "A".into(),
                b: "B".into(),
            },
        ),
    ];
    let head = header(&[("big", "F32", &[2_500_000]), ("w", "BF16", &[130, 20])]);
    let lora = dir.path().join("lora.safetensors");
    let done = rewrite(
        &dir.path().join("base.safetensors"),
        &dst,
        &head,
        &entries,
        Some(&lora),
        2.0,
    )
    .unwrap();

    // Each weight: 1 + 2 * (0.5 * 0.25 + 0.5 * 0.25) = 1.5, exact in bf16.
    let out = candle::safetensors::load(&dst, cpu).unwrap();
    let merged: Vec<f32> = out["w"]
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(merged.iter().all(|&v| v == 1.5), "{:?}", &merged[..4]);
    let copied: Vec<f32> = out["big"].to_vec1().unwrap();
    assert_eq!(copied, big.to_vec1::<f32>().unwrap());
    let n = (130 * 20) as f64;
    assert_eq!(
        (done.update, done.kept, done.error),
        (0.25 * n, 0.25 * n, 0.0)
    );
    let bytes = std::fs::read(&dst).unwrap();
    let want: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(done.sha256, want);
    assert_eq!(read_layout(&dst).unwrap().tensors.len(), 2);
}

#[test]
fn an_entry_that_differs_from_its_header_is_refused_by_name() {
    let dir = tempfile::TempDir::new().unwrap();
    let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    save(&dir.path().join("base.safetensors"), &[("w", w)]);
    let head = header(&[("w", "F32", &[3, 4])]);
    let err = rewrite(
        &dir.path().join("base.safetensors"),
        &dir.path().join("out.safetensors"),
        &head,
        &[entry("w", "f32", Source::Base)],
        None,
        1.0,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}")
            .contains("tensor w (f32 [4, 3] at byte 0) does not match its header entry"),
        "{err:#}"
    );
}
