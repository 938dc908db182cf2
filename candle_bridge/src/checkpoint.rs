//! The checkpoint directory layout (same as kyutai/stt-1b-en_fr-candle): `config.json` with
//! PyTorch-moshi LM keys, the LM weights, the Mimi weights and optionally a Mimi config.

use crate::json_fields::Fields;
use crate::{lm_config_from_json, mimi_config_from_json};
use anyhow::{anyhow, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

const CONFIG_FILE: &str = "config.json";
const DEFAULT_LM_FILE: &str = "model.safetensors";

/// Everything needed to instantiate the Rust models of one checkpoint directory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub lm: moshi::lm::Config,
    pub mimi: moshi::mimi::Config,
    pub lm_file: PathBuf,
    pub mimi_file: PathBuf,
}

impl Checkpoint {
    /// Reads `dir/config.json` (and the Mimi config it names) and checks the weight files exist.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let json = read_json(
            &config_path,
            "pass a checkpoint directory that contains config.json",
        )?;
        let lm = lm_config_from_json(&json, &config_path)?;
        let f = Fields::root(&config_path, &json)?;

        let lm_file = dir.join(f.opt_str("moshi_name")?.unwrap_or(DEFAULT_LM_FILE));
        let mimi_file = dir.join(f.str("mimi_name")?);
        let n_q = lm.audio_codebooks;
        let mimi = match f.opt_str("mimi_config_name")? {
            None => moshi::mimi::Config::v0_1(Some(n_q)),
            Some(name) => {
                let path = dir.join(name);
                let what_to_do = "add it or fix `mimi_config_name` in config.json";
                mimi_config_from_json(&read_json(&path, what_to_do)?, &path, n_q)?
            }
        };

        require_file(
            &lm_file,
            "add the LM weights or fix `moshi_name` in config.json (default model.safetensors)",
        )?;
        require_file(
            &mimi_file,
            "add the Mimi weights or fix `mimi_name` in config.json",
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lm,
            mimi,
            lm_file,
            mimi_file,
        })
    }
}

fn read_json(path: &Path, what_to_do: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read ({e}); {what_to_do}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON ({e})", path.display()))
}

fn require_file(path: &Path, what_to_do: &str) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(anyhow!("{}: file not found; {what_to_do}", path.display()))
    }
}
