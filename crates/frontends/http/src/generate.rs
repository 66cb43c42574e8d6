//! Routes of the generative tasks, in the shapes their users already call:
//!
//! - `GET /{model}?txt=...&max_length=...` → the summary as plain text (Ray Serve's tutorial);
//!   `GET /summarize?txt=` reaches the server's summarization model when none is called
//!   `summarize`.
//! - `GET /{model}?prompt=...&img_size=512` → `image/png` (Ray Serve / Anyscale's template);
//!   `GET /imagine?prompt=` reaches the server's text-to-image model likewise.
//! - `POST /predictions/{model}` with `{"text"|"prompt"|"inputs": ..., "parameters": {...}}`
//!   (see [`predict`]).
//!
//! `stream=true` (or `"stream": true` in the JSON body) answers Server-Sent Events instead (see
//! [`crate::stream`]). Every other query or JSON parameter goes to the model (`num_beams`,
//! `num_inference_steps`, `seed`, ...). An input cut to the model's length is said in the `X-Truncated: true` header, or
//! a `truncated` field in JSON.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use ferroserve_core::{Error, Parameters, Result};
use ferroserve_runtime::{ModelState, Runtime};
use ferroserve_tasks::{Generated, GeneratedImage, TaskInput, TaskKind, TaskOutput};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The documented keys of `GET /{name}`'s query; every other key goes to the model as a
/// parameter (`max_length`, `num_beams`, `num_inference_steps`, `img_size`, `seed`, ...).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes what `query` reads from its query map
struct GenerateQuery {
    /// The text to summarise (also `text`), or for an executor the document's text.
    txt: Option<String>,
    /// The prompt of a text-to-image model.
    prompt: Option<String>,
    /// Answer with server-sent events of the progress, then the result.
    stream: Option<bool>,
}

/// Header saying that an input was cut to the model's longest input.
pub const TRUNCATED_HEADER: &str = "x-truncated";

