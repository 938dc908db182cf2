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

/// Values that differ from row to row and column to column, all exact in bf16 and their sums
/// exact in f32, so a merge that reads the wrong rows of W or B (a chunk's row offset) or the
/// wrong columns of A gives other numbers.
fn varied_w(r: usize, c: usize) -> f32 {
    ((r * 7 + c * 3) % 17) as f32 - 8.0 // integers -8..8
}
fn varied_a(k: usize, c: usize) -> f32 {
    ((c + 3 * k) % 5) as f32 * 0.25 - 0.5 // -0.5..0.5 in quarters
}
fn varied_b(r: usize, k: usize) -> f32 {
    ((r * (k + 2)) % 7) as f32 * 0.5 - 1.5 // -1.5..1.5 in halves; rows r and r + 64 differ
}

#[test]
fn a_merge_and_a_copy_bigger_than_a_block_come_out_exact() {
    let dir = tempfile::TempDir::new().unwrap();
    let cpu = &Device::Cpu;
    let (rows, cols, rank, scale) = (130usize, 20usize, 2usize, 2.0f64);
    let grid = |f: fn(usize, usize) -> f32, n: usize, m: usize| -> Vec<f32> {
        (0..n).flat_map(|i| (0..m).map(move |j| f(i, j))).collect()
    };
    // 130 rows: three chunks of the merge (64 + 64 + 2). 2.5 M floats: a copy across two 8 MiB blocks.
    let w = Tensor::from_vec(grid(varied_w, rows, cols), (rows, cols), cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let big = Tensor::arange(0f32, 2_500_000f32, cpu).unwrap();
    save(
        &dir.path().join("base.safetensors"),
        &[("w", w), ("big", big.clone())],
    );
    let a = Tensor::from_vec(grid(varied_a, rank, cols), (rank, cols), cpu).unwrap();
    let b = Tensor::from_vec(grid(varied_b, rows, rank), (rows, rank), cpu).unwrap();
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
        scale as f32,
    )
    .unwrap();

    // Each weight: W[r, c] + 2 * sum_k B[r, k] A[k, c]. The products are multiples of 1/8 and at
    // most 0.75, so the update is a multiple of 1/4 within +-3 and W + update one within +-11:
    // exact in bf16 (8 significant bits), so the merge must give exactly these numbers.
    let mut want = Vec::with_capacity(rows * cols);
    let mut update = 0f64;
    for r in 0..rows {
        for c in 0..cols {
            let u: f64 = (0..rank)
                .map(|k| scale * varied_b(r, k) as f64 * varied_a(k, c) as f64)
                .sum();
            want.push((varied_w(r, c) as f64 + u) as f32);
            update += u * u;
        }
    }
    let out = candle::safetensors::load(&dst, cpu).unwrap();
    let merged: Vec<f32> = out["w"]
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let wrong: Vec<usize> = (0..want.len()).filter(|&i| merged[i] != want[i]).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} weights differ, first at row {} col {}: {} != {}",
        wrong.len(),
        want.len(),
        wrong[0] / cols,
        wrong[0] % cols,
        merged[wrong[0]],
        want[wrong[0]]
    );
    assert!(want.iter().any(|&v| v.fract() != 0.0)); // the update shows in the result
    let copied: Vec<f32> = out["big"].to_vec1().unwrap();
    assert_eq!(copied, big.to_vec1::<f32>().unwrap());
    // Nothing rounded away: what survived is the whole update, and the rounding error is 0.
    assert_eq!((done.update, done.kept, done.error), (update, update, 0.0));
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
