//! TorchServe handlers in Python workers: a version folder that is an unpacked `.mar` (or any
//! folder whose `model.yaml` names a `handler:`) is served by the bundled
//! `ferroserve_torchserve.py`, which loads the handler as TorchServe does and calls it with
//! TorchServe's contract: a list of rows (one per request of the batch) and a context.
//!
//! Every request carries two BYTES tensors, `body` (the request's bytes) and `meta` (JSON: the
//! headers, and which slice of `body` each parameter is: the raw body, multipart fields, query
//! keys); the answer is `output` (what the handler returned for the row, serialised as
//! TorchServe does), `content_type`, `status` and `headers` (what the handler set). The HTTP frontend builds them for
//! `/predictions/{model}`.

use ferroserve_backend_python::{TritonModel, TritonSpec};
use ferroserve_core::{Backend, DataType, Device, Error, Result, Signature, TensorSpec};
use ferroserve_tasks::TaskKind;
use serde_json::json;
use std::path::{Path, PathBuf};

use super::{BackendLoader, Detected, LoadSpec};
use crate::config::ModelConfig;
use crate::handler::{
    BODY_INPUT, CONTENT_TYPE_OUTPUT, HANDLER_OUTPUT, HEADERS_OUTPUT, META_INPUT, STATUS_OUTPUT,
};
use crate::torchserve_config::MANIFEST;

/// The adapter model that runs TorchServe handlers.
const ADAPTER: &str = "ferroserve_torchserve.py";

pub(crate) struct TorchServeLoader {
    /// The server's default interpreter (`--python`).
    pub python: PathBuf,
    /// Whether an archive's `requirementsFile` is installed (`--install-requirements`).
    pub install_requirements: bool,
}

impl BackendLoader for TorchServeLoader {
    fn name(&self) -> &'static str {
        "torchserve"
    }

    fn platform(&self) -> &'static str {
        "torchserve"
    }

    fn triton_backend(&self) -> &'static str {
        "python"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        task.is_none()
    }

    fn detect(&self, folder: &Path, config: &ModelConfig) -> Option<Detected> {
        let handler = config.handler.as_deref()?;
        let file = if folder.join(MANIFEST).is_file() {
            MANIFEST.to_string()
        } else {
            // A plain folder whose model.yaml names a handler file.
            let file = handler.split(':').next().unwrap_or(handler);
            if !file.ends_with(".py") || !folder.join(file).is_file() {
                return None;
            }
            file.to_string()
        };
        Some(Detected {
            model_file: file,
            task: None,
        })
    }

    fn expected_file(&self, _: &ModelConfig) -> String {
        MANIFEST.into()
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        if let Some(t) = config.task {
            return Err(format!(
                "backend torchserve runs a TorchServe handler, which does its own processing; task {} does not apply",
                t.as_str()
            ));
        }
        if config.handler.is_none() {
            return Err("backend torchserve needs handler: (a built-in TorchServe handler's name or a .py file)".into());
        }
        Ok(())
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let config = spec.config;
        let version_dir = version_folder(spec.file);
        // Each archive's own handler: versions of one model may come from different archives,
        // and the model's configuration is the newest one's.
        let handler = if crate::torchserve_config::is_archive(&version_dir) {
            crate::torchserve_config::read(&version_dir)
                .map_err(Error::invalid)?
                .handler
        } else {
            config.handler.clone()
        }
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: this version's handler is served natively, not by Python workers; archive every version with the same handler",
                version_dir.display()
            ))
        })?;
        let manifest_path = version_dir.join(MANIFEST);
        let manifest: serde_json::Value = match std::fs::read(&manifest_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("{}: {e}", manifest_path.display())))?,
            Err(_) => json!({"model": {"modelName": spec.model, "handler": handler}}),
        };
        let python = super::python::interpreter(config, spec.model_dir, &self.python);
        if let Some(file) = manifest["model"]["requirementsFile"].as_str() {
            self.requirements(spec.model, &version_dir.join(file), &python)?;
        }
        let batch = config.batch_limit();
        let one = |name: &str, datatype| TensorSpec {
            name: name.into(),
            datatype,
            shape: vec![if batch > 0 { -1 } else { 1 }],
        };
        let signature = Signature {
            inputs: vec![
                one(BODY_INPUT, DataType::Bytes),
                one(META_INPUT, DataType::Bytes),
            ],
            outputs: vec![
                one(HANDLER_OUTPUT, DataType::Bytes),
                one(CONTENT_TYPE_OUTPUT, DataType::Bytes),
                one(STATUS_OUTPUT, DataType::Int32),
                one(HEADERS_OUTPUT, DataType::Bytes),
            ],
        };
        let model_version = manifest["model"]["modelVersion"]
            .as_str()
            .unwrap_or("1.0")
            .to_string();
        let parameters = json!({
            "handler": handler,
            "model_dir": version_dir.display().to_string(),
            "manifest": manifest.to_string(),
            "batch_size": batch.max(1).to_string(),
            // A GPU replica's worker sees only its own GPU, as device 0.
            "gpu_id": if matches!(spec.device, Device::Cuda(_)) { "0" } else { "" },
            "model_name": spec.model,
            "model_version": model_version,
        });
        let adapter = ferroserve_backend_python::bundled(ADAPTER).map_err(Error::unavailable)?;
        let model = TritonModel::load(TritonSpec {
            model: spec.model,
            version: super::python::version_name(&version_dir, spec.model_dir),
            model_py: &adapter,
            model_dir: spec.model_dir,
            config_json: super::python::triton_json(spec.model, config, &signature, parameters)
                .to_string(),
            signature,
            python,
            timeout_ready: super::python::timeout_ready(config),
            device: spec.device,
            replica: spec.replica,
            health: spec.health.clone(),
        })?;
        Ok(Box::new(model))
    }
}

impl TorchServeLoader {
    /// Installs the archive's `requirements.txt` when the operator opted in; otherwise says
    /// what is not installed (once per replica load, which is rare).
    fn requirements(&self, model: &str, file: &Path, python: &Path) -> Result<()> {
        if !file.is_file() {
            return Ok(());
        }
        if !self.install_requirements {
            tracing::warn!(
                "model '{model}': the archive has {}, which is installed only when the server is started with --install-requirements; install it yourself with: {} -m pip install -r {}",
                file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                python.display(),
                file.display()
            );
            return Ok(());
        }
        ferroserve_backend_python::pip_install(python, file)
            .map_err(|e| Error::unavailable(format!("model '{model}': {e}")))
    }
}

/// The version folder of a model file that may sit in `MAR-INF/`.
fn version_folder(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new("."));
    if file.ends_with(MANIFEST) {
        parent.parent().unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}
