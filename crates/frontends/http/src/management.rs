//! The management API, on its own listener: TorchServe's management routes and Triton's
//! repository extension, both over the runtime's one implementation.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /models?limit=&next_page_token=` | list, paginated |
//! | `POST /models?url=&model_name=&initial_workers=&synchronous=` | register |
//! | `GET /models/{m}[/{v}\|/all]` | describe |
//! | `PUT /models/{m}[/{v}]?min_worker=&max_worker=&synchronous=` | scale |
//! | `DELETE /models/{m}[/{v}]` | unregister |
//! | `PUT /models/{m}/{v}/set-default` | default version |
//! | `POST /v2/repository/index`, `POST /v2/repository/models/{m}/load\|unload` | Triton's |
//!
//! When the server has a management token every request must carry it
//! (`Authorization: Bearer TOKEN`); a missing or wrong one is 401.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ferroserve_core::Error;
use ferroserve_runtime::{Runtime, ScaleRequest};
use serde_json::json;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::openapi::Routes;
use crate::{AppState, HttpOptions};

/// The management router. Every route requires `options.management_token` when it is set.
pub fn management_router(runtime: Arc<Runtime>, options: HttpOptions) -> Router {
    let state = Arc::new(AppState {
        runtime,
        options,
        flow: None,
    });
    let routes = Routes::new()
        .routes(routes!(list, register))
        .routes(routes!(describe, scale, unregister))
        .routes(routes!(
            versioned::describe,
            versioned::scale,
            versioned::unregister
        ))
        .routes(routes!(set_default))
        .merge(crate::repository_routes());
    crate::openapi::described(routes, "ferroserve management", DESCRIPTION)
        .fallback(crate::not_found)
        .method_not_allowed_fallback(crate::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(crate::trace_layer())
        .with_state(state)
}

const DESCRIPTION: &str = "TorchServe's management API and Triton's repository extension, \
on their own listener. With a management token, every route needs `Authorization: Bearer TOKEN`.";

/// A management answer: what was done.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the handlers answer with `json!`; this describes it
struct Status {
    /// What was done, or started.
    status: String,
    /// Replicas now (a synchronous scale).
    replicas: Option<usize>,
}

/// The query of `GET /models`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes what `list` reads from its query map
struct ListQuery {
    /// Models per page.
    limit: Option<u32>,
    /// Where the previous page ended.
    next_page_token: Option<String>,
}

/// The query of `POST /models`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes what `register` reads from its query map
struct RegisterQuery {
    /// An archive in the model store, or a path under --allowed-paths, or an allow-listed URL.
    url: String,
    /// The name to serve it under (default: the archive's).
    model_name: Option<String>,
    /// Replicas to start with.
    initial_workers: Option<u32>,
    /// Answer once loaded (default true) rather than at once (202).
    synchronous: Option<bool>,
}

/// The query of `PUT /models/{model}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes what `scale` reads from its query map
struct ScaleQuery {
    /// Fewest replicas.
    min_worker: Option<u32>,
    /// Most replicas (autoscaling between the two when they differ).
    max_worker: Option<u32>,
    /// Answer once scaled rather than at once (202, the default).
    synchronous: Option<bool>,
}

/// The routes with `/{version}`.
mod versioned {
    use super::*;

    /// One version of a model (`all`: every version).
    #[utoipa::path(get, operation_id = "describe_version", path = "/models/{model}/{version}", tag = "management",
        params(crate::openapi::schemas::ModelVersion),
        responses((status = 200, description = "The model with that version", body = ferroserve_runtime::ModelDescription), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(super) async fn describe(
        s: State<Arc<AppState>>,
        p: Path<ManagedPath>,
    ) -> Result<Response, ApiError> {
        super::describe(s, p).await
    }

    /// Scales one version.
    #[utoipa::path(put, operation_id = "scale_version", path = "/models/{model}/{version}", tag = "management",
        params(crate::openapi::schemas::ModelVersion, ScaleQuery),
        responses(
            (status = 200, description = "Scaled", body = Status),
            (status = 202, description = "Scaling", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(super) async fn scale(
        s: State<Arc<AppState>>,
        p: Path<ManagedPath>,
        q: Query<HashMap<String, String>>,
    ) -> Result<Response, ApiError> {
        super::scale(s, p, q).await
    }

    /// Unregisters one version.
    #[utoipa::path(delete, operation_id = "unregister_version", path = "/models/{model}/{version}", tag = "management",
        params(crate::openapi::schemas::ModelVersion),
        responses((status = 200, description = "Unregistered", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
    pub(super) async fn unregister(
        s: State<Arc<AppState>>,
        p: Path<ManagedPath>,
    ) -> Result<Response, ApiError> {
        super::unregister(s, p).await
    }
}

/// Refuses requests without the management token, when there is one.
async fn require_token(State(s): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match s.token_refusal(request.headers()) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

impl AppState {
    /// The 401 to answer with when a token is set and the request does not carry it.
    pub(crate) fn token_refusal(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        let token = self.options.management_token.as_ref()?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if token.matches_header(presented) {
            return None;
        }
        tracing::warn!("management request refused: missing or wrong token");
        Some((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "this management API needs the server's token: send Authorization: Bearer TOKEN" })),
        )
            .into_response())
    }
}

/// Query values, refusing keys this API does not know (a typo must not be silently ignored).
fn query<'a>(
    q: &'a HashMap<String, String>,
    known: &[&str],
) -> Result<impl Fn(&str) -> Option<&'a str> + 'a, ApiError> {
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        let hint = match k.as_str() {
            "batch_size" | "max_batch_delay" | "response_timeout" | "handler" | "runtime" => {
                " (set batching and the task in the model's model.yaml)"
            }
            _ => "",
        };
        return Err(Error::invalid(format!(
            "unknown parameter '{k}'{hint}; this route takes {}",
            known.join(", ")
        ))
        .into());
    }
    Ok(move |key: &str| q.get(key).map(String::as_str))
}

fn number(name: &str, value: Option<&str>) -> Result<Option<usize>, ApiError> {
    value
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ApiError(Error::invalid(format!(
                    "{name} must be a whole number, got '{v}'"
                )))
            })
        })
        .transpose()
}

fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, ApiError> {
    match value {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(Error::invalid(format!("{name} must be true or false, got '{v}'")).into()),
    }
}

/// Runs blocking runtime work (loads, unloads) off the async threads.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> ferroserve_core::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError(Error::internal(e.to_string())))?
        .map_err(ApiError)
}

/// Runs `work` off the async threads without waiting; a failure is logged, since the client has
/// its 202 already (and sees the outcome through describe).
fn in_background<T>(
    work: impl FnOnce() -> ferroserve_core::Result<T> + Send + 'static,
    what: &'static str,
) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = work() {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}

/// The models, a page at a time.
#[utoipa::path(get, path = "/models", tag = "management", params(ListQuery),
    responses((status = 200, description = "A page of models", body = ferroserve_runtime::ModelList), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn list(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let get = query(&q, &["limit", "next_page_token"])?;
    let limit = number("limit", get("limit"))?;
    Ok(Json(s.runtime.list(limit, get("next_page_token"))?).into_response())
}

/// Registers a model from an archive, a path or a URL.
#[utoipa::path(post, path = "/models", tag = "management", params(RegisterQuery),
    responses(
        (status = 200, description = "Registered", body = Status),
        (status = 202, description = "Registering", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn register(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let get = query(&q, &["url", "model_name", "initial_workers", "synchronous"])?;
    let url = get("url")
        .ok_or_else(|| {
            Error::invalid(
                "url is required: a file in the model store, or a path under --allowed-paths",
            )
        })?
        .to_string();
    let name = get("model_name").map(str::to_string);
    let workers = number("initial_workers", get("initial_workers"))?;
    let synchronous = flag("synchronous", get("synchronous"), true)?;
    let runtime = s.runtime.clone();
    let work = move || runtime.register(&url, name.as_deref(), workers);
    if synchronous {
        let name = off_thread(work).await?;
        return Ok(
            Json(json!({ "status": format!("Model \"{name}\" registered") })).into_response(),
        );
    }
    in_background(work, "registration");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "Model registration started; GET /models/{name} shows its state" })),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct ManagedPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

/// A model, every version.
#[utoipa::path(get, path = "/models/{model}", tag = "management",
    params(crate::openapi::schemas::ModelName),
    responses((status = 200, description = "The model", body = ferroserve_runtime::ModelDescription), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn describe(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ManagedPath>,
) -> Result<Response, ApiError> {
    let mut d = s.runtime.describe(&p.model)?;
    match p.version.as_deref() {
        None | Some("all") => {}
        Some(v) => {
            d.versions.retain(|x| x.version == v);
            if d.versions.is_empty() {
                return Err(Error::not_found(format!(
                    "unknown version '{v}' of model '{}'",
                    p.model
                ))
                .into());
            }
        }
    }
    Ok(Json(d).into_response())
}

/// Scales a model's default version.
#[utoipa::path(put, path = "/models/{model}", tag = "management",
    params(crate::openapi::schemas::ModelName, ScaleQuery),
    responses(
        (status = 200, description = "Scaled", body = Status),
        (status = 202, description = "Scaling", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn scale(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ManagedPath>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let get = query(&q, &["min_worker", "max_worker", "synchronous"])?;
    let request = ScaleRequest {
        min: number("min_worker", get("min_worker"))?,
        max: number("max_worker", get("max_worker"))?,
    };
    request.check()?;
    // TorchServe answers at once by default and scales in the background.
    let synchronous = flag("synchronous", get("synchronous"), false)?;
    let runtime = s.runtime.clone();
    let model = p.model.clone();
    let work = move || runtime.rescale(&model, p.version.as_deref(), request);
    if synchronous {
        let replicas = off_thread(work).await?;
        return Ok(Json(json!({ "status": format!("Model \"{}\" has {replicas} replicas", p.model), "replicas": replicas })).into_response());
    }
    // Checked now so a bad request is a 4xx rather than a log line.
    s.runtime.load_of(&p.model).map_err(ApiError)?;
    in_background(work, "scaling");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "Processing replica updates..." })),
    )
        .into_response())
}

