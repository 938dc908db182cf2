//! The minimal repro of docs/upstream/moshi-slot-reset.md, as filed: Kyutai's Mimi loaded as
//! moshi-server loads it, warmed up and slot-reset as `BatchedAsr` does, against a fresh Mimi.
//!
//!     minimal <tokenizer-e351c8d8-checkpoint125.safetensors> [n_q (default 32)]
//!
//! Panics (exit 101) on moshi 0.6.4 as published; passes with the patch.

use candle::{Device, Tensor};
use moshi::{mimi, StreamMask};

fn codes(mimi: &mut mimi::Mimi, pcm: &[f32]) -> candle::Result<Vec<u32>> {
    let xs = Tensor::from_slice(pcm, (1, 1, pcm.len()), &Device::Cpu)?;
    let mask = StreamMask::new(vec![true], &Device::Cpu)?;
    let codes = mimi.encode_step(&xs.into(), &mask)?;
    codes.as_option().expect("one frame in, one frame out").flatten_all()?.to_vec1()
}

fn main() -> candle::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (file, n_q) = (&args[1], args.get(2).map_or(32, |n| n.parse().unwrap()));
    let frame: Vec<f32> = (0..1920).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    let silence = vec![0f32; 1920];

    let mut fresh = mimi::load_b(Some(1), file, Some(n_q), &Device::Cpu)?;
    let fresh_codes = codes(&mut fresh, &frame)?;

    // moshi-server's BatchedAsr: two silent warm-up frames, then each connection resets its slot.
    let mut served = mimi::load_b(Some(1), file, Some(n_q), &Device::Cpu)?;
    codes(&mut served, &silence)?;
    codes(&mut served, &silence)?;
    served.reset_batch_idx(0, 1)?;
    let served_codes = codes(&mut served, &frame)?;

    println!("fresh:      {fresh_codes:?}\nslot reset: {served_codes:?}");
    assert_eq!(served_codes, fresh_codes, "a slot reset does not give a fresh stream's first frame");
    Ok(())
}
