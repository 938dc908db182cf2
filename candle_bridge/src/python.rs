//! The `candle_bridge` Python extension module (built by maturin with feature `python`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::Path;

/// Checks the checkpoint directory `path` against Kyutai's Rust moshi models and returns the
/// report as JSON text. Raises ValueError with a one-line message when the checkpoint cannot
/// be inspected at all (unreadable config, missing weight files, unsupported config).
#[pyfunction]
#[pyo3(name = "check_checkpoint", signature = (path, lm_dtype = "bf16"))]
fn py_check_checkpoint(py: Python<'_>, path: &str, lm_dtype: &str) -> PyResult<String> {
    let lm_dtype: candle::DType = lm_dtype.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "lm_dtype: unknown dtype {lm_dtype:?} (expected e.g. \"bf16\" or \"f32\")"
        ))
    })?;
    // Loading a 1B model takes seconds: let other Python threads run meanwhile.
    let report = py
        .allow_threads(|| crate::check_checkpoint(Path::new(path), lm_dtype))
        .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
    serde_json::to_string(&report).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Times moshi-server's batched step on `device` ("cpu", "cuda", "cuda:N") for the checkpoint
/// directory `path` with `batch` streams: returns (step_ms, mimi_ms), the milliseconds of the
/// whole `asr::State` step and of its Mimi encode alone at each of steps `timed_from..timed_to`.
#[pyfunction]
#[pyo3(name = "time_server_steps")]
fn py_time_server_steps(
    py: Python<'_>,
    path: &str,
    batch: usize,
    timed_from: usize,
    timed_to: usize,
    device: &str,
) -> PyResult<(Vec<f64>, Vec<f64>)> {
    let err = |e: anyhow::Error| PyValueError::new_err(format!("{e:#}"));
    let device = crate::device_from_name(device).map_err(err)?;
    let times = py
        .allow_threads(|| {
            crate::time_server_steps(Path::new(path), batch, timed_from, timed_to, &device)
        })
        .map_err(err)?;
    Ok((times.step_ms, times.mimi_ms))
}

/// Writes the safetensors file `dst`: `header` (length prefix and JSON) then, in order, each
/// entry (name, base key, dtype, kind, a, b), kind being "base" (the base tensor cast to dtype),
/// "merge" (plus scaling * B @ A, with a and b the adapter's A and B tensors) or "table" (the
/// adapter tensor a in the base's dtype). Returns (sha256 hex, update², kept², error²): the
/// squared norms of the merges (see weights.rs). Raises ValueError with a one-line message.
#[pyfunction]
#[pyo3(name = "rewrite_safetensors", signature = (src, dst, header, entries, adapter = None, scaling = 1.0))]
fn py_rewrite_safetensors(
    py: Python<'_>,
    src: &str,
    dst: &str,
    header: Vec<u8>,
    entries: Vec<(String, String, String, String, String, String)>,
    adapter: Option<String>,
    scaling: f32,
) -> PyResult<(String, f64, f64, f64)> {
    let entries = entries
        .into_iter()
        .map(|(name, key, dtype, kind, a, b)| {
            let source = match kind.as_str() {
                "base" => crate::Source::Base,
                "merge" => crate::Source::Merge { a, b },
                "table" => crate::Source::Table(a),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "entry {name}: unknown kind {other:?}"
                    )))
                }
            };
            Ok(crate::Entry {
                name,
                key,
                dtype,
                source,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let done = py
        .allow_threads(|| {
            crate::rewrite(
                Path::new(src),
                Path::new(dst),
                &header,
                &entries,
                adapter.as_deref().map(Path::new),
                scaling,
            )
        })
        .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
    Ok((done.sha256, done.update, done.kept, done.error))
}

#[pymodule]
fn candle_bridge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(py_check_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(py_time_server_steps, m)?)?;
    m.add_function(wrap_pyfunction!(py_rewrite_safetensors, m)?)?;
    m.add_class::<crate::python_streamer::PyStreamer>()?;
    m.add_class::<crate::python_server_streamer::PyServerStreamer>()?;
    m.add("WARMUP_FRAMES", crate::WARMUP_FRAMES)?;
    Ok(())
}
