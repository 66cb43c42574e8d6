//! `inference.GRPCInferenceService` on top of the runtime.

use std::sync::Arc;
use std::time::Duration;

use ferroserve_core::{Error, ErrorKind};
use ferroserve_runtime::{admin, RepositoryAccess, Runtime};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::*;

/// Requests one stream may have in flight; the stream stops reading beyond it.
const STREAM_IN_FLIGHT: usize = 64;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct InferenceService {
    runtime: Arc<Runtime>,
    access: RepositoryAccess,
}

impl InferenceService {
    /// Serves `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            access: RepositoryAccess::Open,
        }
    }

    /// Requires `token` (`authorization: Bearer TOKEN` metadata) for repository load and unload;
    /// without a token, `open` says whether they are served at all.
    pub fn with_token(mut self, token: Option<ferroserve_core::Token>, open: bool) -> Self {
        self.access = RepositoryAccess::new(token, open);
        self
    }

    fn check_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.access.check(presented).map_err(status)
    }
}

/// The gRPC status for each kind of error; the one place that mapping lives.
pub fn status(e: Error) -> Status {
    let kind = e.kind();
    let m = e.into_message();
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(m),
        ErrorKind::NotFound => Status::not_found(m),
        ErrorKind::Unavailable | ErrorKind::Overloaded => Status::unavailable(m),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(m),
        ErrorKind::TooLarge => Status::resource_exhausted(m),
        ErrorKind::AlreadyExists => Status::already_exists(m),
        ErrorKind::PermissionDenied => Status::permission_denied(m),
        ErrorKind::Unauthenticated => Status::unauthenticated(m),
        ErrorKind::Internal => Status::internal(m),
    }
}

