//! Triton's admin surface, built once: server metadata and its extensions, model metadata,
//! model configuration, statistics, the repository index, and who may change the repository.
//! These are serde types in Triton's JSON shape; the HTTP frontend serialises them as they are
//! and the gRPC frontend converts them to its protobuf messages.

use serde::Serialize;

use ferroserve_core::{Device, Error, Result, Signature, TensorSpec, Token};

use crate::config::{DynamicBatching, VersionPolicy};
use crate::metrics::StatisticDuration;
use crate::runtime::Runtime;

/// The protocol extensions this server implements, as server metadata lists them.
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
];

/// What `GET /v2` and gRPC `ServerMetadata` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    /// `ferroserve`.
    pub name: String,
    /// This build's version.
    pub version: String,
    /// [`EXTENSIONS`].
    pub extensions: Vec<String>,
}

impl Default for ServerMetadata {
    fn default() -> Self {
        Self {
            name: "ferroserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.map(String::from).to_vec(),
        }
    }
}

/// A model's description, as the protocol's metadata endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions that are ready, ascending.
    pub versions: Vec<String>,
    /// Backend platform, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Inputs, in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
}

/// How a model version is configured, as the runtime knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfigInfo {
    /// Model name.
    pub name: String,
    /// The backend's name in `model.yaml` (`onnx`, `candle`).
    pub backend: String,
    /// Triton's platform for the backend, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Triton's backend name, e.g. `onnxruntime`.
    pub triton_backend: String,
    /// Inputs and outputs as clients send and get them (with the batch dimension).
    pub signature: Signature,
    /// Rows per batch when the server batches the model, else 0.
    pub max_batch_size: usize,
    /// The dynamic batching settings, when batching is on.
    pub dynamic_batching: Option<DynamicBatching>,
    /// The queue bound in force.
    pub max_queue_size: usize,
    /// Where each replica runs.
    pub devices: Vec<Device>,
    /// The model file's name.
    pub model_file: String,
    /// The built-in task around the model, if any.
    pub task: Option<ferroserve_tasks::TaskKind>,
    /// Which version folders are served.
    pub version_policy: VersionPolicy,
    /// The TorchServe handler that takes the requests' bodies, if the model is one.
    pub handler: Option<String>,
}

impl ModelConfigInfo {
    /// `shape` as Triton's configuration writes dims: without the batch dimension when the server
    /// batches the model.
    pub fn dims(&self, shape: &[i64]) -> Vec<i64> {
        if self.max_batch_size > 0 {
            shape.get(1..).unwrap_or_default().to_vec()
        } else {
            shape.to_vec()
        }
    }

    /// Triton's model configuration.
    pub fn triton(&self) -> ModelConfig {
        let tensor = |t: &TensorSpec, input: bool| ConfigTensor {
            name: t.name.clone(),
            data_type: t.datatype.config_name().to_string(),
            dims: self.dims(&t.shape),
            format: input.then(|| "FORMAT_NONE".to_string()),
        };
        let gpus: Vec<u32> = self
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::Cuda(i) => Some(*i),
                Device::Cpu => None,
            })
            .collect();
        ModelConfig {
            name: self.name.clone(),
            platform: self.platform.clone(),
            backend: self.triton_backend.clone(),
            version_policy: (&self.version_policy).into(),
            max_batch_size: self.max_batch_size,
            input: self
                .signature
                .inputs
                .iter()
                .map(|t| tensor(t, true))
                .collect(),
            output: self
                .signature
                .outputs
                .iter()
                .map(|t| tensor(t, false))
                .collect(),
            instance_group: vec![InstanceGroup {
                name: self.name.clone(),
                count: self.devices.len(),
                kind: if gpus.is_empty() {
                    InstanceKind::Cpu
                } else {
                    InstanceKind::Gpu
                },
                gpus,
            }],
            default_model_filename: self.model_file.clone(),
            dynamic_batching: self
                .dynamic_batching
                .as_ref()
                .map(|db| DynamicBatchingConfig {
                    preferred_batch_size: db.preferred_batch_size.clone(),
                    max_queue_delay_microseconds: db.max_queue_delay_us,
                    preserve_ordering: db.preserve_ordering,
                    default_queue_policy: QueuePolicy {
                        default_timeout_microseconds: db
                            .default_timeout_ms
                            .unwrap_or(0)
                            .saturating_mul(1000),
                        max_queue_size: self.max_queue_size,
                    },
                }),
        }
    }
}

/// Triton's `ModelConfig` (the fields this server fills), as `GET .../config` returns it and
/// perf_analyzer reads it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelConfig {
    /// Model name.
    pub name: String,
    /// Triton's platform (`onnxruntime_onnx`, `candle`).
    pub platform: String,
    /// Triton's backend (`onnxruntime`, `candle`).
    pub backend: String,
    /// Which versions are served.
    pub version_policy: VersionPolicyConfig,
    /// Rows per batch when the server batches the model, else 0.
    pub max_batch_size: usize,
    /// Inputs (dims without the batch dimension when batched).
    pub input: Vec<ConfigTensor>,
    /// Outputs.
    pub output: Vec<ConfigTensor>,
    /// Where the replicas run.
    pub instance_group: Vec<InstanceGroup>,
    /// The model file.
    pub default_model_filename: String,
    /// Dynamic batching, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatchingConfig>,
}

/// Triton's `version_policy`: one of its three keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicyConfig {
    /// Every version.
    All {},
    /// The highest `num_versions`.
    Latest {
        /// How many.
        num_versions: usize,
    },
    /// These versions.
    Specific {
        /// The versions.
        versions: Vec<u64>,
    },
}

