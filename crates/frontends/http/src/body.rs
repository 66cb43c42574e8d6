//! The inputs of task routes, read from a request body the ways TorchServe clients send them:
//! raw bytes (`curl -T img.jpg`, `--data-binary`), multipart form fields (`curl -F data=@img.jpg`),
//! or JSON for text (`{"text": ...}`, `{"inputs": ...}`, a string or a list of strings).

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use ferroserve_core::{Error, Result};
use ferroserve_tasks::TaskInput;
use serde_json::Value;

/// Images: every non-empty part of a multipart body, else the whole body. The flag says whether
/// the client sent exactly one image without a list around it. As TorchServe's vision handlers
/// do, text (`text/*`) and a JSON string (`application/json`) are base64 of the image.
pub(crate) async fn images(headers: &HeaderMap, body: Bytes) -> Result<(TaskInput, bool)> {
    let images = match multipart_boundary(headers)? {
        Some(boundary) => fields(body, boundary)
            .await?
            .into_iter()
            .map(|f| image(f.content_type.as_deref(), f.data))
            .collect::<Result<Vec<_>>>()?,
        None => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            vec![image(content_type, body)?]
        }
    };
    if images.iter().all(Bytes::is_empty) {
        return Err(Error::invalid(
            "the request has no image: send it as the body (curl -T img.jpg) or a multipart field (curl -F data=@img.jpg)",
        ));
    }
    let single = images.len() == 1;
    Ok((TaskInput::Images(images), single))
}

/// Texts: from JSON (`{"text": s | [s]}`, `{"inputs": ...}`, `s`, `[s]`), from multipart fields,
/// or the whole body as UTF-8 text. The flag says whether the client sent one text without a
/// list around it.
pub(crate) async fn texts(headers: &HeaderMap, body: Bytes) -> Result<(TaskInput, bool)> {
    if let Some(boundary) = multipart_boundary(headers)? {
        let texts = parts(body, boundary)
            .await?
            .into_iter()
            .map(|(name, b)| utf8(b, &format!("field '{name}'")))
            .collect::<Result<Vec<_>>>()?;
        let single = texts.len() == 1;
        return Ok((TaskInput::Texts(texts), single));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("the body is not valid JSON: {e}")))?;
        return json_texts(&value);
    }
    // `curl -d '{"text": ...}'` sends JSON labelled as a form; take JSON that has the shape of
    // a text request as one, and anything else (or an explicit text/plain) as the text itself.
    if !content_type.starts_with("text/") {
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            if let Ok(found) = json_texts(&value) {
                return Ok(found);
            }
        }
    }
    Ok((TaskInput::Texts(vec![utf8(body, "the body")?]), true))
}

/// Texts from a JSON request: `{"text": s | [s]}` (or `inputs`, `data`), `s` or `[s]`.
fn json_texts(value: &Value) -> Result<(TaskInput, bool)> {
    let inner = match value {
        Value::Object(o) => o
            .get("text")
            .or_else(|| o.get("inputs"))
            .or_else(|| o.get("data"))
            .ok_or_else(|| Error::invalid("the JSON body has no 'text' field"))?,
        other => other,
    };
    let (texts, single) = text_list(inner, "text")?;
    Ok((TaskInput::Texts(texts), single))
}

/// A JSON string or a list of strings, with a message naming `field` otherwise.
pub(crate) fn text_list(value: &Value, field: &str) -> Result<(Vec<String>, bool)> {
    match value {
        Value::String(s) => Ok((vec![s.clone()], true)),
        Value::Array(items) => {
            let texts = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        Error::invalid(format!("{field}[{i}] must be a string, got {v}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if texts.is_empty() {
                return Err(Error::invalid(format!("{field} is an empty list")));
            }
            Ok((texts, false))
        }
        other => Err(Error::invalid(format!(
            "{field} must be a string or a list of strings, got {other}"
        ))),
    }
}

/// An image's bytes from a body or field with this content type: as they are, or decoded from
/// base64 when they are text or a JSON string.
fn image(content_type: Option<&str>, data: Bytes) -> Result<Bytes> {
    use base64::Engine as _;
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let text = if essence.starts_with("text/") {
        utf8(data, "the image's base64 text")?
    } else if essence == "application/json" {
        match serde_json::from_slice::<Value>(&data) {
            Ok(Value::String(s)) => s,
            _ => {
                return Err(Error::invalid(
                    "a JSON image must be one string holding the image in base64",
                ))
            }
        }
    } else {
        return Ok(data);
    };
    let cleaned: String = text.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map(Bytes::from)
        .map_err(|e| {
            Error::invalid(format!(
                "the image was sent as text ({essence}), which must be its bytes in base64: {e}"
            ))
        })
}

fn utf8(bytes: Bytes, what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| Error::invalid(format!("{what} is not valid UTF-8 text: {e}")))
}

pub(crate) fn multipart_boundary(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/")
    {
        return Ok(None);
    }
    multer::parse_boundary(ct)
        .map(Some)
        .map_err(|e| Error::invalid(format!("bad multipart Content-Type: {e}")))
}

/// The non-empty parts of a multipart body, with their field names, in order.
pub(crate) async fn parts(body: Bytes, boundary: String) -> Result<Vec<(String, Bytes)>> {
    Ok(fields(body, boundary)
        .await?
        .into_iter()
        .map(|f| (f.name, f.data))
        .collect())
}

/// One field of a multipart body.
pub(crate) struct Field {
    pub name: String,
    /// The part's own `Content-Type`, when it has one.
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// The non-empty fields of a multipart body, in order.
pub(crate) async fn fields(body: Bytes, boundary: String) -> Result<Vec<Field>> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    let bad = |e: multer::Error| Error::invalid(format!("malformed multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        let content_type = field.content_type().map(|m| m.to_string());
        let data = field.bytes().await.map_err(bad)?;
        if !data.is_empty() {
            out.push(Field {
                name,
                content_type,
                data,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("the multipart body has no non-empty field"));
    }
    Ok(out)
}