fn version(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

/// The `grpc-timeout` header (what a client's deadline becomes on the wire), if any.
fn deadline<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl InferenceService {
    async fn infer(
        &self,
        req: ModelInferRequest,
        deadline: Option<Duration>,
    ) -> Result<ModelInferResponse, Status> {
        let mut d = convert::request(req).map_err(status)?;
        // The client's deadline bounds the time in the queue too: a request that cannot start in
        // time is dropped there, unrun.
        if let Some(t) = deadline {
            let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
            let current = d.request.parameters.get("timeout").and_then(|v| v.as_u64());
            if current.is_none_or(|c| us < c) {
                d.request.parameters.insert("timeout".into(), us.into());
            }
        }
        let resp = self
            .runtime
            .infer(&d.model, d.version.as_deref(), d.request)
            .await
            .map_err(status)?;
        Ok(convert::response(resp))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.runtime.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = self
            .runtime
            .model_ready(&r.name, version(&r.version))
            .map_err(status)?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let m = ferroserve_runtime::admin::ServerMetadata::default();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .runtime
            .model_metadata(&r.name, version(&r.version))
            .map_err(status)?;
        let tensors = |specs: Vec<ferroserve_core::TensorSpec>| {
            specs
                .into_iter()
                .map(|s| model_metadata_response::TensorMetadata {
                    name: s.name,
                    datatype: s.datatype.as_str().into(),
                    shape: s.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline(&req);
        Ok(Response::new(self.infer(req.into_inner(), deadline).await?))
    }

    type ModelStreamInferStream = ReceiverStream<Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = deadline(&req);
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let this = self.clone();
        // Requests on a stream run concurrently (a bounded number at a time); each answer is sent
        // when ready, with its request's id, and a failure is an answer with error_message set,
        // so one bad request does not end the stream.
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
            while let Some(next) = incoming.next().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let req = match next {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "inference stream ended by the client");
                        break;
                    }
                };
                let (this, tx) = (this.clone(), tx.clone());
                tokio::spawn(async move {
                    let id = req.id.clone();
                    let answer = match this.infer(req, deadline).await {
                        Ok(r) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(s) => ModelStreamInferResponse {
                            error_message: s.message().to_string(),
                            infer_response: Some(ModelInferResponse {
                                id,
                                ..Default::default()
                            }),
                        },
                    };
                    let _ = tx.send(Ok(answer)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn model_config(
        &self,
        req: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let info = self
            .runtime
            .model_config(&r.name, version(&r.version))
            .map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(model_config(&info.triton())),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        let stats = self
            .runtime
            .statistics(
                Some(r.name.as_str()).filter(|n| !n.is_empty()),
                version(&r.version),
            )
            .map_err(status)?;
        let d = |s: ferroserve_runtime::metrics::StatisticDuration| {
            Some(StatisticDuration {
                count: s.count,
                ns: s.ns,
            })
        };
        let model_stats = stats
            .model_stats
            .into_iter()
            .map(|s| {
                let i = s.inference_stats;
                ModelStatistics {
                    name: s.name,
                    version: s.version,
                    last_inference: s.last_inference,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(InferStatistics {
                        success: d(i.success),
                        fail: d(i.fail),
                        queue: d(i.queue),
                        compute_input: d(i.compute_input),
                        compute_infer: d(i.compute_infer),
                        compute_output: d(i.compute_output),
                    }),
                    batch_stats: Vec::new(),
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_model_load(
        &self,
        req: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.check_token(&req)?;
        let r = req.into_inner();
        let inline = r.parameters.keys().any(|k| inline_model(k));
        self.repository(Runtime::load, r.model_name, inline).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.check_token(&req)?;
        let r = req.into_inner();
        // `unload_dependents` means nothing without ensembles; nothing else is defined.
        let inline = r.parameters.keys().any(|k| inline_model(k));
        self.repository(Runtime::unload, r.model_name, inline)
            .await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready = req.into_inner().ready;
        let models = self
            .runtime
            .index(ready)
            .into_iter()
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.unwrap_or_default(),
                state: e.state.as_str().into(),
                reason: e.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }
}

impl InferenceService {
    /// Runs a blocking repository operation off the async threads.
    async fn repository(
        &self,
        op: fn(&Runtime, &str) -> ferroserve_core::Result<()>,
        name: String,
        has_params: bool,
    ) -> Result<(), Status> {
        if has_params {
            return Err(Status::invalid_argument(
                "load and unload parameters (inline configs and files) are not supported; put the model in the repository",
            ));
        }
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || op(&runtime, &name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)
    }
}

/// Parameters that carry a model inline (Triton's `config` and `file:` keys): ferroserve loads
/// models from its repository only.
pub fn inline_model(key: &str) -> bool {
    key == "config" || key.starts_with("file:")
}

/// Triton's `ModelConfig` message for the runtime's [`admin::ModelConfig`].
pub fn model_config(c: &admin::ModelConfig) -> ModelConfig {
    let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let policy = match &c.version_policy {
        admin::VersionPolicyConfig::All {} => {
            model_version_policy::PolicyChoice::All(model_version_policy::All {})
        }
        admin::VersionPolicyConfig::Latest { num_versions } => {
            model_version_policy::PolicyChoice::Latest(model_version_policy::Latest {
                num_versions: u32::try_from(*num_versions).unwrap_or(u32::MAX),
            })
        }
        admin::VersionPolicyConfig::Specific { versions } => {
            model_version_policy::PolicyChoice::Specific(model_version_policy::Specific {
                versions: versions
                    .iter()
                    .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
                    .collect(),
            })
        }
    };
    let data_type = |name: &str| {
        crate::proto::DataType::from_str_name(name).unwrap_or(crate::proto::DataType::TypeInvalid)
            as i32
    };
    ModelConfig {
        name: c.name.clone(),
        platform: c.platform.clone(),
        backend: c.backend.clone(),
        version_policy: Some(ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: int(c.max_batch_size),
        input: c
            .input
            .iter()
            .map(|t| ModelInput {
                name: t.name.clone(),
                data_type: data_type(&t.data_type),
                format: model_input::Format::None as i32,
                dims: t.dims.clone(),
            })
            .collect(),
        output: c
            .output
            .iter()
            .map(|t| ModelOutput {
                name: t.name.clone(),
                data_type: data_type(&t.data_type),
                dims: t.dims.clone(),
            })
            .collect(),
        instance_group: c
            .instance_group
            .iter()
            .map(|g| ModelInstanceGroup {
                name: g.name.clone(),
                count: int(g.count),
                gpus: g
                    .gpus
                    .iter()
                    .map(|&i| i32::try_from(i).unwrap_or(i32::MAX))
                    .collect(),
                kind: match g.kind {
                    admin::InstanceKind::Cpu => model_instance_group::Kind::Cpu,
                    admin::InstanceKind::Gpu => model_instance_group::Kind::Gpu,
                } as i32,
            })
            .collect(),
        default_model_filename: c.default_model_filename.clone(),
        scheduling_choice: c.dynamic_batching.as_ref().map(|db| {
            model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                preferred_batch_size: db.preferred_batch_size.iter().map(|&p| int(p)).collect(),
                max_queue_delay_microseconds: db.max_queue_delay_microseconds,
                preserve_ordering: db.preserve_ordering,
                default_queue_policy: Some(ModelQueuePolicy {
                    default_timeout_microseconds: db
                        .default_queue_policy
                        .default_timeout_microseconds,
                    max_queue_size: u32::try_from(db.default_queue_policy.max_queue_size)
                        .unwrap_or(u32::MAX),
                }),
            })
        }),
    }
}
