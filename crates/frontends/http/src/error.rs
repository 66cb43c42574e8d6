//! Errors as HTTP responses: `{"error": "..."}` with the status the error's kind calls for.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::LazyLock;
use std::time::Duration;

use ferroserve_core::{Error, ErrorKind, Tally};

/// A runtime error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// Requests refused because a model could not take them, summarised every 10 s.
static REJECTED: LazyLock<Tally> =
    LazyLock::new(|| Tally::new("requests rejected", Duration::from_secs(10)));

/// The HTTP status for each kind of error; the one place that mapping lives.
pub fn status(e: &Error) -> StatusCode {
    match e.kind() {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self.0);
        match self.0.kind() {
            ErrorKind::Internal => tracing::warn!(%status, error = %self.0, "request failed"),
            // Refusals under load come by the thousand: one summary line per interval.
            ErrorKind::Overloaded | ErrorKind::Unavailable => {
                let m = self.0.message();
                tracing::debug!(%status, error = %m, "request rejected");
                REJECTED.note(m);
            }
            _ => tracing::debug!(%status, error = %self.0, "request rejected"),
        }
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response();
        if self.0.kind() == ErrorKind::Unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.0.kind() == ErrorKind::Overloaded {
            // The queue drains in milliseconds; one second is the smallest value the header has.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
