//! The loaded models and their versions, and the path of one inference through them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ferroserve_backend_onnx::{OnnxBackend, OnnxRuntime, SessionOptions};
use ferroserve_core::{Backend, Error, InferRequest, InferResponse, Result, Signature};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use crate::config::{BackendKind, ModelConfig};
use crate::repository::{self, ModelSource};
use crate::validate;

/// Name of the platform ONNX models report in their metadata (Triton's name for it).
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";

/// Settings that apply to every model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Requests that may wait for or run on one model version at once; more are refused with
    /// [`Error::Unavailable`] instead of queueing without bound.
    pub max_queue_size: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_queue_size: 1024,
        }
    }
}

/// A model's description, as the protocol's metadata endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions that are ready, ascending.
    pub versions: Vec<String>,
    /// Backend platform, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Inputs, in the model's order.
    pub inputs: Vec<ferroserve_core::TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<ferroserve_core::TensorSpec>,
}

/// Whether a model version can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// Failed to load; the reason says why.
    Unavailable,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or `None` when the model folder itself is unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// State.
    pub state: ModelState,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One loaded model version: its signature and its replica.
struct Version {
    number: u64,
    signature: Signature,
    platform: &'static str,
    replica: Arc<Mutex<Box<dyn Backend>>>,
    /// Bounds requests waiting for or running on this version.
    admission: Arc<Semaphore>,
}

enum VersionState {
    Ready(Arc<Version>),
    Unavailable(String),
}

enum ModelEntry {
    Loaded(BTreeMap<u64, VersionState>),
    Unavailable(String),
}

/// The runtime: every model of the repository, and `infer` for frontends.
///
/// Frontends call [`Runtime::infer`] with a decoded request; the runtime picks the version,
/// validates the request against its signature, bounds the queue and runs the backend on a
/// blocking thread so the async frontends never stall on compute.
pub struct Runtime {
    onnx: OnnxRuntime,
    options: RuntimeOptions,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    ready: AtomicBool,
}

impl Runtime {
    /// Creates an empty runtime. Call [`Runtime::load_repository`] to fill it.
    pub fn new(onnx: OnnxRuntime, options: RuntimeOptions) -> Self {
        Self {
            onnx,
            options,
            models: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
        }
    }

    /// Loads every model under `root`. A model that fails is recorded as unavailable with its
    /// reason, and the others still serve; only an unreadable `root` is an error.
    pub fn load_repository(&self, root: &Path) -> std::io::Result<()> {
        for source in repository::scan(root)? {
            let entry = self.load_model(&source);
            self.write_models().insert(source.name, entry);
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    fn load_model(&self, source: &ModelSource) -> ModelEntry {
        let layout = match source.layout() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(model = %source.name, error = %e, "model unavailable");
                return ModelEntry::Unavailable(e.to_string());
            }
        };
        let versions = layout
            .versions
            .iter()
            .map(|(&number, file)| {
                let started = std::time::Instant::now();
                let state = match self.load_version(number, file, &layout.config) {
                    Ok(v) => {
                        tracing::info!(
                            model = %source.name,
                            version = number,
                            file = %file.display(),
                            inputs = %describe(&v.signature.inputs),
                            outputs = %describe(&v.signature.outputs),
                            load_ms = started.elapsed().as_millis() as u64,
                            "model ready"
                        );
                        VersionState::Ready(Arc::new(v))
                    }
                    Err(reason) => {
                        tracing::error!(model = %source.name, version = number, error = %reason, "model version unavailable");
                        VersionState::Unavailable(reason)
                    }
                };
                (number, state)
            })
            .collect();
        ModelEntry::Loaded(versions)
    }

    fn load_version(
        &self,
        number: u64,
        file: &Path,
        config: &ModelConfig,
    ) -> std::result::Result<Version, String> {
        let backend: Box<dyn Backend> = match config.backend {
            BackendKind::Onnx => Box::new(
                OnnxBackend::load(
                    &self.onnx,
                    file,
                    SessionOptions {
                        intra_op_threads: config.threads,
                        inter_op_threads: config.inter_op_threads,
                    },
                )
                .map_err(|e| e.to_string())?,
            ),
        };
        Ok(Version {
            number,
            signature: backend.signature().clone(),
            platform: ONNX_PLATFORM,
            replica: Arc::new(Mutex::new(backend)),
            admission: Arc::new(Semaphore::new(self.options.max_queue_size)),
        })
    }

