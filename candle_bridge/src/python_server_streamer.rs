//! The `candle_bridge.ServerStreamer` Python class over [`crate::ServerStreamer`].

use crate::python_streamer::{matrix, samples, value_error};
use crate::{device_from_name, ServerStreamer, WordEvent};
use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use std::path::Path;

/// A word event: (step, "word", tokens, start_time) or (step, "end_word", [], stop_time), with
/// `step` counted from the first step of the `step_pcm` call that produced it.
type Event = (usize, &'static str, Vec<u32>, f64);

/// Streams audio through a checkpoint with the semantics of Kyutai's moshi-server 0.6.4
/// (`BatchedAsr`, batch 1, greedy): batched models, two silent warm-up frames at start, then a
/// slot reset (`reset_batch_idx`) per connection. `Streamer` is the fresh-state reference;
/// this class is what production runs.
///
/// ServerStreamer(path: str, asr_delay_in_tokens: int, device: str = "cpu"): loads the
/// checkpoint directory `path` on `device` in the server's dtypes (LM f32 on "cpu", bf16 on
/// "cuda"/"cuda:N"; Mimi f32), warms up and opens the first connection.
///
/// Methods (pcm: 1-D float32 NumPy array, or any sequence of floats; T = frames produced):
///   new_connection() -> None: what the server does when a client connects (slot reset).
///   step_pcm(pcm) -> (text_input: ndarray[uint32] (T,), pause: ndarray[float32] (T, heads),
///       events: list[(step, kind, tokens, time)]): `text_input` is the token the LM was given
///       at each step (the previous greedy token); `pause` is each step's `Step.prs`; events
///       are the `Word` (kind "word", start_time) and `EndWord` (kind "end_word", stop_time)
///       messages in the server's order.
/// Attributes: frame_samples, pause_heads.
#[pyclass(name = "ServerStreamer", module = "candle_bridge")]
pub(crate) struct PyServerStreamer {
    inner: ServerStreamer,
}

#[pymethods]
impl PyServerStreamer {
    #[new]
    #[pyo3(signature = (path, asr_delay_in_tokens, device = "cpu"))]
    fn new(py: Python<'_>, path: &str, asr_delay_in_tokens: usize, device: &str) -> PyResult<Self> {
        let device = device_from_name(device).map_err(value_error)?;
        let inner = py
            .allow_threads(|| ServerStreamer::open(Path::new(path), asr_delay_in_tokens, &device))
            .map_err(value_error)?;
        Ok(Self { inner })
    }

    fn new_connection(&mut self) -> PyResult<()> {
        self.inner.new_connection().map_err(value_error)
    }

    #[allow(clippy::type_complexity)]
    fn step_pcm<'py>(
        &mut self,
        py: Python<'py>,
        pcm: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArray1<u32>>,
        Bound<'py, PyArray2<f32>>,
        Vec<Event>,
    )> {
        let pcm = samples(pcm)?;
        let steps = py
            .allow_threads(|| self.inner.step_pcm(&pcm))
            .map_err(value_error)?;
        let mut events = vec![];
        for (i, step) in steps.iter().enumerate() {
            for event in &step.events {
                events.push(match event {
                    WordEvent::Word { tokens, start_time } => {
                        (i, "word", tokens.clone(), *start_time)
                    }
                    WordEvent::EndWord { stop_time } => (i, "end_word", vec![], *stop_time),
                });
            }
        }
        let pause = steps.iter().flat_map(|s| s.pause.iter().copied()).collect();
        Ok((
            PyArray1::from_iter(py, steps.iter().map(|s| s.text_input)),
            matrix(py, pause, steps.len(), self.inner.pause_heads())?,
            events,
        ))
    }

    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.frame_samples()
    }

    #[getter]
    fn pause_heads(&self) -> usize {
        self.inner.pause_heads()
    }
}
