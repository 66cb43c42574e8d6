//! TorchServe's inference routes, so TorchServe clients can switch without changes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::v2::{self, ModelPath};
use crate::AppState;

/// `GET /ping`: TorchServe's health check.
pub(crate) async fn ping(State(s): State<Arc<AppState>>) -> Response {
    if s.runtime.is_ready() {
        Json(json!({ "status": "Healthy" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "Unhealthy" })),
        )
            .into_response()
    }
}

/// `POST /predictions/{model}[/{version}]`. A plain model (no task) takes a V2 inference request
/// body and answers like V2 infer; built-in tasks will answer in TorchServe's shapes.
pub(crate) async fn predict(
    state: State<Arc<AppState>>,
    path: Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    v2::infer(state, path, headers, body).await
}
