//! The OpenAPI 3.1 description of the HTTP routes, at `/openapi.json`, and Swagger UI reading it
//! at `/docs`.
//!
//! Each route is registered through utoipa-axum's `OpenApiRouter` from its handler's
//! `#[utoipa::path]`, which gives both the axum route and its description: a route cannot be
//! served undescribed, nor described at a path it is not served on. The bodies' schemas derive
//! from the types the handlers read and write ([`schemas`] holds those that exist only on the
//! wire).

pub(crate) mod schemas;

use std::sync::Arc;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use rust_embed::RustEmbed;
use utoipa::openapi::{InfoBuilder, LicenseBuilder, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// Routes being described as they are registered.
pub(crate) type Routes = OpenApiRouter<Arc<AppState>>;

/// Swagger UI, vendored (see `docs-ui/README.md`).
#[derive(RustEmbed)]
#[folder = "docs-ui/"]
struct DocsUi;

/// The router of `routes` with `/openapi.json` describing them and `/docs` showing that.
pub(crate) fn described(routes: Routes, title: &str, description: &str) -> Router<Arc<AppState>> {
    let (router, mut api) = routes.split_for_parts();
    api.info = InfoBuilder::new()
        .title(title)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .license(Some(
            LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    let json = Bytes::from(document(&api));
    router
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], json) }
            }),
        )
        .route("/docs", get(|| async { docs_file("index.html") }))
        .route(
            "/docs/{file}",
            get(|Path(file): Path<String>| async move { docs_file(&file) }),
        )
}

fn document(api: &OpenApi) -> Vec<u8> {
    // The description is built from types at compile time; it always serialises.
    serde_json::to_vec(api).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise the OpenAPI description");
        b"{}".to_vec()
    })
}

fn docs_file(path: &str) -> Response {
    crate::assets::file::<DocsUi>(path).into_response()
}

#[cfg(test)]
mod tests;