impl From<&VersionPolicy> for VersionPolicyConfig {
    fn from(p: &VersionPolicy) -> Self {
        match p {
            VersionPolicy::All => Self::All {},
            VersionPolicy::Latest(n) => Self::Latest { num_versions: *n },
            VersionPolicy::Specific(v) => Self::Specific {
                versions: v.clone(),
            },
        }
    }
}

/// One input or output of a [`ModelConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConfigTensor {
    /// Name.
    pub name: String,
    /// Triton's type name (`TYPE_FP32`).
    pub data_type: String,
    /// Dims (without the batch dimension when batched).
    pub dims: Vec<i64>,
    /// `FORMAT_NONE` for inputs; outputs have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Triton's instance group: the replicas and where they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InstanceGroup {
    /// The model's name.
    pub name: String,
    /// Replicas.
    pub count: usize,
    /// CPU or GPU.
    pub kind: InstanceKind,
    /// The GPUs, when on GPUs.
    pub gpus: Vec<u32>,
}

/// Where an instance group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum InstanceKind {
    /// CPU.
    #[serde(rename = "KIND_CPU")]
    Cpu,
    /// GPUs.
    #[serde(rename = "KIND_GPU")]
    Gpu,
}

/// Triton's dynamic batching settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DynamicBatchingConfig {
    /// Preferred batch sizes.
    pub preferred_batch_size: Vec<usize>,
    /// How long a batch waits to fill.
    pub max_queue_delay_microseconds: u64,
    /// Answers in arrival order.
    pub preserve_ordering: bool,
    /// The queue's timeout and bound.
    pub default_queue_policy: QueuePolicy,
}

/// Triton's default queue policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueuePolicy {
    /// A request queued this long is answered without running (0: never).
    pub default_timeout_microseconds: u64,
    /// Requests that may wait.
    pub max_queue_size: usize,
}

/// Cumulative statistics of a model version, in Triton's nesting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// When the last request arrived, in milliseconds since the Unix epoch (0: never).
    pub last_inference: u64,
    /// Rows inferred successfully (a request with 8 rows counts 8).
    pub inference_count: u64,
    /// Backend executions (one batch of several requests counts 1).
    pub execution_count: u64,
    /// Durations by phase.
    pub inference_stats: InferStatistics,
    /// Per batch size statistics (not kept: always empty).
    pub batch_stats: Vec<serde_json::Value>,
}

/// The phases of [`ModelStatistics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InferStatistics {
    /// Successful requests, end to end.
    pub success: StatisticDuration,
    /// Failed requests, end to end.
    pub fail: StatisticDuration,
    /// Time requests waited in the queue.
    pub queue: StatisticDuration,
    /// Time assembling the batches that carried each request.
    pub compute_input: StatisticDuration,
    /// Backend time of the batches that carried each request.
    pub compute_infer: StatisticDuration,
    /// Time splitting those batches' outputs.
    pub compute_output: StatisticDuration,
}

/// `{"model_stats": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Statistics {
    /// One entry per model version.
    pub model_stats: Vec<ModelStatistics>,
}

/// Who may load and unload repository models through the protocol's repository extension.
#[derive(Debug, Clone, Default)]
pub enum RepositoryAccess {
    /// Anyone who reaches the port (the server's choice when it listens on loopback only).
    #[default]
    Open,
    /// Nobody through this port.
    Closed,
    /// Callers who present this token (`Authorization: Bearer TOKEN`).
    Token(Token),
}

impl RepositoryAccess {
    /// Access with the management `token` when one is set; without one, `open` says whether
    /// anyone may change the repository through this port.
    pub fn new(token: Option<Token>, open: bool) -> Self {
        match (token, open) {
            (Some(t), _) => Self::Token(t),
            (None, true) => Self::Open,
            (None, false) => Self::Closed,
        }
    }

    /// Whether a caller who sent `authorization` (the header's or metadata's value) may change
    /// the repository. A missing or wrong token is [`ferroserve_core::ErrorKind::Unauthenticated`].
    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        match self {
            Self::Open => Ok(()),
            Self::Closed => Err(Error::permission_denied(
                ferroserve_core::REMOTE_CHANGES_NEED_TOKEN,
            )),
            Self::Token(t) if t.matches_header(authorization.unwrap_or("")) => Ok(()),
            Self::Token(_) => Err(Error::unauthenticated(
                "repository load and unload need the server's management token: send authorization: Bearer TOKEN",
            )),
        }
    }
}

impl Runtime {
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
            platform: v.config.platform.clone(),
            inputs: v.config.signature.inputs.clone(),
            outputs: v.config.signature.outputs.clone(),
        })
    }

    /// The configuration of `model` at `version` (or its default version).
    pub fn model_config(&self, model: &str, version: Option<&str>) -> Result<ModelConfigInfo> {
        Ok(self.resolve(model, version)?.config.clone())
    }

    /// Cumulative statistics of `model` at `version`; with no model, of every ready model
    /// version; with a model but no version, of each of its ready versions.
    pub fn statistics(&self, model: Option<&str>, version: Option<&str>) -> Result<Statistics> {
        let read = |name: &str, v: &crate::version::Version| v.metrics.stats.read(name, v.number);
        if let (Some(m), Some(_)) = (model, version) {
            let v = self.peek(m, version)?;
            return Ok(Statistics {
                model_stats: vec![read(m, &v)],
            });
        }
        if let Some(m) = model {
            if !self.read_models().contains_key(m) {
                return Err(Error::not_found(format!("unknown model '{m}'")));
            }
        }
        let models = self.read_models();
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            if model.is_none_or(|m| m == name) {
                out.extend(entry.ready().map(|v| read(name, v)));
            }
        }
        Ok(Statistics { model_stats: out })
    }
}
