//! The fused float32 merge of one block of rows: decode W, add the LoRA update, round as
//! PyTorch does, and sum the norms of what the update was and what of it survived, in one pass
//! (AVX-512 or AVX2 chosen at run time). Used by `weights::rewrite`.

use anyhow::{bail, Result};

#[inline(always)]
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// PyTorch's float32 -> bfloat16 (c10's round_to_nearest_even): to nearest, ties to even.
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Fused {
    Bf16ToBf16,
    Bf16ToF32,
    F32ToBf16,
    F32ToF32,
}

impl Fused {
    pub(crate) fn of(stored: &str, out: &str) -> Result<Self> {
        Ok(match (stored, out) {
            ("bf16", "bf16") => Self::Bf16ToBf16,
            ("bf16", "f32") => Self::Bf16ToF32,
            ("f32", "bf16") => Self::F32ToBf16,
            ("f32", "f32") => Self::F32ToF32,
            _ => bail!("merging a {stored} weight into {out} is not supported (bf16 and f32 are)"),
        })
    }

    pub(crate) fn run(
        self,
        stored: &[u8],
        update: &[f32],
        out: &mut [u8],
        cols: usize,
    ) -> [f64; 3] {
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
