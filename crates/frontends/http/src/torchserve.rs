//! TorchServe's inference routes, so TorchServe clients can switch without changes: `/ping`,
//! and `/predictions/{model}[/{version}]` answering in the shapes TorchServe's default handlers
//! use (image classifier: `{"tabby cat": 0.38, ...}`; text classifier:
//! `[{"label": "POSITIVE", "score": 0.99}]`; embeddings: a vector per text). A model served by
//! a TorchServe handler gets the request as TorchServe's workers do (see `handler`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferroserve_core::Error;
use ferroserve_tasks::{Scores, TaskKind, TaskOutput};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::json;

use crate::body;
use crate::error::ApiError;
use crate::openapi::schemas::{ModelName, ModelVersion};
use crate::v2::{self, ModelPath};
use crate::AppState;

/// `GET /ping`: TorchServe's health check.
#[utoipa::path(get, path = "/ping", tag = "torchserve",
    responses(
        (status = 200, description = "Healthy", body = crate::openapi::schemas::Ping),
        (status = 503, description = "Unhealthy", body = crate::openapi::schemas::Ping)))]
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

/// `POST /predictions/{model}[/{version}]` (and `PUT`). A model with a task takes its natural
/// input (an image as the body or a multipart field; text as JSON or the body) and answers in
/// TorchServe's shapes; a plain model takes a V2 inference request and answers like V2 infer.
async fn answer(
    state: State<Arc<AppState>>,
    path: Path<ModelPath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    let Some(task) = state.runtime.task(&path.model, path.version.as_deref())? else {
        let handler = state
            .runtime
            .model_config(&path.model, path.version.as_deref())?
            .handler
            .is_some();
        if handler {
            let bytes = state.read_body(&headers, request).await?;
            return crate::handler::predict(&state, &path, query, &headers, bytes).await;
        }
        return v2::infer(state, path, headers, request).await;
    };
    if matches!(task.kind(), TaskKind::Summarization | TaskKind::TextToImage) {
        let bytes = state.read_body(&headers, request).await?;
        return crate::generate::predict(
            &state,
            &path.model,
            path.version.as_deref(),
            query,
            &headers,
            bytes,
        )
        .await;
    }
    let top_k = match query.get("topk").or_else(|| query.get("top_k")) {
        None => task.default_top_k(),
        Some(k) => k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
            Error::invalid(format!(
                "topk must be a whole number of at least 1, got '{k}'"
            ))
        })?,
    };
    let bytes = state.read_body(&headers, request).await?;
    let (input, single) = match task.kind() {
        TaskKind::ImageClassification => body::images(&headers, bytes).await?,
        TaskKind::TextEmbedding
        | TaskKind::TextClassification
        | TaskKind::Summarization
        | TaskKind::TextToImage => body::texts(&headers, bytes).await?,
    };
    let answer = state
        .runtime
        .run_task(
            &path.model,
            path.version.as_deref(),
            input,
            Default::default(),
        )
        .await?;
    let items: Vec<Item> = match &answer.output {
        TaskOutput::Classes(scores) => scores
            .iter()
            .map(|s| match task.kind() {
                TaskKind::ImageClassification => Item::Ranked(Ranked(s, top_k)),
                _ => Item::Labelled(
                    s.top_k(top_k)
                        .into_iter()
                        .map(|(_, label, score)| Label { label, score })
                        .collect(),
                ),
            })
            .collect(),
        TaskOutput::Embeddings { vectors, .. } => vectors.iter().map(|v| Item::Vector(v)).collect(),
        TaskOutput::Texts(_) | TaskOutput::Images(_) => {
            return Err(Error::internal("generative answers go through generate::predict").into())
        }
    };
    // One input answers with its result; several with a list of results, in order.
    Ok(match (single, items.as_slice()) {
        (true, [one]) => Json(one).into_response(),
        _ => Json(&items).into_response(),
    })
}

