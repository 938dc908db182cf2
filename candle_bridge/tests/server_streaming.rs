//! `ServerStreamer` (moshi-server's semantics) against the fresh-state `Streamer`, and the
//! smallest reproduction of the slot-reset behaviour behind their difference.

mod common;

use candle::{DType, Device, Tensor};
use candle_bridge::{build_mimi_batched, Checkpoint, ServerStreamer, Streamer, WARMUP_FRAMES};
use candle_nn::VarBuilder;
use common::{fixture, noise, FRAME};
use moshi::StreamMask;

const ASR_DELAY: usize = 6;
const STEPS: usize = 40;

#[test]
fn each_connection_replays_the_same_outputs() {
    let dir = fixture();
    let pcm = noise(STEPS);
    let mut server = ServerStreamer::open(dir.path(), ASR_DELAY, &Device::Cpu).unwrap();
    assert_eq!((server.frame_samples(), server.pause_heads()), (FRAME, 4));
    let first = server.step_pcm(&pcm).unwrap();
    assert_eq!(first.len(), STEPS);
    assert!(
        first.iter().any(|s| !s.events.is_empty()),
        "no word events to compare"
    );
    server.new_connection().unwrap();
    assert_eq!(server.step_pcm(&pcm).unwrap(), first);
}

#[test]
fn the_first_step_sees_the_text_start_token_and_later_steps_the_previous_output() {
    let dir = fixture();
    let mut server = ServerStreamer::open(dir.path(), ASR_DELAY, &Device::Cpu).unwrap();
    let steps = server.step_pcm(&noise(STEPS)).unwrap();
    let fresh = Streamer::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(steps[0].text_input as usize, fresh.text_card());
    assert!(steps
        .iter()
        .skip(1)
        .any(|s| s.text_input as usize != fresh.text_card()));
}

/// The server's outputs are not a fresh stream's: documented upstream behaviour (see
/// docs/serving.md, "Production is not a fresh stream"). If a moshi release fixes the reset, this
/// fails and the production-semantics row of verify-candle becomes redundant.
#[test]
fn the_server_stream_differs_from_a_fresh_state() {
    let dir = fixture();
    let pcm = noise(STEPS);
    let mut server = ServerStreamer::open(dir.path(), ASR_DELAY, &Device::Cpu).unwrap();
    let mut fresh = Streamer::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let served: Vec<Vec<f32>> = server
        .step_pcm(&pcm)
        .unwrap()
        .into_iter()
        .map(|s| s.pause)
        .collect();
    let reference: Vec<Vec<f32>> = fresh
        .step_pcm(&pcm)
        .unwrap()
        .into_iter()
        .map(|s| s.pause)
        .collect();
    assert_eq!(served.len(), reference.len());
    assert_ne!(served, reference);
}

/// A checkpoint file's weights in f32 on the CPU, as the server maps them.
fn f32_weights(file: &std::path::Path) -> VarBuilder<'static> {
    // SAFETY: the fixture's files are not changed while the test runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }.unwrap()
}

fn mimi_codes(mimi: &mut moshi::mimi::Mimi, frame: &[f32]) -> Vec<u32> {
    let xs = Tensor::from_slice(frame, (1, 1, FRAME), &Device::Cpu).unwrap();
    let mask = StreamMask::new(vec![true], &Device::Cpu).unwrap();
    let codes = mimi.encode_step(&xs.into(), &mask).unwrap();
    codes
        .as_option()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The smallest reproduction for upstream: a batched Mimi that has stepped through silence and
/// then had its slot reset with `reset_batch_idx` encodes the first frame of a new stream
/// differently from a fresh Mimi; `reset_state` gives the fresh codes back.
#[test]
fn mimi_reset_batch_idx_is_not_a_fresh_state() {
    let dir = fixture();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let mimi = || build_mimi_batched(&ckpt.mimi, 1, f32_weights(&ckpt.mimi_file)).unwrap();
    let frame = noise(1);
    let fresh = mimi_codes(&mut mimi(), &frame);

    let mut slot_reset = mimi();
    let silence = vec![0f32; FRAME];
    for _ in 0..WARMUP_FRAMES {
        mimi_codes(&mut slot_reset, &silence);
    }
    slot_reset.reset_batch_idx(0, 1).unwrap();
    assert_ne!(mimi_codes(&mut slot_reset, &frame), fresh);

    let mut full_reset = mimi();
    for _ in 0..WARMUP_FRAMES {
        mimi_codes(&mut full_reset, &silence);
    }
    full_reset.reset_state();
    assert_eq!(mimi_codes(&mut full_reset, &frame), fresh);
}

fn lm_logits(lm: &mut moshi::lm::LmModel, steps: usize) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let mask = StreamMask::new(vec![true], &dev).unwrap();
    (0..steps)
        .map(|i| {
            let text = Tensor::new(&[[lm.text_start_token()]], &dev).unwrap();
            let audio = (0..lm.in_audio_codebooks())
                .map(|c| Some(Tensor::new(&[[((i * 7 + c * 3) % 64) as u32]], &dev).unwrap()))
                .collect();
            let (logits, _) = lm.forward_cond(Some(text), audio, None, &mask).unwrap();
            logits.flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

/// The LM's slot reset, by contrast, does give a fresh state back: the difference above is
/// Mimi's alone.
#[test]
fn lm_reset_batch_idx_is_a_fresh_state() {
    let dir = fixture();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let lm = || candle_bridge::build_lm_batched(&ckpt.lm, 1, f32_weights(&ckpt.lm_file)).unwrap();
    let fresh = lm_logits(&mut lm(), 5);
    let mut slot_reset = lm();
    lm_logits(&mut slot_reset, WARMUP_FRAMES);
    slot_reset.reset_batch_idx(0, 1).unwrap();
    assert_eq!(lm_logits(&mut slot_reset, 5), fresh);
}
