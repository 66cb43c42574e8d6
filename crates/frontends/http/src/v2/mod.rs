//! The Open Inference Protocol (KServe V2) REST routes.
//!
//! Spec: <https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/>, plus
//! Triton's binary tensor data extension and the repository index.

pub mod data;
pub(crate) mod request;
mod response;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferroserve_core::Error;
use ferroserve_runtime::Runtime;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::AppState;

/// Header that carries the length of the JSON part of a body with binary tensors after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `{model}` and the optional `{version}` of a model route.
#[derive(Deserialize)]
pub(crate) struct ModelPath {
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) version: Option<String>,
}

pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

pub(crate) async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let ready = s.runtime.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

pub(crate) async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "ferroserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "statistics", "model_repository"],
    }))
}

pub(crate) async fn model_metadata(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let meta = s.runtime.model_metadata(&p.model, p.version.as_deref())?;
    Ok(Json(meta).into_response())
}

pub(crate) async fn model_ready(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let ready = s.runtime.model_ready(&p.model, p.version.as_deref())?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({ "name": p.model, "ready": ready }))).into_response())
}

pub(crate) async fn infer(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "Inference-Header-Content-Length must be a non-negative integer, got {v:?}"
                    ))
                })?,
        ),
    };
    let body = s.read_body(&headers, body).await?;
    let decoded = request::decode(body, header_len)?;
    let response = s
        .runtime
        .infer(&p.model, p.version.as_deref(), decoded.request)
        .await?;
    let encoded = response::encode(&response, |i| {
        decoded
            .binary_outputs
            .get(i)
            .copied()
            .unwrap_or(decoded.binary_default)
    })?;
    let mut out = encoded.body.into_response();
    let h = out.headers_mut();
    match encoded.header_len {
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

pub(crate) async fn repository_index(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: Bytes = s.read_body(&headers, body).await?;
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("malformed repository index request: {e}")))?
    };
    Ok(Json(s.runtime.index(req.ready)).into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/config`: the model's configuration in Triton's JSON shape,
/// which perf_analyzer reads (dims without the batch dimension when the server batches).
pub(crate) async fn model_config(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let c = s.runtime.model_config(&p.model, p.version.as_deref())?;
    let tensors = |specs: &[ferroserve_core::TensorSpec], input: bool| {
        specs
            .iter()
            .map(|t| {
                let mut v = json!({
                    "name": t.name,
                    "data_type": t.datatype.config_name(),
                    "dims": c.dims(&t.shape),
                });
                if input {
                    v["format"] = json!("FORMAT_NONE");
                }
                v
            })
            .collect::<Vec<_>>()
    };
    let gpus: Vec<u32> = c
        .devices
        .iter()
        .filter_map(|d| match d {
            ferroserve_core::Device::Cuda(i) => Some(*i),
            ferroserve_core::Device::Cpu => None,
        })
        .collect();
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": c.max_batch_size,
        "input": tensors(&c.signature.inputs, true),
        "output": tensors(&c.signature.outputs, false),
        "instance_group": [{
            "name": c.name,
            "count": c.devices.len(),
            "kind": if gpus.is_empty() { "KIND_CPU" } else { "KIND_GPU" },
            "gpus": gpus,
        }],
        "default_model_filename": c.model_file,
    });
    if let Some(db) = &c.dynamic_batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": db.preferred_batch_size,
            "max_queue_delay_microseconds": db.max_queue_delay_us,
            "preserve_ordering": db.preserve_ordering,
            "default_queue_policy": {
                "default_timeout_microseconds": db.default_timeout_ms.unwrap_or(0).saturating_mul(1000),
                "max_queue_size": c.max_queue_size,
            },
        });
    }
    Ok(Json(config).into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics extension.
pub(crate) async fn model_stats(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    stats(&s, Some(&p.model), p.version.as_deref())
}

/// `GET /v2/models/stats`: statistics of every ready model version.
pub(crate) async fn all_stats(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    stats(&s, None, None)
}

fn stats(s: &AppState, model: Option<&str>, version: Option<&str>) -> Result<Response, ApiError> {
    let stats = s.runtime.statistics(model, version)?;
    let d =
        |x: ferroserve_runtime::metrics::StatisticDuration| json!({"count": x.count, "ns": x.ns});
    let model_stats: Vec<serde_json::Value> = stats
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference_ms,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": d(m.success),
                    "fail": d(m.fail),
                    "queue": d(m.queue),
                    "compute_input": d(m.compute_input),
                    "compute_infer": d(m.compute_infer),
                    "compute_output": d(m.compute_output),
                },
                "batch_stats": [],
            })
        })
        .collect();
    Ok(Json(json!({ "model_stats": model_stats })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RepositoryPath {
    model: String,
}

/// `POST /v2/repository/models/{m}/load`: loads or reloads a model folder of the repository.
pub(crate) async fn repository_load(
    State(s): State<Arc<AppState>>,
    Path(p): Path<RepositoryPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    repository_op(s, p.model, headers, body, Runtime::load).await
}

/// `POST /v2/repository/models/{m}/unload`: unloads a model.
pub(crate) async fn repository_unload(
    State(s): State<Arc<AppState>>,
    Path(p): Path<RepositoryPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    repository_op(s, p.model, headers, body, Runtime::unload).await
}

async fn repository_op(
    s: Arc<AppState>,
    model: String,
    headers: HeaderMap,
    body: Body,
    op: fn(&Runtime, &str) -> ferroserve_core::Result<()>,
) -> Result<Response, ApiError> {
    if let Some(refusal) = s.token_refusal(&headers) {
        return Ok(refusal);
    }
    if s.options.management_token.is_none() && !s.options.repository_changes_without_token {
        return Err(
            Error::PermissionDenied(ferroserve_core::REMOTE_CHANGES_NEED_TOKEN.into()).into(),
        );
    }
    let body = s.read_body(&headers, body).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("malformed repository request: {e}")))?;
        if v.get("parameters")
            .and_then(|p| p.as_object())
            .is_some_and(|p| !p.is_empty())
        {
            return Err(Error::invalid(
                "load and unload parameters (inline configs and files) are not supported; put the model in the repository",
            )
            .into());
        }
    }
    let runtime = s.runtime.clone();
    tokio::task::spawn_blocking(move || op(&runtime, &model))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(Json(json!({})).into_response())
}
