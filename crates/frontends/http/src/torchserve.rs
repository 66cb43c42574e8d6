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

/// `POST /predictions/{model}[/{version}]`. A model with a task takes its natural input (an
/// image as the body or a multipart field; text as JSON or the body) and answers in
/// TorchServe's shapes; a plain model takes a V2 inference request and answers like V2 infer.
pub(crate) async fn predict(
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
