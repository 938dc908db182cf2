//! `Streamer` against Kyutai's own streaming ASR (`moshi::asr::State`) on tiny fixtures.

mod common;

use candle::{DType, Device, Tensor};
use candle_bridge::{build_lm, build_mimi, Checkpoint, Step, Streamer};
use candle_nn::VarBuilder;
use common::{fixture, noise, uniform, FRAME, TEXT_CARD};
use moshi::asr::{AsrMsg, State};
use std::path::Path;
use tempfile::TempDir;

/// The delay (in steps) of kyutai/stt-1b-en_fr's ASR config: 0.5 s at 12.5 Hz, + 0.
const ASR_DELAY: usize = 6;
const N_Q: usize = 4;
const CARD: u32 = 64;
const STEPS: usize = 60;

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

/// `STEPS` frames of valid audio codes, one `N_Q`-long row per frame.
fn codes() -> Vec<Vec<u32>> {
    uniform(STEPS * N_Q, 1)
        .chunks(N_Q)
        .map(|row| row.iter().map(|u| (u * CARD as f32) as u32).collect())
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

#[test]
fn forced_text_is_what_the_next_step_reads() {
    let dir = fixture();
    let pcm = noise(20);
    let mut streamer = open(&dir);
    let own = streamer.step_pcm(&pcm).unwrap();
    // Forcing the tokens the stream wrote itself changes nothing.
    let written: Vec<u32> = own.iter().map(|s| s.text_token).collect();
    streamer.reset();
    assert_eq!(streamer.step_pcm_forced(&pcm, &written).unwrap(), own);
    // Forcing other text: step 0 (it reads the start token) is unchanged, step 1 on sees the text.
    let other: Vec<u32> = written.iter().map(|&t| (t + 1) % TEXT_CARD as u32).collect();
    streamer.reset();
    let forced = streamer.step_pcm_forced(&pcm, &other).unwrap();
    assert_eq!(forced[0], own[0]);
    assert_ne!(forced[1].pause, own[1].pause);
    // Replaying the forced stream's own greedy choices is not the forced stream.
    assert_ne!(forced, own);
    streamer.reset();
    assert_eq!(
        err(streamer.step_pcm_forced(&pcm, &other[..19])),
        "forced text has 19 tokens for 20 audio frames; give one per frame"
    );
    let mut bad = other.clone();
    bad[4] = TEXT_CARD as u32;
    assert_eq!(
        err(streamer.step_pcm_forced(&pcm, &bad)),
        format!("forced text token {TEXT_CARD} at frame 4 is out of range (text vocabulary {TEXT_CARD})")
    );
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
