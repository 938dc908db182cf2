//! Device names as the Python side spells them: "cpu", "cuda" or "cuda:N".

use anyhow::{bail, Context, Result};
use candle::Device;

/// The Candle device called `name`. A CUDA device needs this crate built with feature `cuda`
/// (docs/gpu.md) and a GPU at run time.
pub fn device_from_name(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match name.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .with_context(|| format!("device {name:?}: the GPU index must be a number"))?,
            None => bail!("device {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "device {name:?}: this candle_bridge was built without CUDA; rebuild it with \
             feature cuda (docs/gpu.md)"
        );
    }
    Device::new_cuda(ordinal).with_context(|| format!("device {name:?}: no usable CUDA device"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(device_from_name("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "CUDA", ""] {
            assert!(device_from_name(bad).is_err(), "{bad}");
        }
        if !cfg!(feature = "cuda") {
            let err = device_from_name("cuda:0").unwrap_err().to_string();
            assert!(err.contains("built without CUDA"), "{err}");
        }
    }
}