/// `GET /{name}`: a Flow's executor when `ferroserve run` serves one by that name, else a
/// generative model.
#[utoipa::path(get, path = "/{name}", tag = "tasks",
    params(
        ("name" = String, Path, description = "A generative model (or `summarize` / `imagine` for the server's one), or an executor of the Flow `ferroserve run` serves"),
        GenerateQuery),
    responses(
        (status = 200, description = "A summary (text/plain), an image (image/png), server-sent events with `stream=true`, or an executor's document (JSON)",
            content(
                (String = "text/plain"),
                (Vec<u8> = "image/png"),
                (crate::openapi::schemas::ServerSentEvent = "text/event-stream"),
                (serde_json::Value = "application/json"))),
        (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn query(
    state: State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> std::result::Result<Response, ApiError> {
    if let Some(flow) = &state.flow {
        if flow.names().contains(&name.as_str()) {
            return crate::documents::query(state, Path(name), Query(query)).await;
        }
    }
    let (model, kind) = generative_model(&state.runtime, &name)?;
    let mut parameters = Parameters::new();
    let mut text = None;
    for (k, v) in query {
        match k.as_str() {
            "txt" | "text" | "prompt" => text = Some(v),
            _ => {
                parameters.insert(k, query_value(v));
            }
        }
    }
    let field = match kind {
        TaskKind::TextToImage => "prompt",
        _ => "txt",
    };
    let text = text.ok_or_else(|| Error::invalid(format!("the query has no '{field}'")))?;
    if crate::stream::wanted(&mut parameters)? {
        return crate::stream::answer(state.runtime.clone(), model, None, text, parameters).await;
    }
    let answer = state
        .runtime
        .run_task(&model, None, TaskInput::Texts(vec![text]), parameters)
        .await?;
    match answer.output {
        TaskOutput::Texts(mut texts) => {
            let g = texts
                .pop()
                .ok_or_else(|| Error::internal("the model gave no text"))?;
            let mut response = g.text.into_response();
            mark_truncated(&mut response, g.truncated);
            Ok(response)
        }
        TaskOutput::Images(mut images) => {
            let image = images
                .pop()
                .ok_or_else(|| Error::internal("the model gave no image"))?;
            Ok(png_response(&image)?)
        }
        _ => Err(Error::internal("unexpected answer from a generative task").into()),
    }
}

/// The model `name` answers for: a generative model of that name, else for `summarize` and
/// `imagine` the server's one model of that task.
fn generative_model(runtime: &Runtime, name: &str) -> Result<(String, TaskKind)> {
    let generative = |model: &str| -> Option<TaskKind> {
        let kind = runtime.task(model, None).ok()??.kind();
        matches!(kind, TaskKind::Summarization | TaskKind::TextToImage).then_some(kind)
    };
    if let Some(kind) = generative(name) {
        return Ok((name.to_string(), kind));
    }
    let wanted = match name {
        "summarize" => TaskKind::Summarization,
        "imagine" => TaskKind::TextToImage,
        _ => {
            return Err(Error::not_found(format!(
                "no route for /{name}: GET /{{model}}?txt= serves summarization and text-to-image models"
            )))
        }
    };
    let candidates: Vec<String> = runtime
        .index(true)
        .into_iter()
        .filter(|e| e.state == ModelState::Ready)
        .map(|e| e.name)
        .filter(|m| generative(m) == Some(wanted))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    match candidates.as_slice() {
        [one] => Ok((one.clone(), wanted)),
        [] => Err(Error::not_found(format!(
            "/{name} needs a {wanted} model, and none is loaded"
        ))),
        many => Err(Error::invalid(format!(
            "several {wanted} models are loaded ({}): call GET /{{model}} with one of them",
            many.join(", ")
        ))),
    }
}

/// `POST /predictions/{model}` for a generative model: a JSON body
/// `{"text": s | [s], "parameters": {...}}` (also `prompt`, `inputs`), or the text itself as
/// the body with parameters in the query. Summaries answer `{"summary_text": ...}` (a list for
/// a list); one image answers `image/png`, unless the client accepts only JSON or sent a list,
/// which get `{"image": <base64 PNG>, "width": .., "height": ..}` entries.
pub(crate) async fn predict(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> std::result::Result<Response, ApiError> {
    let (mut texts, single, mut parameters) = parse_body(&body)?;
    for (k, v) in query {
        parameters.entry(k).or_insert(query_value(v));
    }
    if crate::stream::wanted(&mut parameters)? {
        let text = match (single, texts.pop()) {
            (true, Some(text)) => text,
            _ => return Err(Error::invalid("\"stream\": true takes one text, not a list").into()),
        };
        let (runtime, model, version) = (state.runtime.clone(), model.to_string(), version);
        return crate::stream::answer(
            runtime,
            model,
            version.map(str::to_string),
            text,
            parameters,
        )
        .await;
    }
    let answer = state
        .runtime
        .run_task(model, version, TaskInput::Texts(texts), parameters)
        .await?;
    match answer.output {
        TaskOutput::Texts(texts) => {
            let items: Vec<Value> = texts.iter().map(summary_json).collect();
            Ok(one_or_list(single, items))
        }
        TaskOutput::Images(images) => {
            let wants_json = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/json") && !a.contains("image/"));
            if let (true, false, [image]) = (single, wants_json, images.as_slice()) {
                return Ok(png_response(image)?);
            }
            let items = images.iter().map(image_json).collect::<Result<Vec<_>>>()?;
            Ok(one_or_list(single, items))
        }
        _ => Err(Error::internal("unexpected answer from a generative task").into()),
    }
}

/// A summary as JSON answers carry it: `{"summary_text": ...}`, with `"truncated": true` when
/// the input was cut.
pub(crate) fn summary_json(g: &Generated) -> Value {
    let mut v = json!({ "summary_text": g.text });
    if g.truncated {
        v["truncated"] = true.into();
    }
    v
}

/// An image as JSON answers carry it: `{"image": <base64 PNG>, "width", "height"}`, with
/// `"truncated": true` when the prompt was cut.
pub(crate) fn image_json(image: &GeneratedImage) -> Result<Value> {
    let mut v = json!({
        "image": base64::engine::general_purpose::STANDARD.encode(image.png()?),
        "width": image.width,
        "height": image.height,
    });
    if image.truncated {
        v["truncated"] = true.into();
    }
    Ok(v)
}

/// A query string value as a parameter: `max_length=60` is the number 60, `scheduler=ddim`
/// stays a string.
fn query_value(v: String) -> Value {
    serde_json::from_str(&v).unwrap_or(Value::String(v))
}

fn one_or_list(single: bool, mut items: Vec<Value>) -> Response {
    if single && items.len() == 1 {
        Json(items.remove(0)).into_response()
    } else {
        Json(items).into_response()
    }
}

/// Texts, whether one was sent without a list, and parameters, from a request body.
fn parse_body(body: &Bytes) -> Result<(Vec<String>, bool, Parameters)> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Error::invalid("the body is neither JSON nor UTF-8 text"))?;
            return Ok((vec![text.to_string()], true, Parameters::new()));
        }
    };
    let (inner, parameters) = match value {
        Value::Object(mut o) => {
            let inner = ["text", "prompt", "inputs", "data"]
                .iter()
                .find_map(|k| o.remove(*k))
                .ok_or_else(|| {
                    Error::invalid("the JSON body has no 'text' (or 'prompt', 'inputs')")
                })?;
            let mut parameters = match o.remove("parameters") {
                None | Some(Value::Null) => Parameters::new(),
                Some(Value::Object(p)) => p,
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "'parameters' must be an object, got {other}"
                    )))
                }
            };
            // `"stream": true` beside the text, as OpenAI-style clients send it.
            if let Some(stream) = o.remove("stream") {
                parameters.insert("stream".into(), stream);
            }
            if let Some(k) = o.keys().next() {
                return Err(Error::invalid(format!(
                    "unknown field '{k}' in the body (expected 'text' or 'prompt', 'parameters' and 'stream')"
                )));
            }
            (inner, parameters)
        }
        other => (other, Parameters::new()),
    };
    match inner {
        Value::String(s) => Ok((vec![s], true, parameters)),
        Value::Array(items) => {
            let texts = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(Error::invalid(format!(
                        "text {i} must be a string, got {other}"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((texts, false, parameters))
        }
        other => Err(Error::invalid(format!(
            "the text must be a string or a list of strings, got {other}"
        ))),
    }
}

fn png_response(image: &GeneratedImage) -> Result<Response> {
    let png = image.png()?;
    let mut response = ([(header::CONTENT_TYPE, "image/png")], png).into_response();
    mark_truncated(&mut response, image.truncated);
    Ok(response)
}

fn mark_truncated(response: &mut Response, truncated: bool) {
    if truncated {
        response
            .headers_mut()
            .insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
    }
}
