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
        let version = spec
            .file
            .parent()
            .filter(|p| *p != spec.model_dir)
            .and_then(Path::file_name)
            .map_or_else(|| "1".to_string(), |n| n.to_string_lossy().into_owned());
        let timeout_ready = match config.timeout_ready {
            None => Some(DEFAULT_TIMEOUT_READY),
            Some(-1) => None,
            Some(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
        };
        let model = TritonModel::load(TritonSpec {
            model: spec.model,
            version,
            model_py: spec.file,
            model_dir: spec.model_dir,
            config_json: triton_json(spec.model, config).to_string(),
            signature,
            // A relative path (`venv/bin/python`) is the model folder's; a bare name is looked
            // up on PATH.
            python: match &config.python {
                Some(p) if p.is_relative() && p.components().count() > 1 => spec.model_dir.join(p),
                Some(p) => p.clone(),
                None => self.python.clone(),
            },
            timeout_ready,
            device: spec.device,
            replica: spec.replica,
            health: spec.health.clone(),
        })?;
        Ok(Box::new(model))
    }
}

/// A declared tensor as clients see it: with the batch dimension when the model batches.
fn declared(t: &TensorDecl, batch: usize) -> TensorSpec {
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

/// The model's configuration in Triton's JSON, which `initialize(args)` reads as
/// `args['model_config']` (`pb_utils.get_output_config_by_name` looks in it).
fn triton_json(model: &str, config: &ModelConfig) -> serde_json::Value {
    let tensors = |list: &[TensorDecl]| {
        list.iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "data_type": t.datatype.config_name(),
                    "dims": t.dims,
                })
            })
            .collect::<Vec<_>>()
    };
    let mut out = json!({
        "name": model,
        "backend": "python",
        "max_batch_size": config.batch_limit(),
        "input": tensors(&config.inputs),
        "output": tensors(&config.outputs),
        "instance_group": [{"count": config.replicas, "kind": "KIND_CPU"}],
        "parameters": {},
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
