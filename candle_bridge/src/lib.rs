//! Loads stt-numerals checkpoints with Kyutai's own Rust `moshi` crate (on Candle) and reports
//! how the checkpoint's tensors compare with what the Rust models expect, so a fine-tuned
//! model is verified in the runtime that will serve it.
//!
//! The expected tensors are not listed anywhere in this crate: they are recorded by running the
//! moshi constructors against a recording `VarBuilder` backend (see [`record_requests`]).
//!
//! [`Streamer`] then runs a checkpoint the way Kyutai's ASR server does, step by step, and
//! returns each step's text token, text logits and pause probabilities; [`ServerStreamer`]
//! runs it with the semantics of Kyutai's moshi-server (warm-up, then a slot reset).

mod block_writer;
mod checkpoint;
mod device;
mod fused_merge;
mod json_fields;
mod lm_config;
mod mimi_config;
mod models;
mod recorder;
mod report;
mod safetensors_header;
mod server_streaming;
mod step_timing;
mod streaming;
mod transformer_keys;
mod weights;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_server_streamer;
#[cfg(feature = "python")]
mod python_streamer;

pub use checkpoint::Checkpoint;
pub use device::device_from_name;
pub use lm_config::lm_config_from_json;
pub use mimi_config::mimi_config_from_json;
pub use models::{build_lm, build_lm_batched, build_mimi, build_mimi_batched};
pub use recorder::{record_requests, Requests};
pub use report::{
    check_checkpoint, CheckpointReport, PartReport, TensorEntry, WrongDtype, WrongShape,
};
pub use safetensors_header::{read_layout, read_tensor_index, Layout, TensorInfo};
pub use server_streaming::{ServerStep, ServerStreamer, WordEvent, WARMUP_FRAMES};
pub use step_timing::{time_server_steps, StepTimes};
pub use streaming::{Step, Streamer};
pub use weights::{rewrite, Entry, Rewritten, Source};
