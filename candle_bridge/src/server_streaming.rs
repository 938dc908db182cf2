//! One stream with the semantics of Kyutai's `moshi-server` (crate 0.6.4, `BatchedAsr`), the
//! runtime users serve the export with. It differs from a fresh `moshi::asr::State` (what
//! [`crate::Streamer`] reproduces) in two ways, both taken from the server's source:
//!
//! - the models are the batched ones (`LmModel::batched`, `Mimi::batched`, batch 1 here), and
//!   every step passes an explicit stream mask;
//! - at start-up the server runs two silent frames through the whole batch ("warming-up the
//!   asr"), and each new connection (`Init`) resets its slot with `State::reset_batch_idx`.
//!   That reset does not give Mimi back a fresh first-frame state, so frame 0's codes, and the
//!   LM from then on, differ from a fresh `State`.
//!
//! `tests/server_streaming.rs` shows the difference on a tiny checkpoint; the Python tests check
//! this streamer against the real server.

use crate::models::{build_lm_batched, build_mimi_batched};
use crate::streaming::{check_whole_frames, frame_samples};
use crate::Checkpoint;
use anyhow::Result;
use candle::{Device, Tensor};
use candle_nn::VarBuilder;
use moshi::asr::{AsrMsg, State};
use moshi::StreamMask;
use std::cell::RefCell;
use std::path::Path;

/// Silent frames the server steps through before it accepts connections (`warmup` in
/// moshi-server's `batched_asr.rs`).
pub const WARMUP_FRAMES: usize = 2;

/// What the server sends for one step, in its order: `Step` first, then words.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStep {
    /// The text token the LM was given at this step (the previous step's greedy token, or the
    /// text start token at step 0): `State` keeps its output to itself until the next step.
    pub text_input: u32,
    /// `Step.prs`: the pause probability of each extra head.
    pub pause: Vec<f32>,
    /// `Word` (tokens, start_time) and `EndWord` (stop_time) messages of this step.
    pub events: Vec<WordEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WordEvent {
    Word { tokens: Vec<u32>, start_time: f64 },
    EndWord { stop_time: f64 },
}

/// One slot of a batch-1 `BatchedAsr`, warmed up and reset as the server does.
pub struct ServerStreamer {
    state: State,
    device: Device,
    frame_samples: usize,
    pause_heads: usize,
}

impl ServerStreamer {
    /// Loads the checkpoint in `dir` on `device` in the server's dtypes (the LM in bf16 on a
    /// GPU, f32 on the CPU: `model_dtype` without override; Mimi always f32), warms it up with
    /// [`WARMUP_FRAMES`] silent frames and resets slot 0, as a freshly started server does
    /// before its first connection. `asr_delay_in_tokens` is the server config's key of that
    /// name (the text delay in frames).
    pub fn open(dir: &Path, asr_delay_in_tokens: usize, device: &Device) -> Result<Self> {
        let device = device.clone();
        let ckpt = Checkpoint::open(dir)?;
        let frame_samples = frame_samples(&ckpt.mimi)?;
        let lm_dtype = device.bf16_default_to_f32();
        // SAFETY: the mappings are read-only; the files must not change while the models load.
        let lm_vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&ckpt.lm_file], lm_dtype, &device) }?;
        let lm = build_lm_batched(&ckpt.lm, 1, lm_vb)?;
        let f32 = candle::DType::F32;
        let mimi_vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&ckpt.mimi_file], f32, &device) }?;
        let mimi = build_mimi_batched(&ckpt.mimi, 1, mimi_vb)?;
        let state = State::new(1, asr_delay_in_tokens, 0.0, mimi, lm)?;
        let mut streamer = Self {
            state,
            device,
            frame_samples,
            pause_heads: ckpt.lm.extra_heads.map_or(0, |h| h.num_heads),
        };
        let silence = vec![0f32; frame_samples];
        for _ in 0..WARMUP_FRAMES {
            streamer.step_frame(&silence)?;
        }
        streamer.new_connection()?;
        Ok(streamer)
    }

    /// What the server does when a client connects (`Init`): `reset_batch_idx` on its slot.
    pub fn new_connection(&mut self) -> Result<()> {
        Ok(self.state.reset_batch_idx(0)?)
    }

    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    pub fn pause_heads(&self) -> usize {
        self.pause_heads
    }

    /// Steps through `pcm` (mono, a multiple of `frame_samples` samples) one frame per step,
    /// as the server feeds each connection's buffered audio.
    pub fn step_pcm(&mut self, pcm: &[f32]) -> Result<Vec<ServerStep>> {
        check_whole_frames(pcm, self.frame_samples)?;
        let mut steps = vec![];
        for frame in pcm.chunks(self.frame_samples) {
            steps.extend(self.step_frame(frame)?);
        }
        Ok(steps)
    }

    fn step_frame(&mut self, frame: &[f32]) -> Result<Option<ServerStep>> {
        let pcm = Tensor::from_slice(frame, (1, 1, frame.len()), &self.device)?;
        let mask = StreamMask::new(vec![true], &self.device)?;
        let text_input = RefCell::new(None);
        let msgs = self.state.step_pcm(pcm, None, &mask, |_, text, _| {
            *text_input.borrow_mut() = text.flatten_all().and_then(|t| t.to_vec1::<u32>()).ok();
        })?;
        let Some(text_input) = text_input.into_inner() else {
            return Ok(None); // Mimi produced no frame yet
        };
        let mut step = ServerStep {
            text_input: text_input[0],
            pause: vec![],
            events: vec![],
        };
        for msg in msgs {
            match msg {
                AsrMsg::Step { prs, .. } => step.pause = prs.iter().map(|p| p[0]).collect(),
                AsrMsg::Word {
                    tokens, start_time, ..
                } => step.events.push(WordEvent::Word { tokens, start_time }),
                AsrMsg::EndWord { stop_time, .. } => {
                    step.events.push(WordEvent::EndWord { stop_time })
                }
            }
        }
        Ok(Some(step))
    }
}
