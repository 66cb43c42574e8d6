//! Reading a checkpoint folder: JSON configs and safetensors weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::CandleError;

/// Parses a JSON file, naming it in the error.
pub(crate) fn json<T: DeserializeOwned>(path: &Path) -> Result<T, CandleError> {
    let text = std::fs::read_to_string(path).map_err(|e| CandleError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| CandleError::file(path, e))
}

/// The weights of `dir` named `stem` (`stem.safetensors`, or the shards listed in
/// `stem.safetensors.index.json`), as f32 on `device`.
///
/// The files are read, not memory-mapped: a checkpoint replaced on disk while it is served must
/// not change the weights under a running model.
pub(crate) fn var_builder(
    dir: &Path,
    stem: &str,
    device: &Device,
) -> Result<VarBuilder<'static>, CandleError> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in weight_files(dir, stem)? {
        let loaded = candle_core::safetensors::load(&file, device)
            .map_err(|e| CandleError::file(&file, e))?;
        for (name, t) in loaded {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            tensors.insert(name, t);
        }
    }
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

fn weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>, CandleError> {
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let parsed: Index = json(&index)?;
        let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
        shards.sort();
        shards.dedup();
        return shards
            .into_iter()
            .map(|s| {
                if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                    Err(CandleError::Invalid(format!(
                        "{}: shard name '{s}' must be a file in the same folder",
                        index.display()
                    )))
                } else {
                    Ok(dir.join(s))
                }
            })
            .collect();
    }
    Err(CandleError::Invalid(format!(
        "{}: no {stem}.safetensors (nor {stem}.safetensors.index.json); PyTorch .bin checkpoints are not read, convert them to safetensors",
        dir.display()
    )))
}
