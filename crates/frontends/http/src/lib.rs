//! ferroserve's HTTP frontend.
//!
//! Serves the Open Inference Protocol (KServe V2) REST API over HTTP/1.1 and HTTP/2 (cleartext),
//! with Triton's binary tensor data extension and repository index, on top of a
//! [`Runtime`]. The frontend decodes and encodes; everything else (which model, validation,
//! queueing, compute) is the runtime's.
//!
//! ```no_run
//! # async fn run(runtime: std::sync::Arc<ferroserve_runtime::Runtime>) -> std::io::Result<()> {
//! use ferroserve_http::{router, HttpOptions};
//!
//! let app = router(runtime, HttpOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! ferroserve_listen::serve(listener, app, ferroserve_listen::Limits::default(), std::future::pending()).await
//! # }
//! ```

#![warn(missing_docs)]

mod assets;
mod body;
mod console;
mod documents;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod generate;
mod handler;
mod management;
mod openai;
mod openapi;
mod ray;
mod stream;
mod torchserve;
pub mod v2;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use ferroserve_core::Error;
use ferroserve_runtime::Runtime;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::routes;

use openapi::Routes;

pub use error::{status, ApiError};
pub use management::management_router;
pub use ray::ray_router;

/// Settings of the HTTP frontend.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body accepted, in bytes (after decompression); larger ones get 413.
    pub max_request_bytes: usize,
    /// The management token: when set, the management API and the repository extension's
    /// load and unload (on any listener) need `Authorization: Bearer TOKEN`.
    pub management_token: Option<ferroserve_core::Token>,
    /// Whether the repository extension's load and unload are served without a token. The
    /// server turns it off when this listener is reachable from other machines and there is
    /// no token. Default: true.
    pub repository_changes_without_token: bool,
    /// Whether `/` serves the web console. Default: true.
    pub console: bool,
}

impl HttpOptions {
    /// Who may load and unload repository models through the protocol's repository extension.
    pub fn repository_access(&self) -> ferroserve_runtime::RepositoryAccess {
        ferroserve_runtime::RepositoryAccess::new(
            self.management_token.clone(),
            self.repository_changes_without_token,
        )
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024 * 1024,
            management_token: None,
            repository_changes_without_token: true,
            console: true,
        }
    }
}

pub(crate) struct AppState {
    runtime: Arc<Runtime>,
    options: HttpOptions,
    /// The Deployment or Flow `ferroserve run` serves, if any.
    flow: Option<Arc<ferroserve_flow::Flow>>,
}

impl AppState {
    /// Reads a whole body, refusing one over the limit before reading it when its length is
    /// declared, and as soon as it passes the limit otherwise.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.options.max_request_bytes;
        let too_large = || {
            ApiError(Error::too_large(format!(
                "request body is larger than the server's limit of {limit} bytes (--max-request-bytes)"
            )))
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let encoded = headers.contains_key(header::CONTENT_ENCODING);
        if !encoded && declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(ApiError(Error::invalid(format!(
                "could not read the request body: {}",
                body_error(&*e)
            )))),
        }
    }
}

/// The innermost cause of a body read error: a [`ferroserve_listen::BodyTooSlow`] says what the
/// client did wrong, where the wrappers around it only say "error reading a body".
pub(crate) fn body_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Builds the router with every route of this frontend.
pub fn router(runtime: Arc<Runtime>, options: HttpOptions) -> Router {
    finish(
        routes(),
        Arc::new(AppState {
            runtime,
            options,
            flow: None,
        }),
    )
}

/// The router of `ferroserve run`: Jina's document routes for `flow` (`POST /post`,
/// `POST /{endpoint}`, and `GET /{deployment}?txt=` for a Deployment) beside every route of
/// [`router`], which keep serving the flow's models.
pub fn flow_router(
    runtime: Arc<Runtime>,
    flow: Arc<ferroserve_flow::Flow>,
    options: HttpOptions,
) -> Router {
    // `GET /{name}` (in `routes`) answers for the flow's executors first.
    let routes = routes()
        .routes(routes!(documents::post))
        .routes(routes!(documents::endpoint));
    finish(
        routes,
        Arc::new(AppState {
            runtime,
            options,
            flow: Some(flow),
        }),
    )
}

