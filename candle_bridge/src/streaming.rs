//! Streams audio through the Rust moshi LM and Mimi exactly as Kyutai's ASR server does
//! (`moshi::asr::State`), but hands back what `State` keeps to itself: the greedy text token
//! and the text logits of every step, next to the pause probabilities of the extra heads.
//!
//! The input conventions are `asr::State`'s, batch 1, temperature 0: at each step the LM sees
//! the PREVIOUS frame's audio codes (the audio pad token on the first step) and the previous
//! greedy text token (the text start token on the first step). `tests/streaming.rs` checks the
//! outputs against `State` itself.

use crate::models::{build_lm, build_mimi};
use crate::Checkpoint;
use anyhow::{bail, Result};
use candle::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use moshi::lm::LmModel;
use moshi::mimi::Mimi;
use moshi::StreamMask;
use std::path::Path;

/// What the LM produced at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Greedy (argmax) text token.
    pub text_token: u32,
    /// Text logits in f32, one per output token (`text_card` of them).
    pub text_logits: Vec<f32>,
    /// Softmax of each extra head, element 0: the pause probability of each head. Empty when
    /// the model has no extra heads.
    pub pause: Vec<f32>,
}

/// One audio stream through the LM and Mimi of a checkpoint.
pub struct Streamer {
    lm: LmModel,
    mimi: Mimi,
    device: Device,
    frame_samples: usize,
    text_card: usize,
    pause_heads: usize,
    /// Audio codes the LM gets at the next step: the previous frame's, as in `asr::State`.
    next_audio: Vec<u32>,
    /// Text token the LM gets at the next step: the previous greedy token.
    next_text: u32,
}

