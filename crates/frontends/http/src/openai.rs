//! `POST /v1/embeddings`, OpenAI's embeddings API, so OpenAI clients and the tools built on them
//! (LangChain, LlamaIndex) can use a `text-embedding` model unchanged.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use ferroserve_core::Error;
use ferroserve_tasks::{TaskInput, TaskKind, TaskOutput};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::body::text_list;
use crate::error::ApiError;
use crate::AppState;

/// Fields of the request this server understands; others are refused by name.
const FIELDS: &[&str] = &["input", "model", "encoding_format", "dimensions", "user"];

/// `POST /v1/embeddings`: `{"input": "text" | ["text", ...], "model": "minilm",
/// "encoding_format": "float" | "base64"}`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body(content = EmbeddingsRequest, content_type = "application/json"),
    responses((status = 200, description = "One embedding per input", body = Response), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
pub(crate) async fn embeddings(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let bytes = s.read_body(&headers, body).await?;
    let request: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("the body must be a JSON object: {e}")))?;
    if let Some(unknown) = request.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Error::invalid(format!(
            "unknown field '{unknown}' (fields: {})",
            FIELDS.join(", ")
        ))
        .into());
    }
    let input = request
        .get("input")
        .ok_or_else(|| Error::invalid("the request has no 'input'"))?;
    if input
        .as_array()
        .is_some_and(|a| a.first().is_some_and(|v| v.is_number() || v.is_array()))
    {
        return Err(
            Error::invalid("input as token ids is not supported: send the text itself").into(),
        );
    }
    let (texts, _) = text_list(input, "input")?;
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "encoding_format must be 'float' or 'base64', got {other}"
            ))
            .into())
        }
    };
    let model = match request.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => only_embedding_model(&s)?,
        Some(other) => {
            return Err(Error::invalid(format!("model must be a string, got {other}")).into())
        }
    };
    let task = match s.runtime.task(&model, None)? {
        Some(t) if t.kind() == TaskKind::TextEmbedding => t,
        _ => {
            return Err(
                Error::invalid(format!("model '{model}' is not a text-embedding model")).into(),
            )
        }
    };
    if let Some(d) = request.get("dimensions").filter(|d| !d.is_null()) {
        let dim = task
            .signature()
            .outputs
            .first()
            .and_then(|o| o.shape.last().copied())
            .unwrap_or(-1);
        if d.as_i64() != Some(dim) {
            return Err(Error::invalid(format!(
                "model '{model}' makes {dim}-dimensional embeddings and cannot shorten them; dimensions was {d}"
            ))
            .into());
        }
    }
    let answer = s
        .runtime
        .run_task(&model, None, TaskInput::Texts(texts), Default::default())
        .await?;
    let TaskOutput::Embeddings { vectors, tokens } = answer.output else {
        return Err(Error::internal(format!("model '{model}' answered without embeddings")).into());
    };
    let data: Vec<Datum> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| Datum {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Float(v)
            },
        })
        .collect();
    let used: usize = tokens.iter().sum();
    Ok(Json(Response {
        object: "list",
        data,
        model: &model,
        usage: Usage {
            prompt_tokens: used,
            total_tokens: used,
        },
    })
    .into_response())
}

/// OpenAI's embeddings request, as [`embeddings`] reads it (field by field, to name what is
/// wrong); here for the OpenAPI description.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct EmbeddingsRequest {
    /// A text, or a list of texts.
    input: TextOrTexts,
    /// A text-embedding model (default: the only one loaded).
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    encoding_format: Option<EncodingFormat>,
    /// Must equal the model's dimension when given.
    dimensions: Option<u32>,
    /// Accepted and ignored, as OpenAI's.
    user: Option<String>,
}

/// `input`: one text or several.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum TextOrTexts {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum EncodingFormat {
    Float,
    Base64,
}

/// OpenAI's embeddings response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EmbeddingsResponse)]
struct Response<'a> {
    /// `list`.
    object: &'static str,
    /// One entry per input, in order.
    data: Vec<Datum<'a>>,
    /// The model that answered.
    model: &'a str,
    /// Tokens read.
    usage: Usage,
}

/// One embedding.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Embedding)]
struct Datum<'a> {
    /// `embedding`.
    object: &'static str,
    /// The input's position.
    index: usize,
    /// The vector.
    embedding: Embedding<'a>,
}

/// A vector as numbers, or as base64 of its little-endian f32 bytes.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EmbeddingVector)]
#[serde(untagged)]
enum Embedding<'a> {
    Float(&'a [f32]),
    Base64(String),
}

/// Tokens read.
#[derive(Serialize, utoipa::ToSchema)]
struct Usage {
    /// Tokens of the inputs.
    prompt_tokens: usize,
    /// The same: embeddings generate none.
    total_tokens: usize,
}

/// The one text-embedding model, for requests that name none.
fn only_embedding_model(s: &AppState) -> Result<String, Error> {
    let mut names: Vec<String> = s
        .runtime
        .index(true)
        .into_iter()
        .map(|r| r.name)
        .filter(|name| {
            matches!(
                s.runtime.task(name, None),
                Ok(Some(t)) if t.kind() == TaskKind::TextEmbedding
            )
        })
        .collect();
    names.dedup();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::not_found("no text-embedding model is loaded")),
        many => Err(Error::invalid(format!(
            "the request has no 'model'; the text-embedding models are {}",
            many.join(", ")
        ))),
    }
}