/// Unregisters a model, every version.
#[utoipa::path(delete, path = "/models/{model}", tag = "management",
    params(crate::openapi::schemas::ModelName),
    responses((status = 200, description = "Unregistered", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn unregister(
    State(s): State<Arc<AppState>>,
    Path(p): Path<ManagedPath>,
) -> Result<Response, ApiError> {
    let runtime = s.runtime.clone();
    let (model, version) = (p.model.clone(), p.version.clone());
    off_thread(move || runtime.remove(&model, version.as_deref())).await?;
    let what = match &p.version {
        Some(v) => format!("Model \"{}\" version {v} unregistered", p.model),
        None => format!("Model \"{}\" unregistered", p.model),
    };
    Ok(Json(json!({ "status": what })).into_response())
}

#[derive(serde::Deserialize)]
struct VersionPath {
    model: String,
    version: String,
}

/// Makes a version the one requests without a version go to.
#[utoipa::path(put, operation_id = "set_default_version", path = "/models/{model}/{version}/set-default", tag = "management",
    params(crate::openapi::schemas::ModelVersion),
    responses((status = 200, description = "Done", body = Status), (status = "default", description = "An error", body = crate::openapi::schemas::ErrorBody)))]
async fn set_default(
    State(s): State<Arc<AppState>>,
    Path(p): Path<VersionPath>,
) -> Result<Response, ApiError> {
    s.runtime.set_default(&p.model, &p.version)?;
    Ok(Json(json!({
        "status": format!("Default version of model \"{}\" is now {}", p.model, p.version)
    }))
    .into_response())
}
