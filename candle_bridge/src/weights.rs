//! Rewrites a safetensors file tensor by tensor: the hot loop of `invoke merge` and
//! `invoke export` (pipeline/io.py builds the plan and the header; this does the bytes).
//!
//! Each tensor of the new file is a base tensor copied or cast between float widths, a base
//! weight merged with a LoRA pair (W + scaling * B @ A in float32, rounded once, as PyTorch
//! rounds: to nearest, ties to even), or an adapter's embedding table in the base's dtype. The
//! bytes go out in 8 MiB blocks through two threads, one hashing them (sha256, for the export's
//! manifest), one writing them with O_DIRECT where the filesystem allows it, so the merge of the
//! next rows, the hash and the write of the last ones run side by side.
//!
//! Why here and not in PyTorch: on this project's 2-core box the PyTorch one pass of a 1B model
//! took 4.5x a plain copy, most of it a rank-32 matmul PyTorch runs at 39 GFLOP/s, the float32
//! temporaries around it and importing torch (docs/benchmarks.md, 2026-12-06).
//! Byte order: little-endian hosts only (x86-64, aarch64), as the format is.

use crate::block_writer::{hash_blocks, open_output, write_blocks, Aligned, Sink, BLOCK, BLOCKS};
use crate::fused_merge::{bf16_to_f32, f32_to_bf16, Fused};
use crate::safetensors_header::{read_layout, Layout};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

/// Where one tensor of the new file comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The base tensor of that name, cast to the entry's dtype.
    Base,
    /// The base weight plus scaling * B @ A, B and A being these adapter tensors.
    Merge { a: String, b: String },
    /// This adapter tensor (an embedding table trained whole) in the base's dtype.
    Table(String),
}

/// One tensor of the new file, in file order: written as `name`, read as `key` of the base.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub key: String,
    /// Candle's spelling: "bf16", "f32", "f16", or any other dtype if it is the stored one.
    pub dtype: String,
    pub source: Source,
}

/// The new file's sha256 and the squared norms of what the merges did, summed over tensors:
/// the update scaling * B @ A, what of it survived rounding (bf16(W') - W), and the rounding
/// error (bf16(W') - (W + update)).
#[derive(Debug, Default, Clone)]
pub struct Rewritten {
    pub sha256: String,
    pub update: f64,
    pub kept: f64,
    pub error: f64,
}

const CHUNK_ROWS: usize = 64; // rows merged at a time: the float32 update stays in cache

/// Writes `header` (the 8-byte length and JSON, as the caller built it) then every entry's
/// bytes to `dst`; checks each entry against the header's offsets as it goes.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    header: &[u8],
    entries: &[Entry],
    adapter: Option<&Path>,
    scaling: f32,
) -> Result<Rewritten> {
    let base = Tensors::open(src)?;
    let adapter = adapter.map(Tensors::open).transpose()?;
    let expected = header_offsets(header).with_context(|| format!("{}: header", dst.display()))?;
    let (file, direct) = open_output(dst)?;
    let (to_hasher, for_hasher) = sync_channel::<(Aligned, usize)>(2);
    let (to_writer, for_writer) = sync_channel::<(Aligned, usize)>(2);
    let (give_back, free) = sync_channel::<Aligned>(BLOCKS);
    let hasher = std::thread::spawn(move || hash_blocks(for_hasher, to_writer));
    let writer = std::thread::spawn(move || write_blocks(file, direct, for_writer, give_back));
    let mut out = Rewritten::default();
    let produced = (|| -> Result<()> {
        let mut sink = Sink::new(to_hasher, free);
        sink.append(header)?;
        let mut offset = 0u64;
        for entry in entries {
            let (info, _) = base.info(&entry.key)?;
            let bytes = info.0.shape.iter().product::<usize>() as u64 * width(&entry.dtype)? as u64;
            match expected.get(&entry.name) {
                Some((dtype, shape, range))
                    if *range == [offset, offset + bytes] && *shape == info.0.shape && *dtype == entry.dtype => {}
                other => bail!(
                    "{}: tensor {} ({} {:?} at byte {offset}) does not match its header entry {other:?}",
                    dst.display(), entry.name, entry.dtype, info.0.shape
                ),
            }
            offset += bytes;
            match &entry.source {
                Source::Base => copy_cast(&base, entry, &mut sink)?,
                Source::Merge { a, b } => {
                    let adapter = adapter
                        .as_ref()
                        .context("a merge entry needs an adapter file")?;
                    let sums = merge(&base, adapter, entry, a, b, scaling, &mut sink)?;
                    out.update += sums[0];
                    out.kept += sums[1];
                    out.error += sums[2];
                }
                Source::Table(key) => {
                    let adapter = adapter
                        .as_ref()
                        .context("a table entry needs an adapter file")?;
                    table(&base, adapter, entry, key, &mut sink)?
                }
            }
        }
        sink.finish()
    })();
    // The writer's own error (a full disk) explains a failed send better than the send does.
    let sha256 = hasher
        .join()
        .map_err(|_| anyhow::anyhow!("the hashing thread panicked"))?;
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?;
    written.with_context(|| format!("{}: writing", dst.display()))?;
    produced?;
    out.sha256 = sha256;
    Ok(out)
}

