//! Requests for models served by a TorchServe handler (`.mar` archives with a handler of the
//! user's, or a built-in one run in Python): the request goes to the handler as TorchServe's
//! frontend hands it over (the query string's keys first, then the raw body as parameter `body`,
//! or each multipart or form field under its name), with its headers; the answer is the bytes
//! the handler returned for it, with the status, content type and headers it set.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferroserve_core::{Error, ErrorKind, InferRequest, NamedTensor, Tensor};
use ferroserve_runtime::handler::{
    BODY_INPUT, CONTENT_TYPE_OUTPUT, HANDLER_OUTPUT, HEADERS_OUTPUT, META_INPUT, STATUS_OUTPUT,
};
use serde_json::json;

use crate::body;
use crate::error::ApiError;
use crate::v2::ModelPath;
use crate::AppState;

/// The request's parameters as slices of one payload.
#[derive(Default)]
struct Parameters {
    payload: Vec<u8>,
    list: Vec<serde_json::Value>,
}

impl Parameters {
    fn add(&mut self, name: &str, content_type: Option<&str>, data: &[u8]) {
        self.list.push(json!({
            "name": name,
            "content_type": content_type,
            "offset": self.payload.len(),
            "length": data.len(),
        }));
        self.payload.extend_from_slice(data);
    }
}

/// A content type without its parameters (`application/json; charset=utf-8` is
/// `application/json`), as TorchServe's frontend passes it.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// `POST|PUT /predictions/{model}[/{version}]` for a handler model.
pub(crate) async fn predict(
    state: &AppState,
    path: &ModelPath,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let mut p = Parameters::default();
    // Sorted, so the same request always reaches the handler the same way.
    let mut query: Vec<_> = query.into_iter().collect();
    query.sort();
    for (k, v) in &query {
        p.add(k, None, v.as_bytes());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence);
    if let Some(boundary) = body::multipart_boundary(headers)? {
        for f in body::fields(bytes, boundary).await? {
            p.add(&f.name, f.content_type.as_deref().map(essence), &f.data);
        }
    } else if content_type == Some("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(&bytes) {
            p.add(&k, None, v.as_bytes());
        }
    } else {
        p.add("body", content_type, &bytes);
    }
    let header_list: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let meta = json!({ "headers": header_list, "parameters": p.list }).to_string();
    let one = |name: &str, data: &[u8]| -> Result<NamedTensor, ApiError> {
        Ok(NamedTensor {
            name: name.into(),
            tensor: Tensor::from_bytes_elements(vec![1], [data])
                .map_err(|e| Error::invalid(e.to_string()))?,
        })
    };
    let request = InferRequest {
        inputs: vec![
            one(BODY_INPUT, &p.payload)?,
            one(META_INPUT, meta.as_bytes())?,
        ],
        ..Default::default()
    };
    let answer = match state
        .runtime
        .infer(&path.model, path.version.as_deref(), request)
        .await
    {
        Ok(a) => a,
        Err(e) => return handler_error(e),
    };
    let output = |name: &str| answer.outputs.iter().find(|t| t.name == name);
    let element = |name: &str| -> Option<Vec<u8>> {
        output(name).and_then(|t| t.tensor.bytes_elements().next().map(<[u8]>::to_vec))
    };
    let body = element(HANDLER_OUTPUT).ok_or_else(|| {
        ApiError(Error::internal(format!(
            "the handler's answer has no '{HANDLER_OUTPUT}'"
        )))
    })?;
    let mut response = Bytes::from(body).into_response();
    let status = output(STATUS_OUTPUT)
        .and_then(|t| {
            t.tensor
                .data()
                .get(..4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    *response.status_mut() = status;
    let set = response.headers_mut();
    if let Some(extra) = element(HEADERS_OUTPUT)
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
    {
        for (k, v) in extra {
            let value = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(value)) {
                set.insert(k, v);
            }
        }
    }
    let content_type = element(CONTENT_TYPE_OUTPUT)
        .and_then(|b| HeaderValue::from_bytes(&b).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    set.insert(header::CONTENT_TYPE, content_type);
    Ok(response)
}

/// A failed prediction. The handler's own failures carry TorchServe's code (`[503] Prediction
/// failed (...)`), answered with that status and TorchServe's fields beside `error`; anything
/// else is the server's usual error.
fn handler_error(e: Error) -> Result<Response, ApiError> {
    let message = e.to_string();
    let coded = (e.kind() == ErrorKind::Internal)
        .then(|| {
            let start = message.find(": [")? + 3;
            let end = start + message[start..].find("] ")?;
            let code = message[start..end].parse::<u16>().ok()?;
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())?;
            Some((status, message[end + 2..].to_string()))
        })
        .flatten();
    match coded {
        Some((status, text)) => Ok((
            status,
            Json(json!({
                "code": status.as_u16(),
                "type": "InternalServerException",
                "message": text,
                "error": message,
            })),
        )
            .into_response()),
        None => Err(ApiError(e)),
    }
}
