//! Jina's HTTP shape for Deployments and Flows: `POST /post` with
//! `{"data": [...], "execEndpoint": "/encode", "parameters": {}}`, `POST /{endpoint}` with
//! `{"data": [...], "parameters": {}}`, and Ray Serve's `GET /{deployment}?txt=...`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferroserve_core::Error;
use ferroserve_flow::{Document, Flow, Parameters};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// The request body: documents, an endpoint, parameters.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DocumentsRequest {
    /// Documents (Jina's fields: `id`, `text`, `tensor`, `embedding`, `tags`, `matches`, ...),
    /// or bare strings as text documents.
    #[schema(value_type = Vec<serde_json::Value>)]
    data: Vec<Item>,
    /// The endpoint to run (`/post` only; default `/`).
    #[serde(default, rename = "execEndpoint", alias = "exec_endpoint")]
    exec_endpoint: Option<String>,
    /// Parameters for the executors.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
}

/// A document, or a bare string as a text document.
#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Text(String),
    Doc(Box<Document>),
}

/// The documents the Flow returned.
#[derive(Serialize, utoipa::ToSchema)]
struct DocumentsResponse<'a> {
    /// Documents, in Jina's fields.
    #[schema(value_type = Vec<Object>)]
    data: Vec<Document>,
    /// The request's parameters.
    #[schema(value_type = Object)]
    parameters: &'a Parameters,
    /// The endpoint that ran.
    header: Header<'a>,
}

/// Which endpoint ran.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = DocumentsHeader)]
struct Header<'a> {
    /// The endpoint.
    #[serde(rename = "execEndpoint")]
    exec_endpoint: &'a str,
}

/// `POST /post`: documents through the Flow (`execEndpoint` in the body, default `/`).
#[utoipa::path(post, path = "/post", tag = "documents",
    request_body(content = DocumentsRequest, content_type = "application/json"),
    responses((status = 200, description = "The documents the Flow returned", body = DocumentsResponse), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn post(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = s.read_body(&headers, body).await?;
    run(&s, None, bytes).await
}

/// `POST /{endpoint}`: documents through the Flow's endpoint of that name.
#[utoipa::path(post, path = "/{name}", tag = "documents",
    params(("name" = String, Path, description = "An endpoint of the Flow's executors (`/index`, `/search`, ...) without its slash")),
    request_body(content = DocumentsRequest, content_type = "application/json"),
    responses((status = 200, description = "The documents the Flow returned", body = DocumentsResponse), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn endpoint(
    State(s): State<Arc<AppState>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = s.read_body(&headers, body).await?;
    run(&s, Some(format!("/{endpoint}")), bytes).await
}

/// `GET /{deployment}?txt=...`: one text document through a Deployment's `/default` endpoint.
pub(crate) async fn query(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let flow = flow(&s)?;
    if !flow.names().contains(&name.as_str()) {
        return Err(ApiError(Error::not_found(format!(
            "no route for /{name}: GET /{{name}}?txt= serves an executor by its name ({})",
            flow.names().join(", ")
        ))));
    }
    let text = q
        .get("txt")
        .or_else(|| q.get("text"))
        .ok_or_else(|| Error::invalid("the query has no 'txt'"))?;
    let docs = vec![Document::text(text.clone())];
    let params = Parameters::new();
    // A Deployment runs as a whole; in a Flow, the named executor alone answers.
    let mut out = match flow.deployment() {
        Some(_) => flow.run("/default", docs, &params).await,
        None => flow.run_one(&name, "/default", docs, &params).await,
    }
    .map_err(flow_error)?;
    let doc = out.pop().unwrap_or_default();
    if let Some(e) = &doc.error {
        return Err(ApiError(Error::invalid(format!(
            "executor '{}': {}",
            e.executor, e.message
        ))));
    }
    Ok(Json(doc).into_response())
}

async fn run(s: &AppState, endpoint: Option<String>, bytes: Bytes) -> Result<Response, ApiError> {
    let flow = flow(s)?;
    let request: DocumentsRequest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("the body is not a documents request: {e}")))?;
    let endpoint = endpoint
        .or(request.exec_endpoint)
        .unwrap_or_else(|| "/default".to_string());
    if !endpoint.starts_with('/') {
        return Err(
            Error::invalid(format!("execEndpoint '{endpoint}' must start with '/'")).into(),
        );
    }
    let docs = request
        .data
        .into_iter()
        .map(|i| match i {
            Item::Text(t) => Document::text(t),
            Item::Doc(d) => *d,
        })
        .collect();
    let data = flow
        .run(&endpoint, docs, &request.parameters)
        .await
        .map_err(flow_error)?;
    Ok(Json(DocumentsResponse {
        data,
        parameters: &request.parameters,
        header: Header {
            exec_endpoint: &endpoint,
        },
    })
    .into_response())
}

fn flow(s: &AppState) -> Result<&Arc<Flow>, ApiError> {
    s.flow
        .as_ref()
        .ok_or_else(|| ApiError(Error::not_found("this server runs no Flow")))
}

/// The executor's error, with its name in the message and its kind for the status.
fn flow_error(e: ferroserve_flow::FlowError) -> ApiError {
    ApiError(e.into_error())
}
