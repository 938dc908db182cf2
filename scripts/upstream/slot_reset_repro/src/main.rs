//! Does a slot reset give a batched Mimi a fresh stream? The repro behind docs/upstream/.
//!
//! Built by scripts/upstream/slot_reset_patch.sh (which writes this crate's Cargo.toml) once
//! against moshi 0.6.4 as published and once against the patched copy.
//!
//!     slot_reset_repro <mimi.safetensors | checkpoint dir> [n_q] [audio.f32 ...]
//!
//! A .safetensors file is loaded as moshi-server loads Kyutai's Mimi (`moshi::mimi::load_b`,
//! `Config::v0_1`, n_q codebooks, default 32); a directory is an stt-numerals checkpoint (its
//! own Mimi config, read by candle_bridge). Uses only moshi's public API, f32 on the CPU.
//! audio.f32: the signals to encode (raw little-endian f32 at 24 kHz, whole frames; the script
//! passes verify-candle's test signal, then each clip as it is streamed), else 212 frames of
//! deterministic noise. Checks 1 and 3 run on each, check 2 on the first.
//!
//! Checks:
//! 1. `slot reset`: batch 1 as the server runs it (two silent warm-up frames, then
//!    `reset_batch_idx(0, 1)`) against a fresh Mimi, frame by frame over 212 frames;
//! 2. `other slot`: batch 2, slot 1 streaming all along while slot 0 is reset and stays idle
//!    (masked) for one step before its audio starts: slot 0 must give the fresh codes and slot 1
//!    the codes of a batch-1 Mimi with slot 1's history, so the reset touches its slot only;
//! 3. `batched`, for information: a fresh batched Mimi against a fresh unbatched one (`Mimi::new`,
//!    what a plain `asr::State` uses). Both are right; where a code is a near-tie, their float
//!    rounding can pick different codes, which no reset fix changes.
//!
//! Prints one line per check and a JSON summary; exits 0 when checks 1 and 2 match, 1 if not.

use anyhow::{bail, Result};
use candle::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use moshi::mimi::{Config, Mimi};
use moshi::StreamMask;
use std::path::{Path, PathBuf};

/// moshi-server's `BatchedAsr` warm-up: two silent frames through the whole batch.
const WARMUP_FRAMES: usize = 2;
/// Frames compared after the reset: frame 0 is the one the reset changes, later frames show the
/// change does not last (printed: the first `SHOWN`; 212 frames are verify-candle's test signal).
const FRAMES: usize = 212;
const SHOWN: usize = 4;

struct Model {
    cfg: Config,
    file: PathBuf,
}

impl Model {
    fn open(arg: &Path, n_q: usize) -> Result<Self> {
        if arg.is_dir() {
            let ckpt = candle_bridge::Checkpoint::open(arg)?;
            return Ok(Self { cfg: ckpt.mimi, file: ckpt.mimi_file });
        }
        if !arg.is_file() {
            bail!("{}: not found; pass Kyutai's Mimi .safetensors or a checkpoint directory", arg.display())
        }
        Ok(Self { cfg: Config::v0_1(Some(n_q)), file: arg.to_path_buf() })
    }

    fn frame_samples(&self) -> usize {
        (self.cfg.sample_rate / self.cfg.frame_rate).round() as usize
    }

    fn weights(&self) -> Result<VarBuilder<'static>> {
        // SAFETY: the weights file is read-only and not changed while the process runs.
        Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[&self.file], DType::F32, &Device::Cpu)? })
    }

    /// A batched Mimi as moshi-server builds it (`Mimi::batched`, f32).
    fn batched(&self, batch_size: usize) -> Result<Mimi> {
        Ok(Mimi::batched(batch_size, self.cfg.clone(), self.weights()?)?)
    }
}

