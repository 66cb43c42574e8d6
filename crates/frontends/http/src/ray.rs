//! HTTP for Ray Serve applications: every path not ferroserve's own goes to the deployment
//! [`RayApps::route`] picks, as an ASGI scope and body; its status, headers and body come back
//! as the application set them. Ray's proxy routes `/-/routes` and `/-/healthz` are served
//! too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferroserve_core::Error;
use ferroserve_flow::ray::{Answer, RayApps};
use serde_json::{json, Value};

use crate::{layered, routes_for_health, ApiError, AppState};

/// The router of `ferroserve run module:attribute`: ferroserve's health and metrics routes,
/// Ray's `/-/routes` and `/-/healthz`, and everything else to the applications.
pub fn ray_router(
    runtime: Arc<ferroserve_runtime::Runtime>,
    apps: Arc<RayApps>,
    options: crate::HttpOptions,
) -> Router {
    let state = Arc::new(AppState {
        runtime,
        options,
        flow: None,
    });
    // The applications' own routes are theirs to describe (FastAPI's /docs): no /openapi.json
    // here.
    let (health, _) = routes_for_health().split_for_parts();
    let routes = health
        // As Ray's proxy answers while its node drains.
        .route(
            "/-/healthz",
            get(|State(s): State<Arc<AppState>>| async move {
                if s.runtime.is_draining() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "This node is being drained.",
                    )
                } else {
                    (StatusCode::OK, "success")
                }
            }),
        )
        .route(
            "/-/routes",
            get({
                let apps = apps.clone();
                move || async move { Json(apps.routes()) }
            }),
        )
        .fallback(move |state: State<Arc<AppState>>, request: Request| {
            let apps = apps.clone();
            async move { serve(state, apps, request).await }
        });
    layered(routes, state)
}

async fn serve(
    State(state): State<Arc<AppState>>,
    apps: Arc<RayApps>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let Some((deployment, root_path)) = apps.route(&path) else {
        return Err(ApiError(Error::not_found(format!(
            "no application or deployment serves {path} (routes: {})",
            serde_json::to_string(&apps.routes()).unwrap_or_default()
        ))));
    };
    let body = state.read_body(&parts.headers, Body::new(body)).await?;
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), latin1(v.as_bytes())]))
        .collect();
    let decoded = percent_decode(&path);
    let scope = json!({
        "type": "http",
        "http_version": http_version(parts.version),
        "method": parts.method.as_str(),
        "scheme": "http",
        "path": decoded,
        "raw_path": path,
        "query_string": parts.uri.query().unwrap_or(""),
        "root_path": root_path,
        "headers": headers,
        "client": null,
        "server": null,
    });
    match deployment.http(scope, body).await? {
        Answer::Http(reply) => {
            let mut response = Response::new(Body::from(reply.body));
            *response.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let headers = response.headers_mut();
            for (k, v) in reply.headers {
                // Ours to set: the body's length is what it is.
                if k.eq_ignore_ascii_case("content-length") {
                    continue;
                }
                // The worker sent each byte as the character of that code (latin-1).
                let bytes: Option<Vec<u8>> = v.chars().map(|c| u8::try_from(c).ok()).collect();
                let value = bytes.and_then(|b| HeaderValue::from_bytes(&b).ok());
                match (HeaderName::try_from(k.as_str()), value) {
                    (Ok(k), Some(v)) => {
                        headers.append(k, v);
                    }
                    _ => tracing::warn!(
                        "deployment '{}': dropped the header {k:?}, which is not valid in HTTP",
                        deployment.name
                    ),
                }
            }
            Ok(response)
        }
        Answer::Raised { error, .. } => Err(ApiError(Error::internal(format!(
            "deployment '{}' raised {error}",
            deployment.name
        )))),
        Answer::Value(_) => Err(ApiError(Error::internal(format!(
            "deployment '{}' answered an HTTP request with a method's result",
            deployment.name
        )))),
    }
    .map(IntoResponse::into_response)
}

/// Header bytes as the worker reads them: each byte the character of that code (ASGI's
/// latin-1), so that no byte is lost or changed on the way.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn http_version(v: axum::http::Version) -> &'static str {
    match v {
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// The path as ASGI's `path` has it: percent-escapes decoded (as UTF-8, invalid sequences
/// replaced).
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}
