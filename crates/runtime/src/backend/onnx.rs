//! ONNX files through ONNX Runtime. The library is loaded by the first ONNX model, so a
//! repository without one starts where no ONNX Runtime is installed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ferroserve_backend_onnx::{OnnxBackend, OnnxRuntime, SessionOptions};
use ferroserve_core::{Backend, Error, Result};
use ferroserve_tasks::TaskKind;

use super::{BackendLoader, Detected, LoadSpec};
use crate::config::ModelConfig;

/// The model file of a folder that names none.
const MODEL_FILE: &str = "model.onnx";

pub(super) struct OnnxLoader {
    library: PathBuf,
    runtime: OnceLock<OnnxRuntime>,
    /// Held while the library loads, so two first models do not load it twice.
    loading: Mutex<()>,
}

impl OnnxLoader {
    pub fn new(library: PathBuf) -> Self {
        Self {
            library,
            runtime: OnceLock::new(),
            loading: Mutex::new(()),
        }
    }

    /// ONNX Runtime, loaded on first use. A failure is not kept: installing the library and
    /// loading the model again works without a restart.
    fn runtime(&self) -> Result<&OnnxRuntime> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let _held = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let loaded =
            OnnxRuntime::load(&self.library).map_err(|e| Error::unavailable(e.to_string()))?;
        tracing::info!(library = %loaded.path().display(), "ONNX Runtime loaded");
        Ok(self.runtime.get_or_init(|| loaded))
    }

    fn file<'a>(&self, config: &'a ModelConfig) -> &'a str {
        config.model_file.as_deref().unwrap_or(MODEL_FILE)
    }
}

impl BackendLoader for OnnxLoader {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn triton_backend(&self) -> &'static str {
        "onnxruntime"
    }

    fn serves_task(&self, task: Option<TaskKind>) -> bool {
        !matches!(task, Some(TaskKind::Summarization | TaskKind::TextToImage))
    }

    fn detect(&self, folder: &Path, config: &ModelConfig) -> Option<Detected> {
        let file = self.file(config);
        // A model file named in model.yaml is ONNX when it says so by its extension, or when
        // model.yaml names this backend.
        let onnx = config.model_file.is_none()
            || file.ends_with(".onnx")
            || config.backend.as_deref() == Some(self.name());
        (onnx && folder.join(file).is_file()).then(|| Detected {
            model_file: file.to_string(),
            task: None,
        })
    }

    fn expected_file(&self, config: &ModelConfig) -> String {
        self.file(config).to_string()
    }

    fn check(&self, config: &ModelConfig) -> std::result::Result<(), String> {
        match config.task {
            Some(t) if !self.serves_task(Some(t)) => Err(format!(
                "task {} runs on a Hugging Face checkpoint folder (backend candle), not an ONNX file",
                t.as_str()
            )),
            _ => Ok(()),
        }
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Box<dyn Backend>> {
        let runtime = self.runtime()?;
        let backend = OnnxBackend::load(
            runtime,
            spec.file,
            SessionOptions {
                device: spec.device,
                intra_op_threads: Some(spec.threads),
                inter_op_threads: spec.config.inter_op_threads,
                share_weights: share_weights(spec),
            },
        )
        .map_err(|e| Error::invalid(e.to_string()))?;
        Ok(Box::new(backend))
    }
}

/// Whether a CPU replica is loaded to share its weights with the model's other replicas: when
/// the version is to have more than one, or may be scaled to more. A model loaded with one
/// replica and scaled up later keeps that first replica's own copy, and its new replicas share
/// one between them.
fn share_weights(spec: &LoadSpec<'_>) -> bool {
    spec.replicas > 1
        || spec
            .config
            .autoscaling
            .as_ref()
            .is_some_and(|a| a.max_replicas > 1)
}
