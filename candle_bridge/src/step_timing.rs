//! Where moshi-server's batched step spends its time: the server's own step
//! (`moshi::asr::State::step_pcm` over `LmModel::batched` and `Mimi::batched`, built and typed as
//! `BatchedAsr` builds them) timed whole, and the same Mimi encode timed alone, each followed by
//! a device synchronization (CUDA runs asynchronously). The LM's share is the difference.

use crate::models::{build_lm_batched, build_mimi_batched};
use crate::streaming::frame_samples;
use crate::Checkpoint;
use anyhow::Result;
use candle::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use moshi::asr::State;
use moshi::StreamMask;
use std::path::Path;
use std::time::Instant;

/// Per-step milliseconds of the timed steps.
pub struct StepTimes {
    /// `State::step_pcm` of the whole batch: Mimi encode, LM step, extra heads, text sampling.
    pub step_ms: Vec<f64>,
    /// `Mimi::encode_step` of the same batch alone (a second Mimi at the same stream position).
    pub mimi_ms: Vec<f64>,
}

/// Runs `timed_to` steps of a `batch`-stream server state on random speech-level audio and times
/// steps `timed_from..timed_to`. The text delay does not change the cost; 6 frames as Kyutai's.
pub fn time_server_steps(
    dir: &Path,
    batch: usize,
    timed_from: usize,
    timed_to: usize,
    device: &Device,
) -> Result<StepTimes> {
    let ckpt = Checkpoint::open(dir)?;
    let samples = frame_samples(&ckpt.mimi)?;
    // SAFETY: the mappings are read-only; the files must not change while the models load.
    let vb = |file: &Path, dtype| unsafe {
        VarBuilder::from_mmaped_safetensors(&[file], dtype, device)
    };
    let lm = build_lm_batched(&ckpt.lm, batch, vb(&ckpt.lm_file, device.bf16_default_to_f32())?)?;
    let mimi = build_mimi_batched(&ckpt.mimi, batch, vb(&ckpt.mimi_file, DType::F32)?)?;
    let mut mimi_alone = build_mimi_batched(&ckpt.mimi, batch, vb(&ckpt.mimi_file, DType::F32)?)?;
    let mut state = State::new(batch, 6, 0.0, mimi, lm)?;
    let mask = StreamMask::new(vec![true; batch], device)?;
    let pcm = (Tensor::randn(0f32, 1f32, (batch, 1, samples), device)? * 0.1)?;
    let mut times = StepTimes { step_ms: vec![], mimi_ms: vec![] };
    let ms = |start: Instant| start.elapsed().as_secs_f64() * 1000.0;
    for step in 0..timed_to {
        device.synchronize()?;
        let start = Instant::now();
        state.step_pcm(pcm.clone(), None, &mask, |_, _, _| ())?;
        device.synchronize()?;
        let step_ms = ms(start);
        let start = Instant::now();
        mimi_alone.encode_step(&pcm.clone().into(), &mask)?;
        device.synchronize()?;
        if step >= timed_from {
            times.step_ms.push(step_ms);
            times.mimi_ms.push(ms(start));
        }
    }
    Ok(times)
}
