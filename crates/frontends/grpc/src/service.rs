//! `inference.GRPCInferenceService` on top of the runtime.

use std::sync::Arc;
use std::time::Duration;

use ferroserve_core::{DataType, Device, Error};
use ferroserve_runtime::{ModelConfigInfo, Runtime};
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
    token: Option<ferroserve_core::Token>,
    open: bool,
}

impl InferenceService {
    /// Serves `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            token: None,
            open: true,
        }
    }

    /// Requires `token` (`authorization: Bearer TOKEN` metadata) for repository load and unload;
    /// without a token, `open` says whether they are served at all.
    pub fn with_token(mut self, token: Option<ferroserve_core::Token>, open: bool) -> Self {
        self.token = token;
        self.open = open;
        self
    }

    fn check_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return if self.open {
                Ok(())
            } else {
                Err(Status::permission_denied(
                    ferroserve_core::REMOTE_CHANGES_NEED_TOKEN,
                ))
            };
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if token.matches_header(presented) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "repository load and unload need the server's management token: send authorization: Bearer TOKEN",
            ))
        }
    }
}

/// The gRPC status for each kind of error; the one place that mapping lives.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::Unavailable(m) | Error::Overloaded(m) => Status::unavailable(m),
        Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        Error::TooLarge(m) => Status::resource_exhausted(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::Internal(m) => Status::internal(m),
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
        Ok(Response::new(ServerMetadataResponse {
            name: "ferroserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: [
                "binary_tensor_data",
                "model_configuration",
                "statistics",
                "model_repository",
            ]
            .map(String::from)
            .to_vec(),
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
            config: Some(model_config(info)),
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
            .into_iter()
            .map(|s| ModelStatistics {
                name: s.name,
                version: s.version,
                last_inference: s.last_inference_ms,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(InferStatistics {
                    success: d(s.success),
                    fail: d(s.fail),
                    queue: d(s.queue),
                    compute_input: d(s.compute_input),
                    compute_infer: d(s.compute_infer),
                    compute_output: d(s.compute_output),
                }),
                batch_stats: Vec::new(),
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
                state: match e.state {
                    ferroserve_runtime::ModelState::Ready => "READY".into(),
                    ferroserve_runtime::ModelState::Unavailable => "UNAVAILABLE".into(),
                },
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

/// Triton's `ModelConfig` for a model version: dims without the batch dimension when the server
/// batches the model, as Triton's tools expect.
pub fn model_config(info: ModelConfigInfo) -> ModelConfig {
    let gpus: Vec<i32> = info
        .devices
        .iter()
        .filter_map(|&d| match d {
            Device::Cuda(i) => i32::try_from(i).ok(),
            Device::Cpu => None,
        })
        .collect();
    let kind = if gpus.is_empty() {
        model_instance_group::Kind::Cpu
    } else {
        model_instance_group::Kind::Gpu
    };
    ModelConfig {
        name: info.name.clone(),
        platform: info.platform.clone(),
        version_policy: Some(ModelVersionPolicy {
            policy_choice: Some(model_version_policy::PolicyChoice::All(
                model_version_policy::All {},
            )),
        }),
        max_batch_size: i32::try_from(info.max_batch_size).unwrap_or(i32::MAX),
        input: info
            .signature
            .inputs
            .iter()
            .map(|s| ModelInput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                format: model_input::Format::None as i32,
                dims: info.dims(&s.shape),
            })
            .collect(),
        output: info
            .signature
            .outputs
            .iter()
            .map(|s| ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                dims: info.dims(&s.shape),
            })
            .collect(),
        instance_group: vec![ModelInstanceGroup {
            name: info.name.clone(),
            count: i32::try_from(info.devices.len()).unwrap_or(i32::MAX),
            gpus,
            kind: kind as i32,
        }],
        default_model_filename: info.model_file.clone(),
        scheduling_choice: info.dynamic_batching.as_ref().map(|db| {
            model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                preferred_batch_size: db
                    .preferred_batch_size
                    .iter()
                    .map(|&p| i32::try_from(p).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: db.max_queue_delay_us,
                preserve_ordering: db.preserve_ordering,
                default_queue_policy: Some(ModelQueuePolicy {
                    default_timeout_microseconds: db
                        .default_timeout_ms
                        .unwrap_or(0)
                        .saturating_mul(1000),
                    max_queue_size: u32::try_from(info.max_queue_size).unwrap_or(u32::MAX),
                }),
            })
        }),
        backend: "onnxruntime".into(),
    }
}

fn data_type(t: DataType) -> i32 {
    crate::proto::DataType::from_str_name(t.config_name())
        .unwrap_or(crate::proto::DataType::TypeInvalid) as i32
}
