//! The `candle_bridge.Streamer` Python class over [`crate::Streamer`].

use crate::{device_from_name, Step, Streamer};
use candle::DType;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::Path;

/// (text tokens, text logits, pause probabilities) of several steps, one row per step.
type Steps<'py> = (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray2<f32>>,
);
/// (text token, text logits, pause probabilities) of one step.
type OneStep<'py> = (u32, Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>);

/// Streams audio through a checkpoint in Kyutai's Rust runtime (moshi crate) exactly as its
/// ASR server does (`moshi::asr::State`, batch 1, greedy), one step per 1920-sample frame of
/// 24 kHz mono audio. At each step the LM sees the previous frame's codes and the previous
/// text token.
///
/// Streamer(path: str, dtype: str = "f32", device: str = "cpu"): loads the checkpoint
/// directory `path` on `device` ("cpu", "cuda" or "cuda:N"; CUDA needs the build with
/// feature `cuda`, docs/gpu.md); the LM in `dtype` ("f32" or "bf16"; bf16 is refused on CPU, which
/// candle cannot run), Mimi in f32.
///
/// Methods (pcm: 1-D float32 NumPy array, or any sequence of floats; T = frames produced):
///   reset() -> None: starts a new stream.
///   step_pcm(pcm) -> (tokens: ndarray[uint32] (T,), logits: ndarray[float32] (T, text_card),
///       pause: ndarray[float32] (T, pause_heads)): Mimi-encodes `pcm` (a multiple of
///       `frame_samples` samples) and runs one LM step per frame.
///   step_tokens(codes: list[int]) -> (token: int, logits: ndarray[float32] (text_card,),
///       pause: ndarray[float32] (pause_heads,)): one LM step on one frame's `n_q` codes.
///   encode_pcm(pcm) -> ndarray[uint32] (T, n_q): Mimi codes only (the Mimi state carries
///       over; the LM state is untouched).
/// Attributes: n_q, frame_samples, text_card, pause_heads.
/// Bad input (wrong code count or range, pcm length, dtype) raises ValueError.
#[pyclass(name = "Streamer", module = "candle_bridge")]
pub(crate) struct PyStreamer {
    inner: Streamer,
}

#[pymethods]
impl PyStreamer {
    #[new]
    #[pyo3(signature = (path, dtype = "f32", device = "cpu"))]
    fn new(py: Python<'_>, path: &str, dtype: &str, device: &str) -> PyResult<Self> {
        let dtype: DType = dtype.parse().map_err(|_| {
            PyValueError::new_err(format!(
                "dtype: unknown dtype {dtype:?} (expected \"f32\" or \"bf16\")"
            ))
        })?;
        let device = device_from_name(device).map_err(value_error)?;
        // Loading a 1B model takes seconds: let other Python threads run meanwhile.
        let inner = py
            .allow_threads(|| Streamer::open(Path::new(path), dtype, &device))
            .map_err(value_error)?;
        Ok(Self { inner })
    }

    fn reset(&mut self) {
        self.inner.reset()
    }

    /// (tokens, logits, pause) per frame; `forced_text` (one token per frame): teacher forcing,
    /// see `Streamer::step_pcm_forced`.
    #[pyo3(signature = (pcm, forced_text = None))]
    fn step_pcm<'py>(
        &mut self,
        py: Python<'py>,
        pcm: &Bound<'py, PyAny>,
        forced_text: Option<Vec<u32>>,
    ) -> PyResult<Steps<'py>> {
        let pcm = samples(pcm)?;
        let steps = py
            .allow_threads(|| match &forced_text {
                Some(text) => self.inner.step_pcm_forced(&pcm, text),
                None => self.inner.step_pcm(&pcm),
            })
            .map_err(value_error)?;
        let rows = steps.len();
        let per_step = |f: fn(&Step) -> &[f32]| steps.iter().flat_map(f).copied().collect();
        Ok((
            PyArray1::from_iter(py, steps.iter().map(|s| s.text_token)),
            matrix(
                py,
                per_step(|s| &s.text_logits),
                rows,
                self.inner.text_card(),
            )?,
            matrix(py, per_step(|s| &s.pause), rows, self.inner.pause_heads())?,
        ))
    }

    fn step_tokens<'py>(&mut self, py: Python<'py>, codes: Vec<u32>) -> PyResult<OneStep<'py>> {
        let step = py
            .allow_threads(|| self.inner.step_tokens(&codes))
            .map_err(value_error)?;
        Ok((
            step.text_token,
            PyArray1::from_vec(py, step.text_logits),
            PyArray1::from_vec(py, step.pause),
        ))
    }

    fn encode_pcm<'py>(
        &mut self,
        py: Python<'py>,
        pcm: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let pcm = samples(pcm)?;
        let frames = py
            .allow_threads(|| self.inner.encode_pcm(&pcm))
            .map_err(value_error)?;
        let rows = frames.len();
        matrix(py, frames.concat(), rows, self.inner.n_q())
    }

    #[getter]
    fn n_q(&self) -> usize {
        self.inner.n_q()
    }

    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.frame_samples()
    }

    #[getter]
    fn text_card(&self) -> usize {
        self.inner.text_card()
    }

    #[getter]
    fn pause_heads(&self) -> usize {
        self.inner.pause_heads()
    }
}

/// The samples of `pcm`: a float32 NumPy array is copied as is, anything else is read as a
/// sequence of floats.
pub(crate) fn samples(pcm: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    if let Ok(array) = pcm.downcast::<PyArray1<f32>>() {
        return Ok(array.readonly().as_array().to_vec());
    }
    pcm.extract().map_err(|_| {
        PyValueError::new_err(format!(
            "pcm must be a 1-D float32 array or a sequence of floats, got {}",
            pcm.get_type()
        ))
    })
}

/// `values` (row-major) as a (rows, cols) array; a 0-row result keeps its column count.
pub(crate) fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    PyArray1::from_vec(py, values).reshape([rows, cols])
}

pub(crate) fn value_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}
