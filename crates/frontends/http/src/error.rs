//! Errors as HTTP responses: `{"error": "..."}` with the status the error's kind calls for.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::LazyLock;
use std::time::Duration;

use ferroserve_core::{Error, Tally};

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
    match e {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Unavailable(_) | Error::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::AlreadyExists(_) => StatusCode::CONFLICT,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self.0);
        match &self.0 {
            Error::Internal(_) => tracing::warn!(%status, error = %self.0, "request failed"),
            // Refusals under load come by the thousand: one summary line per interval.
            Error::Overloaded(m) | Error::Unavailable(m) => {
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
        if matches!(self.0, Error::Overloaded(_)) {
            // The queue drains in milliseconds; one second is the smallest value the header has.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