// --- reading ------------------------------------------------------------------------------

struct Tensors {
    path: std::path::PathBuf,
    file: File,
    layout: Layout,
}

type Info<'a> = (&'a (crate::safetensors_header::TensorInfo, [u64; 2]), u64);

impl Tensors {
    fn open(path: &Path) -> Result<Self> {
        let layout = read_layout(path)?;
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            layout,
        })
    }

    fn info(&self, key: &str) -> Result<Info<'_>> {
        match self.layout.tensors.get(key) {
            Some(entry) => Ok((entry, self.layout.data_start + entry.1[0])),
            None => bail!("{}: no tensor {key}", self.path.display()),
        }
    }

    /// `len` bytes of tensor `key` from byte `skip` of its data into `dst`.
    fn read_into(&self, key: &str, skip: u64, dst: &mut [u8]) -> Result<()> {
        let ((_, range), start) = self.info(key)?;
        if skip + dst.len() as u64 > range[1] - range[0] {
            bail!(
                "{}: tensor {key} is shorter than its shape says",
                self.path.display()
            );
        }
        self.file.read_exact_at(dst, start + skip).with_context(|| {
            format!(
                "{}: tensor {key} is cut short; re-create the file",
                self.path.display()
            )
        })
    }

    /// The whole tensor as float32 values (from f32, bf16 or f16).
    fn floats(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let ((info, range), _) = self.info(key)?;
        let mut raw = vec![0u32; ((range[1] - range[0]) as usize).div_ceil(4)];
        let bytes =
            &mut bytemuck::cast_slice_mut::<u32, u8>(&mut raw)[..(range[1] - range[0]) as usize];
        self.read_into(key, 0, bytes)?;
        Ok((decode(&info.dtype, bytes)?, info.shape.clone()))
    }
}

fn width(dtype: &str) -> Result<usize> {
    Ok(match dtype {
        "f64" | "i64" | "u64" => 8,
        "f32" | "i32" | "u32" => 4,
        "bf16" | "f16" | "i16" | "u16" => 2,
        "u8" | "i8" | "bool" | "f8_e4m3" | "f8_e5m2" => 1,
        other => bail!("unknown dtype {other}"),
    })
}

fn decode(dtype: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        "f32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "bf16" => bytes
            .chunks_exact(2)
            .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        "f16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("cannot read {other} tensors as floats (only f32, bf16, f16)"),
    })
}

fn encode(dtype: &str, values: &[f32], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    match dtype {
        "f32" => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "bf16" => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f32_to_bf16(*v).to_le_bytes())),
        "f16" => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        other => bail!("cannot write {other} tensors from floats (only f32, bf16, f16)"),
    }
    Ok(())
}

// --- the three kinds of entry ---------------------------------------------------------------

fn copy_cast(base: &Tensors, entry: &Entry, sink: &mut Sink) -> Result<()> {
    let ((info, range), _) = base.info(&entry.key)?;
    let total = range[1] - range[0];
    if info.dtype == entry.dtype {
        // Straight into the writer's blocks: no copy of the bytes in between.
        let mut done = 0u64;
        while done < total {
            let space = sink.space()?;
            let n = space.len().min((total - done) as usize);
            base.read_into(&entry.key, done, &mut space[..n])?;
            sink.filled(n);
            done += n as u64;
        }
        return Ok(());
    }
    let step = (BLOCK / 4) as u64 * width(&info.dtype)? as u64;
    let (mut raw, mut encoded) = (vec![0u8; step as usize], Vec::new());
    let mut done = 0u64;
    while done < total {
        let n = step.min(total - done) as usize;
        base.read_into(&entry.key, done, &mut raw[..n])?;
        encode(&entry.dtype, &decode(&info.dtype, &raw[..n])?, &mut encoded)?;
        sink.append(&encoded)?;
        done += n as u64;
    }
    Ok(())
}