const DESCRIPTION: &str = "The Open Inference Protocol (KServe V2) with Triton's extensions, \
TorchServe's inference routes, OpenAI's embeddings, ferroserve's task routes and, under \
`ferroserve run`, Jina's document routes. Errors are `{\"error\": \"...\"}` with the status \
their kind calls for.";

fn finish(routes: Routes, state: Arc<AppState>) -> Router {
    let routes = if state.options.console {
        routes.merge(console::routes())
    } else {
        routes
    };
    let described = openapi::described(routes, "ferroserve", DESCRIPTION);
    layered(described.fallback(not_found), state)
}

/// The layers every router has (405s, decompression, tracing), around routes that have their
/// fallback already.
fn layered(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .layer(RequestDecompressionLayer::new())
        .layer(trace_layer())
        .with_state(state)
}

/// Health and metrics: what every server ferroserve runs answers, whatever else it serves.
fn routes_for_health() -> Routes {
    Routes::new()
        .routes(routes!(v2::live))
        .routes(routes!(v2::ready))
        .routes(routes!(metrics))
}

fn routes() -> Routes {
    routes_for_health()
        .routes(routes!(v2::server_metadata))
        .routes(routes!(v2::model_metadata))
        .routes(routes!(v2::versioned::model_metadata))
        .routes(routes!(v2::model_ready))
        .routes(routes!(v2::versioned::model_ready))
        .routes(routes!(v2::infer))
        .routes(routes!(v2::versioned::infer))
        .routes(routes!(v2::model_config))
        .routes(routes!(v2::versioned::model_config))
        .routes(routes!(v2::all_stats))
        .routes(routes!(v2::model_stats))
        .routes(routes!(v2::versioned::model_stats))
        .merge(repository_routes())
        // TorchServe's inference routes share the port with V2 (see the README); `curl -T
        // img.jpg` sends a PUT, and TorchServe accepts both.
        .routes(routes!(torchserve::ping))
        .routes(routes!(torchserve::predict))
        .routes(routes!(torchserve::predict_version))
        .routes(routes!(torchserve::upload))
        .routes(routes!(torchserve::upload_version))
        .routes(routes!(openai::embeddings))
        // Generative models by name (`/summarize`, `/imagine`); see `generate`.
        .routes(routes!(generate::query))
}

/// Triton's repository extension, on the inference port and the management port alike.
pub(crate) fn repository_routes() -> Routes {
    Routes::new()
        .routes(routes!(v2::repository_index))
        .routes(routes!(v2::repository_load))
        .routes(routes!(v2::repository_unload))
}

/// A router with only `GET /metrics`, for a separate metrics port.
pub fn metrics_router(runtime: Arc<Runtime>) -> Router {
    let state = Arc::new(AppState {
        runtime,
        options: HttpOptions::default(),
        flow: None,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The server's metrics in the OpenMetrics text format, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Every metric (names in the README)",
        content((String = "application/openmetrics-text")))))]
async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            ferroserve_runtime::metrics::CONTENT_TYPE,
        )],
        s.runtime.metrics_text(),
    )
}

/// Request spans and timings at debug level. A 5xx is the server's answer, not a fault of the
/// server's (a full queue, a client's own deadline): `ApiError` logs what needs attention, and
/// an ERROR line per refused request under overload would flood the log.
pub(crate) fn trace_layer() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    tower_http::trace::DefaultMakeSpan,
    tower_http::trace::DefaultOnRequest,
    tower_http::trace::DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    tower_http::trace::DefaultOnFailure,
> {
    TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
}

pub(crate) async fn not_found(uri: Uri) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no route for {}", uri.path()) })),
    )
}

pub(crate) async fn method_not_allowed(
    method: Method,
    uri: Uri,
) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({ "error": format!("{method} is not allowed on {}", uri.path()) })),
    )
}
