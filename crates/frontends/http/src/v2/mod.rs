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

pub(crate) async fn server_metadata() -> Json<ferroserve_runtime::admin::ServerMetadata> {
    Json(Default::default())
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
    Ok(Json(c.triton()).into_response())
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
    Ok(Json(s.runtime.statistics(model, version)?).into_response())
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
