//! `Streamer` against Kyutai's own streaming ASR (`moshi::asr::State`) on tiny fixtures.

mod common;

use candle::{DType, Device, Tensor};
use candle_bridge::{build_lm, build_mimi, Checkpoint, Step, Streamer};
use candle_nn::VarBuilder;
use common::{edit_weights, lm_json, write_checkpoint, LM_FILE, MIMI_FILE};
use moshi::asr::{AsrMsg, State};
use std::path::Path;
use tempfile::TempDir;

/// The delay (in steps) of kyutai/stt-1b-en_fr's ASR config: 0.5 s at 12.5 Hz, + 0.
const ASR_DELAY: usize = 6;
const FRAME: usize = 1920;
const N_Q: usize = 4;
const CARD: u32 = 64;
const TEXT_CARD: usize = 100;
const STEPS: usize = 60;

/// A fixture whose Mimi codes and greedy text tokens change from step to step, the tokens
/// including the word ends 0 and 3; otherwise the comparisons below would test little.
///
/// The common fixture's weights (std 0.02) shrink the signal layer by layer, so Mimi gives the
/// same codes for any audio: rescale its matrices to std 1/sqrt(fan_in) and its cluster usage
/// to 1. The LM's text logits are
/// nearly flat and the argmax barely moves, so no word would ever be closed: keep a few rows of
/// `text_linear`, scaled up, and zero the others.
fn fixture() -> TempDir {
    let dir = TempDir::new().unwrap();
    write_checkpoint(dir.path(), &lm_json(), DType::BF16);
    edit_weights(&dir.path().join(MIMI_FILE), |tensors| {
        for (name, t) in tensors.iter_mut() {
            if name.ends_with("cluster_usage") {
                // Codebook entries are embedding_sum / cluster_usage: keep them near the latents.
                *t = t.ones_like().unwrap();
            } else if t.rank() >= 2 {
                let fan_in: usize = t.dims()[1..].iter().product();
                *t = (&*t * (1.0 / (0.02 * (fan_in as f64).sqrt()))).unwrap();
            }
        }
    });
    edit_weights(&dir.path().join(LM_FILE), |tensors| {
        let name = "text_linear.weight".to_string();
        let scale: Vec<f32> = (0..TEXT_CARD)
            .map(|i| {
                if [0, 3, 10, 11, 12].contains(&i) {
                    300.0
                } else {
                    0.0
                }
            })
            .collect();
        let scale = Tensor::from_vec(scale, (TEXT_CARD, 1), &Device::Cpu).unwrap();
        let w = tensors[&name].to_dtype(DType::F32).unwrap();
        let w = w
            .broadcast_mul(&scale)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        tensors.insert(name, w);
    });
    dir
}

/// The LM in f32: the only dtype candle can run on CPU. The bf16 fixture loads exactly.
fn open(dir: &TempDir) -> Streamer {
    Streamer::open(dir.path(), DType::F32, &Device::Cpu).unwrap()
}

/// Kyutai's streaming ASR on the same checkpoint: batch 1, greedy, the 1B model's delay.
fn asr_state(dir: &Path) -> State {
    let ckpt = Checkpoint::open(dir).unwrap();
    let vb = |file: &Path, dtype| {
        unsafe { VarBuilder::from_mmaped_safetensors(&[file], dtype, &Device::Cpu) }.unwrap()
    };
    let lm = build_lm(&ckpt.lm, vb(&ckpt.lm_file, DType::F32)).unwrap();
    let mimi = build_mimi(&ckpt.mimi, vb(&ckpt.mimi_file, DType::F32)).unwrap();
    State::new(1, ASR_DELAY, 0.0, mimi, lm).unwrap()
}

/// Deterministic pseudo-random numbers in [0, 1) (a 64-bit LCG), so failures reproduce.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `STEPS` frames of valid audio codes, one `N_Q`-long row per frame.
fn codes() -> Vec<Vec<u32>> {
    uniform(STEPS * N_Q, 1)
        .chunks(N_Q)
        .map(|row| row.iter().map(|u| (u * CARD as f32) as u32).collect())
        .collect()
}

/// `frames` frames of noise in [-0.5, 0.5).
fn noise(frames: usize) -> Vec<f32> {
    uniform(frames * FRAME, 2)
        .into_iter()
        .map(|u| u - 0.5)
        .collect()
}

/// asr.rs's word rule applied to our tokens: once the step count reaches the delay, tokens 0
/// and 3 close the word being built (if any) and every other token extends it.
fn words_of(steps: &[Step]) -> Vec<Vec<u32>> {
    let (mut words, mut word) = (vec![], vec![]);
    for (i, step) in steps.iter().enumerate() {
        if i + 1 < ASR_DELAY {
            continue;
        }
        match step.text_token {
            0 | 3 if !word.is_empty() => words.push(std::mem::take(&mut word)),
            0 | 3 => {}
            t => word.push(t),
        }
    }
    words
}