/// The four inference routes of TorchServe: `POST` and `PUT` (TorchServe's `curl -T file`
/// sends a PUT), with and without a version. One macro gives each its own operation in the
/// description and the same documentation.
macro_rules! predict_route {
    ($method:ident, $name:ident, $path:literal, $params:ident, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, operation_id = stringify!($name), path = $path, tag = "torchserve",
            params($params, PredictQuery),
            request_body(description = "The model's natural input: an image (its bytes, or a multipart/form-data field) for image classification; text (the body, or JSON `{\"text\"|\"prompt\"|\"inputs\": s | [s], \"parameters\": {...}}`) for text tasks; a V2 inference request for a plain model; anything a TorchServe handler reads",
                content(
                    (Vec<u8> = "application/octet-stream"),
                    (Vec<u8> = "image/jpeg"),
                    (Vec<u8> = "image/png"),
                    (Vec<u8> = "multipart/form-data"),
                    (String = "text/plain"),
                    (serde_json::Value = "application/json"))),
            responses(
                (status = 200, description = "Image classification: `{label: probability}`, most likely first; text classification: `[{\"label\", \"score\"}]`; embeddings: a vector per text; summarization: `{\"summary_text\"}`; text-to-image: a PNG; a plain model: a V2 response; `stream=true`: server-sent events",
                    content(
                        (serde_json::Value = "application/json"),
                        (Vec<u8> = "image/png"),
                        (crate::openapi::schemas::ServerSentEvent = "text/event-stream"))),
                (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
        pub(crate) async fn $name(
            state: State<Arc<AppState>>,
            path: Path<ModelPath>,
            query: Query<HashMap<String, String>>,
            headers: HeaderMap,
            request: Body,
        ) -> Result<Response, ApiError> {
            answer(state, path, query, headers, request).await
        }
    };
}

predict_route!(
    post,
    predict,
    "/predictions/{model}",
    ModelName,
    "`POST /predictions/{model}`: the default version's answer."
);
predict_route!(
    post,
    predict_version,
    "/predictions/{model}/{version}",
    ModelVersion,
    "`POST /predictions/{model}/{version}`: one version's answer."
);
predict_route!(
    put,
    upload,
    "/predictions/{model}",
    ModelName,
    "`PUT /predictions/{model}`: as `POST`, for clients that upload the input (`curl -T`)."
);
predict_route!(
    put,
    upload_version,
    "/predictions/{model}/{version}",
    ModelVersion,
    "`PUT /predictions/{model}/{version}`: as `POST` to that version."
);

/// The query of `/predictions`: only the documented keys; others go to generative models as
/// parameters (`num_beams`, `seed`, ...).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes what `predict` reads from its query map
struct PredictQuery {
    /// Classes in a classifier's answer (default: the task's, 5 for images).
    topk: Option<u32>,
    /// Answer a generative model with server-sent events of its progress.
    stream: Option<bool>,
}

/// One input's answer.
#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Ranked(Ranked<'a>),
    Labelled(Vec<Label<'a>>),
    Vector(&'a [f32]),
}

/// The text classifier answer's entries: `{"label": ..., "score": ...}`, most likely first
/// (the shape of Hugging Face's pipeline and TorchServe's transformer handler).
#[derive(Serialize)]
struct Label<'a> {
    label: &'a str,
    score: f32,
}

/// TorchServe's image classifier answer: `{label: probability}`, most likely first. A name that
/// two classes share (ImageNet has two "missile"s) appears once, with the higher probability,
/// since a JSON object cannot hold it twice; the next class takes its place.
struct Ranked<'a>(&'a Scores, usize);

impl Serialize for Ranked<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let distinct = |n| {
            let mut seen = std::collections::HashSet::new();
            let mut top = self.0.top_k(n);
            top.retain(|(_, label, _)| seen.insert(*label));
            top.truncate(self.1);
            top
        };
        let mut top = distinct(self.1);
        if top.len() < self.1 {
            // Shared names took places: look further down for the k distinct ones.
            top = distinct(self.0.probabilities.len());
        }
        let mut map = serializer.serialize_map(Some(top.len()))?;
        for (_, label, p) in top {
            map.serialize_entry(label, &p)?;
        }
        map.end()
    }
}