    /// True once the repository has been loaded (models that failed do not hold the server
    /// back; they report their own readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether `model` (at `version`, or its default version) can serve. Unknown models and
    /// versions are [`Error::NotFound`].
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        match self.resolve(model, version) {
            Ok(_) => Ok(true),
            Err(Error::Unavailable(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The metadata of `model` at `version`, or at its default (highest ready) version.
    pub fn model_metadata(&self, model: &str, version: Option<&str>) -> Result<ModelMetadata> {
        let v = self.resolve(model, version)?;
        let versions = match version {
            Some(_) => vec![v.number.to_string()],
            None => self.ready_versions(model),
        };
        Ok(ModelMetadata {
            name: model.to_string(),
            versions,
            platform: v.platform.to_string(),
            inputs: v.signature.inputs.clone(),
            outputs: v.signature.outputs.clone(),
        })
    }

    /// Every model version and its state, sorted by name and version. With `ready_only`, only
    /// the ready ones.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read_models();
        let mut rows = Vec::new();
        for (name, entry) in models.iter() {
            match entry {
                ModelEntry::Unavailable(reason) => rows.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: Some(reason.clone()),
                }),
                ModelEntry::Loaded(versions) => {
                    for (number, state) in versions {
                        let (state, reason) = match state {
                            VersionState::Ready(_) => (ModelState::Ready, None),
                            VersionState::Unavailable(r) => {
                                (ModelState::Unavailable, Some(r.clone()))
                            }
                        };
                        rows.push(IndexEntry {
                            name: name.clone(),
                            version: Some(number.to_string()),
                            state,
                            reason,
                        });
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == ModelState::Ready);
        }
        rows
    }

    /// Runs one inference on `model` at `version` (or the default version).
    ///
    /// The request is validated against the version's signature first; a request beyond the
    /// version's queue bound is refused at once with [`Error::Unavailable`]. Dropping the
    /// returned future while it waits for the replica withdraws the request.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        let v = self.resolve(model, version)?;
        validate::check(model, &v.signature, &request)?;
        let permit = v.admission.clone().try_acquire_owned().map_err(|_| {
            Error::Unavailable(format!(
                "model '{model}' has {} requests in flight already; retry later",
                self.options.max_queue_size
            ))
        })?;
        let mut replica = v.replica.clone().lock_owned().await;
        let InferRequest {
            id,
            inputs,
            outputs,
            ..
        } = request;
        let outputs = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            replica.run(&inputs, &outputs)
        })
        .await
        .map_err(|e| Error::Internal(format!("model '{model}' failed: {e}")))??;
        Ok(InferResponse {
            model_name: model.to_string(),
            model_version: v.number.to_string(),
            id,
            outputs,
        })
    }

    fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<Version>> {
        let models = self.read_models();
        let entry = models
            .get(model)
            .ok_or_else(|| Error::NotFound(format!("unknown model '{model}'")))?;
        let versions = match entry {
            ModelEntry::Unavailable(reason) => {
                return Err(Error::Unavailable(format!(
                    "model '{model}' is not available: {reason}"
                )))
            }
            ModelEntry::Loaded(versions) => versions,
        };
        let state = match version {
            Some(v) => {
                let state = v
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| versions.get(&n))
                    .ok_or_else(|| {
                        let known: Vec<String> = versions.keys().map(u64::to_string).collect();
                        Error::NotFound(format!(
                            "unknown version '{v}' of model '{model}' (versions: {})",
                            known.join(", ")
                        ))
                    })?;
                if let VersionState::Unavailable(reason) = state {
                    return Err(Error::Unavailable(format!(
                        "model '{model}' version {v} is not available: {reason}"
                    )));
                }
                state
            }
            None => versions
                .values()
                .rev()
                .find(|s| matches!(s, VersionState::Ready(_)))
                .ok_or_else(|| {
                    Error::Unavailable(format!("model '{model}' has no version that loaded"))
                })?,
        };
        match state {
            VersionState::Ready(v) => Ok(v.clone()),
            VersionState::Unavailable(reason) => Err(Error::Unavailable(reason.clone())),
        }
    }

    fn ready_versions(&self, model: &str) -> Vec<String> {
        match self.read_models().get(model) {
            Some(ModelEntry::Loaded(versions)) => versions
                .iter()
                .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
                .map(|(n, _)| n.to_string())
                .collect(),
            _ => Vec::new(),
        }
    }

    fn read_models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        // A panic while holding the lock leaves the map itself intact; keep serving.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_models(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn describe(specs: &[ferroserve_core::TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape))
        .collect::<Vec<_>>()
        .join(" ")
}