/// Our steps say what `State`'s messages say: the same pause probabilities at every step (bit
/// for bit) and the same words.
fn assert_matches_asr(steps: &[Step], msgs: &[AsrMsg]) {
    let (mut pauses, mut words) = (vec![], vec![]);
    for msg in msgs {
        match msg {
            // `prs` is indexed [head][batch item].
            AsrMsg::Step { prs, .. } => pauses.push(prs.iter().map(|p| p[0]).collect::<Vec<_>>()),
            AsrMsg::Word { tokens, .. } => words.push(tokens.clone()),
            AsrMsg::EndWord { .. } => {}
        }
    }
    let ours: Vec<_> = steps.iter().map(|s| s.pause.clone()).collect();
    assert_eq!(ours, pauses);
    assert_eq!(words_of(steps), words);
    assert!(
        words.len() >= 3,
        "too few words to test anything: {words:?}"
    );
}

#[test]
fn step_tokens_match_asr_state() {
    let dir = fixture();
    let codes = codes();
    let mut streamer = open(&dir);
    assert_eq!(
        (
            streamer.n_q(),
            streamer.frame_samples(),
            streamer.text_card(),
            streamer.pause_heads()
        ),
        (N_Q, FRAME, TEXT_CARD, 4)
    );
    let steps: Vec<Step> = codes
        .iter()
        .map(|c| streamer.step_tokens(c).unwrap())
        .collect();
    assert!(steps
        .iter()
        .all(|s| s.text_logits.len() == TEXT_CARD && s.pause.len() == 4));
    assert!(steps
        .iter()
        .all(|s| s.pause.iter().all(|p| (0.0..1.0).contains(p))));

    let mut state = asr_state(dir.path());
    // (batch, codebooks, steps), as `State::step_tokens` takes them.
    let codes_t = Tensor::from_vec(codes.concat(), (1, STEPS, N_Q), &Device::Cpu)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let msgs = state
        .step_tokens(&codes_t, None, &().into(), |_, _, _| ())
        .unwrap();
    assert_matches_asr(&steps, &msgs);
}

#[test]
fn step_pcm_matches_asr_state() {
    let dir = fixture();
    let pcm = noise(STEPS);
    let mut streamer = open(&dir);
    let steps = streamer.step_pcm(&pcm).unwrap();
    assert_eq!(steps.len(), STEPS, "one step per 1920-sample frame");

    let mut state = asr_state(dir.path());
    let mut msgs = vec![];
    // One frame per call, as the ASR server feeds it.
    for chunk in pcm.chunks(FRAME) {
        let chunk = Tensor::from_slice(chunk, (1, 1, FRAME), &Device::Cpu).unwrap();
        msgs.extend(
            state
                .step_pcm(chunk, None, &().into(), |_, _, _| ())
                .unwrap(),
        );
    }
    assert_matches_asr(&steps, &msgs);
}

#[test]
fn step_pcm_is_encode_pcm_then_step_tokens() {
    let dir = fixture();
    let pcm = noise(25);
    let mut streamer = open(&dir);
    // Fed in uneven pieces: Mimi's state carries over between calls.
    let mut steps = streamer.step_pcm(&pcm[..3 * FRAME]).unwrap();
    steps.extend(streamer.step_pcm(&pcm[3 * FRAME..]).unwrap());

    streamer.reset();
    let codes = streamer.encode_pcm(&pcm).unwrap();
    assert_eq!(codes.len(), 25);
    assert!(codes
        .iter()
        .all(|c| c.len() == N_Q && c.iter().all(|&x| x < CARD)));
    streamer.reset();
    let from_codes: Vec<Step> = codes
        .iter()
        .map(|c| streamer.step_tokens(c).unwrap())
        .collect();
    assert_eq!(steps, from_codes);
}

#[test]
fn reset_replays_the_same_outputs() {
    let dir = fixture();
    let pcm = noise(12);
    let mut streamer = open(&dir);
    let first = streamer.step_pcm(&pcm).unwrap();
    let second = streamer.step_pcm(&pcm).unwrap();
    assert_ne!(first, second, "the stream state carries over without reset");
    streamer.reset();
    assert_eq!(streamer.step_pcm(&pcm).unwrap(), first);
}

fn err<T>(result: anyhow::Result<T>) -> String {
    format!("{:#}", result.map(drop).unwrap_err())
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let dir = fixture();
    let mut streamer = open(&dir);

    assert_eq!(
        err(streamer.step_tokens(&[1, 2, 3])),
        "expected 4 audio codes (one per codebook), got 3"
    );
    assert_eq!(
        err(streamer.step_tokens(&[1, 2, 64, 3])),
        "audio code 64 of codebook 2 is out of range (codebook size 64)"
    );
    assert_eq!(
        err(streamer.step_pcm(&[0.0; 1000])),
        "pcm length must be a multiple of 1920 samples, got 1000"
    );
    assert_eq!(
        err(Streamer::open(dir.path(), DType::F16, &Device::Cpu)),
        "dtype must be f32 or bf16, got f16"
    );
    assert!(err(Streamer::open(dir.path(), DType::BF16, &Device::Cpu))
        .starts_with("dtype bf16 is not supported on CPU"));
    // A rejected input leaves the stream untouched.
    let mut fresh = open(&dir);
    assert_eq!(
        streamer.step_tokens(&[1, 2, 3, 4]).unwrap(),
        fresh.step_tokens(&[1, 2, 3, 4]).unwrap()
    );
}
