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

use crate::safetensors_header::{read_layout, Layout};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

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

const ALIGN: usize = 4096; // O_DIRECT wants offsets, lengths and buffers aligned to this
const BLOCK: usize = 8 << 20; // bytes handed to the hashing and writing threads at a time
const BLOCKS: usize = 6; // blocks in flight at most: one filling, the rest queued, hashed or written
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

#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// PyTorch's float32 -> bfloat16 (c10's round_to_nearest_even): to nearest, ties to even.
#[inline(always)]
fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
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

// --- the fused float32 merge: decode, add, round, and the three norms, in one pass ----------

#[derive(Clone, Copy)]
enum Fused {
    Bf16ToBf16,
    Bf16ToF32,
    F32ToBf16,
    F32ToF32,
}

impl Fused {
    fn of(stored: &str, out: &str) -> Result<Self> {
        Ok(match (stored, out) {
            ("bf16", "bf16") => Self::Bf16ToBf16,
            ("bf16", "f32") => Self::Bf16ToF32,
            ("f32", "bf16") => Self::F32ToBf16,
            ("f32", "f32") => Self::F32ToF32,
            _ => bail!("merging a {stored} weight into {out} is not supported (bf16 and f32 are)"),
        })
    }

    fn run(self, stored: &[u8], update: &[f32], out: &mut [u8], cols: usize) -> [f64; 3] {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { self.run_avx512(stored, update, out, cols) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return unsafe { self.run_avx2(stored, update, out, cols) };
            }
        }
        self.run_any(stored, update, out, cols)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512(
        self,
        stored: &[u8],
        update: &[f32],
        out: &mut [u8],
        cols: usize,
    ) -> [f64; 3] {
        self.run_any(stored, update, out, cols)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        self,
        stored: &[u8],
        update: &[f32],
        out: &mut [u8],
        cols: usize,
    ) -> [f64; 3] {
        self.run_any(stored, update, out, cols)
    }

    #[inline(always)]
    fn run_any(self, stored: &[u8], update: &[f32], out: &mut [u8], cols: usize) -> [f64; 3] {
        match self {
            Self::Bf16ToBf16 => fused::<u16, u16>(stored, update, out, cols),
            Self::Bf16ToF32 => fused::<u16, f32>(stored, update, out, cols),
            Self::F32ToBf16 => fused::<f32, u16>(stored, update, out, cols),
            Self::F32ToF32 => fused::<f32, f32>(stored, update, out, cols),
        }
    }
}

/// A stored float the fused merge reads or writes: bf16 (its bits, as u16) or f32.
trait Stored: bytemuck::Pod {
    fn widen(self) -> f32;
    fn round(value: f32) -> Self;
}

impl Stored for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }
    #[inline(always)]
    fn round(value: f32) -> Self {
        f32_to_bf16(value)
    }
}

impl Stored for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn round(value: f32) -> Self {
        value
    }
}

const LANES: usize = 16; // independent partial sums, so the loop vectorizes

/// out = round(w + u) for each element; returns the squared norms of u, round(w + u) - w and
/// round(w + u) - (w + u). Partial sums are float32 within a row, float64 across rows.
#[inline(always)]
fn fused<W: Stored, O: Stored>(
    stored: &[u8],
    update: &[f32],
    out: &mut [u8],
    cols: usize,
) -> [f64; 3] {
    let stored: &[W] = bytemuck::cast_slice(stored);
    let out: &mut [O] = bytemuck::cast_slice_mut(out);
    let mut sums = [0f64; 3];
    for ((w_row, u_row), o_row) in stored
        .chunks_exact(cols)
        .zip(update.chunks_exact(cols))
        .zip(out.chunks_exact_mut(cols))
    {
        let mut acc = [[0f32; LANES]; 3];
        let mut lane = |w: W, u: f32, o: &mut O, i: usize| {
            let w = w.widen();
            let r = O::round(w + u);
            *o = r;
            let kept = r.widen() - w;
            let err = kept - u;
            acc[0][i] += u * u;
            acc[1][i] += kept * kept;
            acc[2][i] += err * err;
        };
        let mut ws = w_row.chunks_exact(LANES);
        let mut us = u_row.chunks_exact(LANES);
        let mut os = o_row.chunks_exact_mut(LANES);
        for ((w, u), o) in (&mut ws).zip(&mut us).zip(&mut os) {
            for i in 0..LANES {
                lane(w[i], u[i], &mut o[i], i);
            }
        }
        for (i, ((w, u), o)) in ws
            .remainder()
            .iter()
            .zip(us.remainder())
            .zip(os.into_remainder())
            .enumerate()
        {
            lane(*w, *u, o, i);
        }
        for (s, a) in sums.iter_mut().zip(acc) {
            *s += a.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    sums
}

// --- writing --------------------------------------------------------------------------------

/// A zeroed, 4 KiB-aligned buffer of BLOCK bytes (O_DIRECT needs the alignment).
struct Aligned(std::ptr::NonNull<u8>);

// SAFETY: the buffer is owned by one thread at a time (it moves through channels).
unsafe impl Send for Aligned {}

impl Aligned {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(BLOCK, ALIGN) {
        Ok(layout) => layout,
        Err(_) => panic!("bad block layout"),
    };

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        Self(
            std::ptr::NonNull::new(ptr)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT)),
        )
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: BLOCK bytes were allocated and are owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), BLOCK) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::LAYOUT) }
    }
}