/// Deterministic noise in [-0.5, 0.5) (a 64-bit LCG), `frames` whole frames.
fn noise(seed: u64, samples: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..samples)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// One encoder step over a batch: `frames[b]` is slot b's frame (`None`: the slot is idle and
/// masked, as the server steps slots that have no audio). Returns each active slot's codes.
fn step(mimi: &mut Mimi, frames: &[Option<&[f32]>], len: usize) -> Result<Vec<Option<Vec<u32>>>> {
    let dev = Device::Cpu;
    let zeros = vec![0f32; len];
    let pcm: Vec<f32> = frames.iter().flat_map(|f| f.unwrap_or(&zeros).iter().copied()).collect();
    let xs = Tensor::from_vec(pcm, (frames.len(), 1, len), &dev)?;
    let mask = StreamMask::new(frames.iter().map(|f| f.is_some()).collect(), &dev)?;
    let codes = mimi.encode_step(&xs.into(), &mask)?;
    let Some(codes) = codes.as_option() else { bail!("Mimi produced no frame for a whole input frame") };
    let codes = codes.squeeze(2)?.to_vec2::<u32>()?; // [batch, n_q]
    Ok(codes.into_iter().zip(frames).map(|(c, f)| f.map(|_| c)).collect())
}

fn frames_of(pcm: &[f32], len: usize) -> Vec<&[f32]> {
    pcm.chunks(len).collect()
}

/// Codes of each frame of `pcm` through batch-1 `mimi`.
fn stream(mimi: &mut Mimi, pcm: &[f32], len: usize) -> Result<Vec<Vec<u32>>> {
    frames_of(pcm, len).into_iter().map(|f| Ok(step(mimi, &[Some(f)], len)?[0].clone().unwrap())).collect()
}

/// Check 1: fresh Mimi against warm-up + `reset_batch_idx`, frame by frame (printed if `show`).
fn slot_reset(model: &Model, pcm: &[f32], show: bool) -> Result<Vec<bool>> {
    let len = model.frame_samples();
    let fresh = stream(&mut model.batched(1)?, pcm, len)?;
    let mut served = model.batched(1)?;
    let silence = vec![0f32; len];
    for _ in 0..WARMUP_FRAMES {
        step(&mut served, &[Some(&silence)], len)?;
    }
    served.reset_batch_idx(0, 1)?;
    let served = stream(&mut served, pcm, len)?;
    let equal: Vec<bool> = fresh.iter().zip(&served).map(|(f, s)| f == s).collect();
    if !show {
        return Ok(equal);
    }
    for (i, (f, s)) in fresh.iter().zip(&served).take(SHOWN).enumerate() {
        let shown = f.len().min(8);
        println!("slot reset, frame {i}: fresh {:?}.. served {:?}.. {}", &f[..shown], &s[..shown],
                 if f == s { "equal" } else { "DIFFERENT" });
    }
    let different: Vec<usize> = (0..equal.len()).filter(|&i| !equal[i]).collect();
    println!("slot reset, frames 0-{}: {} different {:?}", equal.len() - 1, different.len(),
             &different[..different.len().min(10)]);
    Ok(equal)
}

/// Check 2: slot 0 reset and idle one step while slot 1 streams; both against batch-1 references.
fn other_slot(model: &Model, a: &[f32], b: &[f32]) -> Result<(bool, bool)> {
    let len = model.frame_samples();
    let silence = vec![0f32; len];
    let (a, b) = (frames_of(a, len), frames_of(b, len));
    let fresh_a = stream(&mut model.batched(1)?, &a.concat(), len)?;
    // Slot 1's reference: a batch-1 server whose only connection streams b from its reset on.
    let mut one = model.batched(1)?;
    for _ in 0..WARMUP_FRAMES {
        step(&mut one, &[Some(&silence)], len)?;
    }
    one.reset_batch_idx(0, 1)?;
    let ref_b = stream(&mut one, &b.concat(), len)?;

    let mut two = model.batched(2)?;
    for _ in 0..WARMUP_FRAMES {
        step(&mut two, &[Some(&silence), Some(&silence)], len)?;
    }
    two.reset_batch_idx(1, 2)?;
    let mut got_b = vec![step(&mut two, &[None, Some(b[0])], len)?[1].clone().unwrap()];
    two.reset_batch_idx(0, 2)?;
    got_b.push(step(&mut two, &[None, Some(b[1])], len)?[1].clone().unwrap()); // slot 0 idle
    let mut got_a = vec![];
    for (fa, fb) in a.iter().zip(&b[2..]) {
        let codes = step(&mut two, &[Some(fa), Some(fb)], len)?;
        got_a.push(codes[0].clone().unwrap());
        got_b.push(codes[1].clone().unwrap());
    }
    let slot0 = got_a == fresh_a[..got_a.len()];
    let slot1 = got_b == ref_b[..got_b.len()];
    println!("other slot: slot 0 (reset, idle one step) {} a fresh Mimi over {} frames; slot 1 (streaming) {} \
              its batch-1 reference over {} frames", if slot0 { "equals" } else { "DIFFERS from" }, got_a.len(),
             if slot1 { "equals" } else { "DIFFERS from" }, got_b.len());
    Ok((slot0, slot1))
}

