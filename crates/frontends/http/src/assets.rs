//! Files built into the binary (the console, the API reference page), served with their media
//! type.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rust_embed::RustEmbed;
use serde_json::json;

/// `path` from the embedded folder `E`, or a 404 naming it.
pub(crate) fn file<E: RustEmbed>(path: &str) -> Response {
    match E::get(path) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, f.metadata.mimetype().to_string()),
                // The files change with the binary: let the browser revalidate rather than keep
                // a console older than the server.
                (header::CACHE_CONTROL, "no-cache".to_string()),
            ],
            f.data,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no such file: {path}") })),
        )
            .into_response(),
    }
}
