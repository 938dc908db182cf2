//! Reads the tensor index of a safetensors file (names, shapes, dtypes, where each tensor's bytes
//! are) from its JSON header only, so inspecting a multi-GB checkpoint reads a few kilobytes.

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Generous bound on the header size, to reject non-safetensors files before allocating.
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    /// Candle's spelling ("bf16", "f32", ...), i.e. the safetensors dtype lower-cased.
    pub dtype: String,
}

/// A file's tensors with where their bytes are: `data_start` + `offsets` (end exclusive).
pub struct Layout {
    pub data_start: u64,
    pub tensors: BTreeMap<String, (TensorInfo, [u64; 2])>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Tensor name -> info, sorted by name.
pub fn read_tensor_index(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    Ok(read_layout(path)?
        .tensors
        .into_iter()
        .map(|(name, (info, _))| (name, info))
        .collect())
}

/// The whole index, with each tensor's byte range.
pub fn read_layout(path: &Path) -> Result<Layout> {
    let not_safetensors =
        |why: String| anyhow!("{}: not a safetensors file ({why})", path.display());
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| not_safetensors(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(not_safetensors(format!(
            "header length {len} is implausible"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| not_safetensors(e.to_string()))?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| not_safetensors(e.to_string()))?;
    // The only non-tensor key safetensors allows.
    entries.remove("__metadata__");
    let tensors = entries
        .into_iter()
        .map(|(name, value)| {
            let raw: RawEntry = serde_json::from_value(value)
                .map_err(|e| not_safetensors(format!("entry {name:?}: {e}")))?;
            let info = TensorInfo {
                shape: raw.shape,
                dtype: raw.dtype.to_lowercase(),
            };
            Ok((name, (info, raw.data_offsets)))
        })
        .collect::<Result<_>>()?;
    Ok(Layout {
        data_start: 8 + len,
        tensors,
    })
}