/// Fills blocks and hands each full one to the hashing thread; blocks come back for reuse.
struct Sink {
    block: Option<Aligned>,
    fill: usize,
    to_hasher: SyncSender<(Aligned, usize)>,
    free: Receiver<Aligned>,
    allocated: usize,
}

impl Sink {
    fn new(to_hasher: SyncSender<(Aligned, usize)>, free: Receiver<Aligned>) -> Self {
        Self {
            block: Some(Aligned::new()),
            fill: 0,
            to_hasher,
            free,
            allocated: 1,
        }
    }

    /// The free part of the current block (never empty); say how much of it was written
    /// with `filled`.
    fn space(&mut self) -> Result<&mut [u8]> {
        self.flush_if_full()?;
        let fill = self.fill;
        Ok(&mut self
            .block
            .as_mut()
            .expect("a sink always holds a block")
            .bytes()[fill..])
    }

    fn filled(&mut self, n: usize) {
        self.fill += n;
    }

    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let space = self.space()?;
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.filled(n);
            data = &data[n..];
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.fill == BLOCK {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        let full = self.block.take().expect("a sink always holds a block");
        if self.to_hasher.send((full, self.fill)).is_err() {
            bail!("the writer stopped");
        }
        self.block = Some(match self.free.try_recv() {
            Ok(block) => block,
            Err(_) if self.allocated < BLOCKS => {
                self.allocated += 1;
                Aligned::new()
            }
            Err(_) => self
                .free
                .recv()
                .map_err(|_| anyhow::anyhow!("the writer stopped"))?,
        });
        self.fill = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.fill > 0 {
            self.send()?;
        }
        Ok(())
    }
}

fn open_output(path: &Path) -> Result<(File, bool)> {
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(path)
    };
    #[cfg(target_os = "linux")]
    match open(libc::O_DIRECT) {
        Ok(file) => return Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // tmpfs and others: no direct I/O
        Err(e) => return Err(e).with_context(|| format!("{}: cannot create", path.display())),
    }
    Ok((
        open(0).with_context(|| format!("{}: cannot create", path.display()))?,
        false,
    ))
}

/// The hashing thread: hashes each block and passes it on to the writer; returns the hex
/// sha256. Hashing and writing each take about a second for a 1B model on this project's box,
/// so they run side by side.
fn hash_blocks(
    blocks: Receiver<(Aligned, usize)>,
    to_writer: SyncSender<(Aligned, usize)>,
) -> String {
    let mut hasher = Sha256::new();
    for (mut block, len) in blocks {
        hasher.update(&block.bytes()[..len]);
        if to_writer.send((block, len)).is_err() {
            break; // the writer failed: it reports why
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The writing thread: writes each block and hands it back for reuse.
fn write_blocks(
    mut file: File,
    mut direct: bool,
    blocks: Receiver<(Aligned, usize)>,
    give_back: SyncSender<Aligned>,
) -> Result<()> {
    let mut written = 0u64;
    for (mut block, len) in blocks {
        // Only the last block is short; with O_DIRECT it goes out padded, then the file is cut back.
        let padded = if direct {
            len.div_ceil(ALIGN) * ALIGN
        } else {
            len
        };
        block.bytes()[len..padded].fill(0);
        match file.write_all(&block.bytes()[..padded]) {
            // Some filesystems accept O_DIRECT at open and refuse the write: nothing is written
            // yet if this is the first block, so go on with plain writes.
            #[cfg(target_os = "linux")]
            Err(e) if direct && written == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                use std::os::fd::AsRawFd;
                // SAFETY: fcntl on a file descriptor this function owns.
                unsafe {
                    let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT);
                }
                direct = false;
                file.set_len(0)?;
                file.write_all_at(&block.bytes()[..len], 0)?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len as u64))?;
            }
            other => other?,
        }
        written += len as u64;
        let _ = give_back.try_send(block);
    }
    if direct {
        file.set_len(written)?;
    }
    Ok(())
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
