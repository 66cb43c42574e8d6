//! Triton's Python backend: a version folder holding `model.py` (a `TritonPythonModel`) is served
//! by worker processes running the user's code; its inputs and outputs are declared in
//! `model.yaml` or Triton's `config.pbtxt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroserve_backend_python::{TritonModel, TritonSpec, DEFAULT_TIMEOUT_READY};
use ferroserve_core::{Backend, Result, Signature, TensorSpec};
use ferroserve_tasks::TaskKind;
use serde_json::json;

use super::{BackendLoader, Detected, LoadSpec};
use crate::config::{ModelConfig, TensorDecl};

/// The file that makes a version folder a Python model.
const MODEL_PY: &str = "model.py";

/// Loads Python models with the model's `python:` interpreter, else `python`.
pub(crate) struct PythonLoader {
    /// The server's default interpreter (`--python`).
    pub python: PathBuf,
}

impl BackendLoader for PythonLoader {
    fn name(&self) -> &'static str {
        "python"
    }

    fn platform(&self) -> &'static str {
        "python"
    }

    fn triton_backend(&self) -> &'static str {
        "python"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        task.is_none()
    }

    fn detect(&self, folder: &Path, _: &ModelConfig) -> Option<Detected> {
        folder.join(MODEL_PY).is_file().then(|| Detected {
            model_file: MODEL_PY.into(),
            task: None,
        })
    }

    fn expected_file(&self, _: &ModelConfig) -> String {
        MODEL_PY.into()
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        if let Some(t) = config.task {
            return Err(format!(
                "backend python serves plain models (tensors in and out), and this one has task {}",
                t.as_str()
            ));
        }
        if config.inputs.is_empty() || config.outputs.is_empty() {
            return Err("backend python needs the model's inputs and outputs declared: inputs: and outputs: in model.yaml (or input and output in config.pbtxt)".into());
        }
        Ok(())
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let config = spec.config;
        let batch = config.batch_limit();
        let signature = Signature {
            inputs: config.inputs.iter().map(|t| declared(t, batch)).collect(),
            outputs: config.outputs.iter().map(|t| declared(t, batch)).collect(),
        };
        let model = TritonModel::load(TritonSpec {
            model: spec.model,
            version: version_name(spec.file.parent().unwrap_or(spec.model_dir), spec.model_dir),
            model_py: spec.file,
            model_dir: spec.model_dir,
            config_json: triton_json(spec.model, config, &signature, json!({})).to_string(),
            signature,
            python: interpreter(config, spec.model_dir, &self.python),
            timeout_ready: timeout_ready(config),
            device: spec.device,
            replica: spec.replica,
            health: spec.health.clone(),
        })?;
        Ok(Box::new(model))
    }
}

/// A declared tensor as clients see it: with the batch dimension when the model batches.
pub(super) fn declared(t: &TensorDecl, batch: usize) -> TensorSpec {
    let mut shape = Vec::with_capacity(t.dims.len() + 1);
    if batch > 0 {
        shape.push(-1);
    }
    shape.extend(&t.dims);
    TensorSpec {
        name: t.name.clone(),
        datatype: t.datatype,
        shape,
    }
}

/// The version's number as its folder names it (`1` for a bare model, whose files sit in the
/// model folder itself).
pub(super) fn version_name(version_dir: &Path, model_dir: &Path) -> String {
    if version_dir == model_dir {
        return "1".into();
    }
    version_dir
        .file_name()
        .map_or_else(|| "1".to_string(), |n| n.to_string_lossy().into_owned())
}

/// How long a worker may take to start and load, from `timeout_ready` (ms; -1: forever).
pub(super) fn timeout_ready(config: &ModelConfig) -> Option<Duration> {
    match config.timeout_ready {
        None => Some(DEFAULT_TIMEOUT_READY),
        Some(-1) => None,
        Some(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
    }
}

/// The model's interpreter: its `python:` (a relative path with a folder, `venv/bin/python`,
/// is the model folder's; a bare name is looked up on PATH), else the server's.
pub(super) fn interpreter(config: &ModelConfig, model_dir: &Path, default: &Path) -> PathBuf {
    match &config.python {
        Some(p) if p.is_relative() && p.components().count() > 1 => model_dir.join(p),
        Some(p) => p.clone(),
        None => default.to_path_buf(),
    }
}

/// The model's configuration in Triton's JSON, which `initialize(args)` reads as
/// `args['model_config']` (`pb_utils.get_output_config_by_name` looks in it); `parameters`
/// (a flat object of strings) become Triton's `{"key": {"string_value": ...}}`.
pub(super) fn triton_json(
    model: &str,
    config: &ModelConfig,
    signature: &Signature,
    parameters: serde_json::Value,
) -> serde_json::Value {
    let batch = config.batch_limit();
    let tensors = |list: &[TensorSpec]| {
        list.iter()
            .map(|t| {
                // As Triton writes dims: without the batch dimension when the model batches.
                let dims = if batch > 0 {
                    &t.shape[1.min(t.shape.len())..]
                } else {
                    &t.shape[..]
                };
                json!({
                    "name": t.name,
                    "data_type": t.datatype.config_name(),
                    "dims": dims,
                })
            })
            .collect::<Vec<_>>()
    };
    let parameters: serde_json::Map<String, serde_json::Value> = parameters
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            (k.clone(), json!({ "string_value": text }))
        })
        .collect();
    let mut out = json!({
        "name": model,
        "backend": "python",
        "max_batch_size": batch,
        "input": tensors(&signature.inputs),
        "output": tensors(&signature.outputs),
        "instance_group": [{"count": config.replicas, "kind": "KIND_CPU"}],
        "parameters": parameters,
    });
    if let Some(db) = &config.dynamic_batching {
        out["dynamic_batching"] = json!({
            "preferred_batch_size": db.preferred_batch_size,
            "max_queue_delay_microseconds": db.max_queue_delay_us,
            "preserve_ordering": db.preserve_ordering,
        });
    }
    out
}

/// The interpreter when neither the model nor `--python` names one.
pub(crate) fn default_python() -> PathBuf {
    PathBuf::from("python3")
}