fn table(
    base: &Tensors,
    adapter: &Tensors,
    entry: &Entry,
    key: &str,
    sink: &mut Sink,
) -> Result<()> {
    let ((info, _), _) = base.info(&entry.key)?;
    let (values, shape) = adapter.floats(key)?;
    if shape != info.shape {
        bail!(
            "embedding table {}: adapter has {shape:?}, base {:?}",
            entry.key,
            info.shape
        );
    }
    // Rounded to the base's dtype first, as the table would be stored in the base.
    let mut stored = Vec::new();
    encode(&info.dtype, &values, &mut stored)?;
    let mut out = Vec::new();
    encode(&entry.dtype, &decode(&info.dtype, &stored)?, &mut out)?;
    sink.append(&out)
}

fn merge(
    base: &Tensors,
    adapter: &Tensors,
    entry: &Entry,
    a: &str,
    b: &str,
    scaling: f32,
    sink: &mut Sink,
) -> Result<[f64; 3]> {
    let ((info, _), _) = base.info(&entry.key)?;
    let (a, a_shape) = adapter.floats(a)?;
    let (mut b, b_shape) = adapter.floats(b)?;
    let [rows, cols] = info.shape[..] else {
        bail!(
            "{}: a LoRA merges into 2-d weights, not {:?}",
            entry.key,
            info.shape
        )
    };
    if a_shape.len() != 2 || b_shape != [rows, a_shape[0]] || a_shape[1] != cols {
        bail!(
            "LoRA for {}: A {a_shape:?}, B {b_shape:?}; the base weight is {:?}",
            entry.key,
            info.shape
        );
    }
    let (rank, in_width) = (a_shape[0], width(&info.dtype)?);
    b.iter_mut().for_each(|v| *v *= scaling); // (scaling * B) @ A, as the PyTorch merge did
    let kind = Fused::of(&info.dtype, &entry.dtype)?;
    let mut stored = vec![0u32; (CHUNK_ROWS * cols * in_width).div_ceil(4)];
    let mut update = vec![0f32; CHUNK_ROWS * cols];
    let mut merged = vec![0u32; (CHUNK_ROWS * cols * width(&entry.dtype)?).div_ceil(4)];
    let mut sums = [0f64; 3];
    for lo in (0..rows).step_by(CHUNK_ROWS) {
        let m = CHUNK_ROWS.min(rows - lo);
        let n_in = m * cols * in_width;
        let stored = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut stored)[..n_in];
        base.read_into(&entry.key, (lo * cols * in_width) as u64, stored)?;
        // SAFETY: update is m x cols, B's rows lo..lo+m are m x rank, A is rank x cols, all
        // row-major and in bounds; the destination does not alias the inputs.
        unsafe {
            gemm::gemm(
                m,
                cols,
                rank,
                update.as_mut_ptr(),
                1,
                cols as isize,
                false,
                b.as_ptr().add(lo * rank),
                1,
                rank as isize,
                a.as_ptr(),
                1,
                cols as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let out_bytes = m * cols * width(&entry.dtype)?;
        let out = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut merged)[..out_bytes];
        let chunk = kind.run(stored, &update[..m * cols], out, cols);
        sums.iter_mut().zip(chunk).for_each(|(s, c)| *s += c);
        sink.append(out)?;
    }
    Ok(sums)
}

/// A header entry: dtype in Candle's spelling, shape, data offsets.
type HeaderEntry = (String, Vec<usize>, [u64; 2]);

/// The header's entries by name.
fn header_offsets(header: &[u8]) -> Result<BTreeMap<String, HeaderEntry>> {
    if header.len() < 8 || u64::from_le_bytes(header[..8].try_into()?) as usize != header.len() - 8
    {
        bail!("the header's length prefix does not match its size");
    }
    let mut entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header[8..])?;
    entries.remove("__metadata__");
    entries
        .into_iter()
        .map(|(name, value)| {
            let dtype = value["dtype"]
                .as_str()
                .context("entry without dtype")?
                .to_lowercase();
            let shape = serde_json::from_value(value["shape"].clone())?;
            let offsets = serde_json::from_value(value["data_offsets"].clone())?;
            Ok((name, (dtype, shape, offsets)))
        })
        .collect()
}
