//! The Open Inference Protocol (KServe V2) REST routes.
//!
//! Spec: <https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/>, plus
//! Triton's binary tensor data extension and the repository index.

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

/// Whether the server answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "health",
    responses((status = 200, description = "Live", body = crate::openapi::schemas::Live)))]
pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

/// Whether the server takes inference requests: not while models load or it drains.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::schemas::Ready),
        (status = 503, description = "Not ready", body = crate::openapi::schemas::Ready)))]
pub(crate) async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let ready = s.runtime.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// The server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "Server metadata", body = ferroserve_runtime::admin::ServerMetadata)))]
pub(crate) async fn server_metadata() -> Json<ferroserve_runtime::admin::ServerMetadata> {
    Json(Default::default())
}

/// A model's inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2", params(crate::openapi::schemas::ModelName),
    responses((status = 200, description = "Inputs and outputs", body = ferroserve_runtime::admin::ModelMetadata), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn model_metadata(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let meta = s.runtime.model_metadata(&p.model, p.version.as_deref())?;
    Ok(Json(meta).into_response())
}

/// Whether a model takes inference requests.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2", params(crate::openapi::schemas::ModelName),
    responses(
        (status = 200, description = "Ready", body = crate::openapi::schemas::ModelReady),
        (status = 503, description = "Not ready", body = crate::openapi::schemas::ModelReady),
        (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
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

/// Runs a model on the request's inputs.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2", params(crate::openapi::schemas::ModelName),
    request_body(description = "V2 JSON, or JSON followed by binary tensors (Triton's binary data extension, with the Inference-Header-Content-Length header)",
        content(
            (request::InferenceRequest = "application/json"),
            (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 200, description = "Outputs (binary ones after the JSON when asked for)",
            content(
                (response::InferenceResponse = "application/json"),
                (Vec<u8> = "application/octet-stream"))),
        (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
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

/// The body of a repository index request (optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct IndexRequest {
    /// Only the models ready now.
    #[serde(default)]
    ready: bool,
}

/// Every model of the repository, with its state.
#[utoipa::path(post, path = "/v2/repository/index", tag = "repository",
    request_body(content = Option<IndexRequest>, content_type = "application/json"),
    responses((status = 200, description = "The models", body = Vec<ferroserve_runtime::IndexEntry>), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
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
#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2", params(crate::openapi::schemas::ModelName),
    responses((status = 200, description = "Triton's model configuration", body = ferroserve_runtime::admin::ModelConfig), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn model_config(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    let c = s.runtime.model_config(&p.model, p.version.as_deref())?;
    Ok(Json(c.triton()).into_response())
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics extension.
#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "v2", params(crate::openapi::schemas::ModelName),
    responses((status = 200, description = "Triton's statistics", body = ferroserve_runtime::admin::Statistics), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn model_stats(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Result<Response, ApiError> {
    stats(&s, Some(&p.model), p.version.as_deref())
}

/// `GET /v2/models/stats`: statistics of every ready model version.
#[utoipa::path(get, path = "/v2/models/stats", tag = "v2",
    responses((status = 200, description = "Triton's statistics", body = ferroserve_runtime::admin::Statistics), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn all_stats(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    stats(&s, None, None)
}

fn stats(s: &AppState, model: Option<&str>, version: Option<&str>) -> Result<Response, ApiError> {
    Ok(Json(s.runtime.statistics(model, version)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RepositoryPath {
    model: String,
}

/// `POST /v2/repository/models/{m}/load`: loads or reloads a model folder of the repository.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(crate::openapi::schemas::ModelName),
    request_body(content = Option<crate::openapi::schemas::RepositoryChange>, content_type = "application/json"),
    responses((status = 200, description = "Done", body = crate::openapi::schemas::Done), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn repository_load(
    State(s): State<Arc<AppState>>,
    Path(p): Path<RepositoryPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    repository_op(s, p.model, headers, body, Runtime::load).await
}

/// `POST /v2/repository/models/{m}/unload`: unloads a model.
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(crate::openapi::schemas::ModelName),
    request_body(content = Option<crate::openapi::schemas::RepositoryChange>, content_type = "application/json"),
    responses((status = 200, description = "Done", body = crate::openapi::schemas::Done), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
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
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = s.options.repository_access().check(presented) {
        tracing::warn!(error = %e, "repository change refused");
        return Err(e.into());
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
        .map_err(|e| Error::internal(e.to_string()))??;
    Ok(Json(json!({})).into_response())
}

/// The routes with `/versions/{version}`: the same handlers; each needs a function of its own
/// to be described at its own path.
pub(crate) mod versioned {
    use super::*;

    /// A model version's inputs and outputs.
    #[utoipa::path(get, operation_id = "model_metadata_version", path = "/v2/models/{model}/versions/{version}", tag = "v2",
        params(crate::openapi::schemas::ModelVersion), responses((status = 200, description = "Inputs and outputs", body = ferroserve_runtime::admin::ModelMetadata), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(crate) async fn model_metadata(
        s: State<Arc<AppState>>,
        p: Path<ModelPath>,
    ) -> Result<Response, ApiError> {
        super::model_metadata(s, p).await
    }

    /// Whether a model version takes inference requests.
    #[utoipa::path(get, operation_id = "model_ready_version", path = "/v2/models/{model}/versions/{version}/ready", tag = "v2",
        params(crate::openapi::schemas::ModelVersion), responses(
        (status = 200, description = "Ready", body = crate::openapi::schemas::ModelReady),
        (status = 503, description = "Not ready", body = crate::openapi::schemas::ModelReady),
        (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(crate) async fn model_ready(
        s: State<Arc<AppState>>,
        p: Path<ModelPath>,
    ) -> Result<Response, ApiError> {
        super::model_ready(s, p).await
    }

    /// Runs a model version on the request's inputs.
    #[utoipa::path(post, operation_id = "infer_version", path = "/v2/models/{model}/versions/{version}/infer", tag = "v2",
        params(crate::openapi::schemas::ModelVersion), request_body(description = "V2 JSON, or JSON followed by binary tensors (Triton's binary data extension, with the Inference-Header-Content-Length header)",
        content(
            (request::InferenceRequest = "application/json"),
            (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 200, description = "Outputs (binary ones after the JSON when asked for)",
            content(
                (response::InferenceResponse = "application/json"),
                (Vec<u8> = "application/octet-stream"))),
        (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(crate) async fn infer(
        s: State<Arc<AppState>>,
        p: Path<ModelPath>,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        super::infer(s, p, headers, body).await
    }

    /// A model version's configuration in Triton's shape.
    #[utoipa::path(get, operation_id = "model_config_version", path = "/v2/models/{model}/versions/{version}/config", tag = "v2",
        params(crate::openapi::schemas::ModelVersion), responses((status = 200, description = "Triton's model configuration", body = ferroserve_runtime::admin::ModelConfig), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(crate) async fn model_config(
        s: State<Arc<AppState>>,
        p: Path<ModelPath>,
    ) -> Result<Response, ApiError> {
        super::model_config(s, p).await
    }

    /// A model version's statistics.
    #[utoipa::path(get, operation_id = "model_stats_version", path = "/v2/models/{model}/versions/{version}/stats", tag = "v2",
        params(crate::openapi::schemas::ModelVersion), responses((status = 200, description = "Triton's statistics", body = ferroserve_runtime::admin::Statistics), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(crate) async fn model_stats(
        s: State<Arc<AppState>>,
        p: Path<ModelPath>,
    ) -> Result<Response, ApiError> {
        super::model_stats(s, p).await
    }
}