impl Streamer {
    /// Loads the checkpoint in `dir`, the LM in `dtype` (f32 or bf16) and Mimi in f32 as the
    /// production runtime does, both on `device`. bf16 needs a GPU device: candle 0.9.1 has no
    /// bf16 matmul on CPU. A bf16 checkpoint loads exactly into f32.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        match dtype {
            DType::F32 => {}
            // Caught here rather than as "unsupported dtype BF16 for op matmul" at the first step.
            DType::BF16 if device.is_cpu() => bail!(
                "dtype bf16 is not supported on CPU (candle 0.9.1 has no CPU bf16 matmul); use f32"
            ),
            DType::BF16 => {}
            _ => bail!("dtype must be f32 or bf16, got {}", dtype.as_str()),
        }
        let ckpt = Checkpoint::open(dir)?;
        let frame_samples = frame_samples(&ckpt.mimi)?;
        // SAFETY: the mappings are read-only; the files must not change while the models load.
        let lm_vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&ckpt.lm_file], dtype, device) }?;
        let lm = build_lm(&ckpt.lm, lm_vb)?;
        let mimi_vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&ckpt.mimi_file], DType::F32, device) }?;
        let mimi = build_mimi(&ckpt.mimi, mimi_vb)?;
        Ok(Self {
            next_audio: vec![lm.audio_pad_token(); lm.in_audio_codebooks()],
            next_text: lm.text_start_token(),
            lm,
            mimi,
            device: device.clone(),
            frame_samples,
            text_card: ckpt.lm.text_out_vocab_size,
            pause_heads: ckpt.lm.extra_heads.map_or(0, |h| h.num_heads),
        })
    }

    /// Number of audio codebooks per frame, i.e. the length `step_tokens` expects.
    pub fn n_q(&self) -> usize {
        self.lm.in_audio_codebooks()
    }

    /// Audio samples per frame (1920 at 24 kHz and 12.5 Hz).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Number of text logits per step.
    pub fn text_card(&self) -> usize {
        self.text_card
    }

    /// Number of pause probabilities per step (the model's extra heads; 0 if it has none).
    pub fn pause_heads(&self) -> usize {
        self.pause_heads
    }

    /// Starts a new stream: clears the LM and Mimi caches and the carried-over inputs.
    pub fn reset(&mut self) {
        self.lm.reset_state();
        self.mimi.reset_state();
        self.next_audio.fill(self.lm.audio_pad_token());
        self.next_text = self.lm.text_start_token();
    }

    /// Encodes `pcm` (mono, any multiple of `frame_samples` samples) with Mimi and runs one LM
    /// step per frame Mimi produces.
    pub fn step_pcm(&mut self, pcm: &[f32]) -> Result<Vec<Step>> {
        self.encode_pcm(pcm)?
            .iter()
            .map(|codes| self.step_tokens(codes))
            .collect()
    }

    /// Like `step_pcm`, but after step t the LM reads `text[t]` instead of the token it wrote
    /// (teacher forcing): the pause heads are then read as if the transcript were exactly `text`,
    /// which tells recognition errors from head behaviour. Each step still reports its own greedy
    /// token and logits. `text` needs one token (below the text vocabulary size) per frame.
    pub fn step_pcm_forced(&mut self, pcm: &[f32], text: &[u32]) -> Result<Vec<Step>> {
        let frames = self.encode_pcm(pcm)?;
        if text.len() != frames.len() {
            bail!(
                "forced text has {} tokens for {} audio frames; give one per frame",
                text.len(),
                frames.len()
            );
        }
        let vocab = self.text_card() as u32;
        if let Some((i, t)) = text.iter().enumerate().find(|(_, &t)| t >= vocab) {
            bail!("forced text token {t} at frame {i} is out of range (text vocabulary {vocab})");
        }
        frames
            .iter()
            .zip(text)
            .map(|(codes, &token)| {
                let step = self.step_tokens(codes)?;
                self.next_text = token;
                Ok(step)
            })
            .collect()
    }

    /// Mimi's codes for `pcm` (mono, any multiple of `frame_samples` samples), one `n_q`-long
    /// vector per frame. Streaming: it continues the Mimi state of earlier calls.
    pub fn encode_pcm(&mut self, pcm: &[f32]) -> Result<Vec<Vec<u32>>> {
        check_whole_frames(pcm, self.frame_samples)?;
        let mut frames = vec![];
        // One frame per call, as the ASR server feeds Mimi.
        for chunk in pcm.chunks(self.frame_samples) {
            let xs = Tensor::from_slice(chunk, (1, 1, chunk.len()), &self.device)?;
            let codes = self.mimi.encode_step(&xs.into(), &StreamMask::empty())?;
            if let Some(codes) = codes.as_option() {
                // (1, n_q, frames) -> one row per frame.
                frames.extend(codes.i(0)?.t()?.to_vec2::<u32>()?);
            }
        }
        Ok(frames)
    }

    /// Runs one LM step on the audio codes of one frame (`n_q` of them, each below the
    /// codebook size). The LM sees these codes at the next step, as in `asr::State`.
    pub fn step_tokens(&mut self, codes: &[u32]) -> Result<Step> {
        let n_q = self.n_q();
        if codes.len() != n_q {
            bail!(
                "expected {n_q} audio codes (one per codebook), got {}",
                codes.len()
            );
        }
        let card = self.lm.audio_pad_token();
        if let Some((i, c)) = codes.iter().enumerate().find(|(_, &c)| c >= card) {
            bail!("audio code {c} of codebook {i} is out of range (codebook size {card})");
        }

        let audio = self
            .next_audio
            .iter()
            .map(|&c| Tensor::from_vec(vec![c], (1, 1), &self.device).map(Some))
            .collect::<candle::Result<Vec<_>>>()?;
        let text = Tensor::from_vec(vec![self.next_text], (1, 1), &self.device)?;
        let (text_logits, transformer_out) =
            self.lm
                .forward_cond(Some(text), audio, None, &StreamMask::empty())?;

        // The same ops as `asr::State::step_tokens`, so the numbers are bit for bit its own.
        let pause = self
            .lm
            .extra_heads(&transformer_out)?
            .iter()
            .map(|head| {
                let prs = candle_nn::ops::softmax_last_dim(&head.to_dtype(DType::F32)?)?;
                prs.i((0, 0, 0))?.to_scalar::<f32>()
            })
            .collect::<candle::Result<Vec<_>>>()?;
        let text_logits = text_logits.i((.., 0))?;
        let text_token = text_logits.argmax(D::Minus1)?.i(0)?.to_scalar::<u32>()?;

        self.next_audio.copy_from_slice(codes);
        self.next_text = text_token;
        Ok(Step {
            text_token,
            text_logits: text_logits.i(0)?.to_dtype(DType::F32)?.to_vec1()?,
            pause,
        })
    }
}

/// Refuses audio that is not a whole number of `frame_samples`-sample frames.
pub(crate) fn check_whole_frames(pcm: &[f32], frame_samples: usize) -> Result<()> {
    if !pcm.len().is_multiple_of(frame_samples) {
        bail!(
            "pcm length must be a multiple of {frame_samples} samples, got {}",
            pcm.len()
        );
    }
    Ok(())
}

/// Samples per Mimi frame, from the config's rates (24000 / 12.5 = 1920 for Kyutai's Mimi).
pub(crate) fn frame_samples(cfg: &moshi::mimi::Config) -> Result<usize> {
    let samples = cfg.sample_rate / cfg.frame_rate;
    if !(samples >= 1.0 && samples.fract() == 0.0) {
        bail!(
            "Mimi sample_rate / frame_rate must be a whole number of samples, got {} / {}",
            cfg.sample_rate,
            cfg.frame_rate
        );
    }
    Ok(samples as usize)
}