/// Check 3: fresh batched against fresh unbatched Mimi; the frames whose codes differ.
fn batched_vs_unbatched(model: &Model, pcm: &[f32], show: bool) -> Result<Vec<usize>> {
    let len = model.frame_samples();
    let batched = stream(&mut model.batched(1)?, pcm, len)?;
    let mut plain = Mimi::new(model.cfg.clone(), model.weights()?)?;
    let mut different = vec![];
    for (i, frame) in frames_of(pcm, len).into_iter().enumerate() {
        let xs = Tensor::from_slice(frame, (1, 1, len), &Device::Cpu)?;
        let codes = plain.encode_step(&xs.into(), &().into())?;
        let Some(codes) = codes.as_option() else { bail!("Mimi produced no frame for a whole input frame") };
        if codes.flatten_all()?.to_vec1::<u32>()? != batched[i] {
            different.push(i)
        }
    }
    if show {
        println!("batched vs unbatched fresh Mimi (information), frames 0-{}: {} different {:?}",
                 batched.len() - 1, different.len(), &different[..different.len().min(10)]);
    }
    Ok(different)
}

fn read_f32(path: &Path, len: usize) -> Result<Vec<f32>> {
    let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", path.display()))?;
    let pcm: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if raw.len() % 4 != 0 || pcm.len() < len || pcm.len() % len != 0 {
        bail!("{}: expected raw little-endian f32, a whole number of {len}-sample frames", path.display())
    }
    Ok(pcm)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        bail!("usage: {} <mimi.safetensors | checkpoint dir> [n_q (default 32, .safetensors only)] [audio.f32 ...]",
              args[0])
    }
    let n_q = match args.get(2) {
        Some(v) => v.parse().map_err(|_| anyhow::anyhow!("n_q must be a positive integer, got {v:?}"))?,
        None => 32,
    };
    let model = Model::open(Path::new(&args[1]), n_q)?;
    let len = model.frame_samples();
    let inputs: Vec<String> = if args.len() > 3 { args[3..].to_vec() } else { vec!["noise".into()] };
    let b = noise(2, (SHOWN + 2) * len);
    let (mut ok, mut streams) = (true, vec![]);
    for (k, input) in inputs.iter().enumerate() {
        let a = if input == "noise" { noise(1, FRAMES * len) } else { read_f32(Path::new(input), len)? };
        let frames = slot_reset(&model, &a, k == 0)?;
        if k == 0 {
            let (slot0, slot1) = other_slot(&model, &a[..SHOWN.min(a.len() / len) * len], &b)?;
            ok &= slot0 && slot1;
            streams.push(serde_json::json!({"other_slot": {"reset_slot_fresh": slot0, "streaming_slot_unchanged": slot1}}));
        }
        let reset_different: Vec<usize> = (0..frames.len()).filter(|&i| !frames[i]).collect();
        ok &= reset_different.is_empty();
        let unbatched = batched_vs_unbatched(&model, &a, k == 0)?;
        streams.push(serde_json::json!({"input": input, "frames": frames.len(),
            "reset_frames_different": reset_different, "batched_vs_unbatched_frames_different": unbatched}));
    }
    if inputs.len() > 1 {
        let reset: usize = streams.iter().filter(|s| s["reset_frames_different"].as_array().is_some_and(|a| !a.is_empty())).count();
        println!("all {} inputs: slot reset differs from a fresh Mimi on {} of them", inputs.len(), reset);
    }
    println!("{}", serde_json::json!({
        "model": args[1], "moshi": option_env!("MOSHI_SOURCE").unwrap_or("unknown"), "fresh_after_reset": ok,
        "streams": streams,
    }));
    std::process::exit(if ok { 0 } else { 1 })
}
