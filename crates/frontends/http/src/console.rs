//! The web console at `/`: static files built into the binary (`console/`), and the two JSON
//! routes only it needs: the models in full and the autoscaling log. Everything else the
//! console shows comes from the public API (metadata, inference, `/metrics`).
//!
//! The console changes nothing by itself: its load and unload buttons call the repository
//! extension, which checks the management token where the server requires one. It reports
//! `read_only` so that it can hide those buttons from a caller who would be refused.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Json;
use ferroserve_runtime::autoscale::ScaleEvent;
use ferroserve_runtime::ModelDescription;
use rust_embed::RustEmbed;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::openapi::Routes;
use crate::AppState;

/// The console's files (plain HTML, CSS and JavaScript: no build step).
#[derive(RustEmbed)]
#[folder = "console/"]
struct ConsoleFiles;

/// The console's routes; left out under `--no-console`.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .routes(routes!(index))
        .routes(routes!(file))
        .routes(routes!(models))
        .routes(routes!(autoscaling))
}

/// The console.
#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The console's page", content((String = "text/html")))))]
async fn index() -> Response {
    crate::assets::file::<ConsoleFiles>("index.html")
}

/// One of the console's files.
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "A file of the console")),
    responses(
        (status = 200, description = "The file", content((String = "text/javascript"), (String = "text/css"), (String = "text/html"))),
        (status = 404, description = "No such file", body = crate::openapi::schemas::ErrorBody)))]
async fn file(Path(file): Path<String>) -> Response {
    crate::assets::file::<ConsoleFiles>(&file)
}

/// Every model as the management API describes it.
#[derive(Serialize, ToSchema)]
struct Models {
    /// True when this caller may not load or unload models (the server is reachable from
    /// other machines and the request carries no valid management token).
    read_only: bool,
    /// The models, by name; `source` (a path on the server) only for callers who may change
    /// them.
    models: Vec<ModelDescription>,
}

/// The models in full: state, versions, replicas, devices, batching, memory.
#[utoipa::path(get, path = "/console/api/models", tag = "console",
    responses((status = 200, description = "The models", body = Models)))]
async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Json<Models> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let read_only = s.options.repository_access().check(authorization).is_err();
    let mut names: Vec<String> = s.runtime.index(false).into_iter().map(|e| e.name).collect();
    names.dedup();
    let models = names
        .iter()
        // A model unloaded between the index and here is simply gone from the list.
        .filter_map(|name| s.runtime.describe(name).ok())
        .map(|mut d| {
            if read_only {
                d.source.clear();
            }
            d
        })
        .collect();
    Json(Models { read_only, models })
}

/// The autoscalers' latest decisions.
#[derive(Serialize, ToSchema)]
struct Autoscaling {
    /// Oldest first; the last 200 at most.
    events: Vec<ScaleEvent>,
}

/// The autoscalers' latest decisions, oldest first.
#[utoipa::path(get, path = "/console/api/autoscaling", tag = "console",
    responses((status = 200, description = "The decisions", body = Autoscaling)))]
async fn autoscaling(State(s): State<Arc<AppState>>) -> Json<Autoscaling> {
    Json(Autoscaling {
        events: s.runtime.metrics().scale_events(),
    })
}
