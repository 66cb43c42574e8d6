use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use ferroserve_runtime::backend::Backends;
use ferroserve_runtime::{Runtime, RuntimeOptions};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::{management_router, router, HttpOptions};

fn runtime() -> Arc<Runtime> {
    Arc::new(Runtime::new(Backends::new(), RuntimeOptions::default()).expect("runtime"))
}

/// `method path` with no body: the status, the headers and the whole body.
async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
) -> (axum::http::StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

async fn get_json(app: &axum::Router, path: &str) -> Value {
    let (status, _, bytes) = send(app, Method::GET, path).await;
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Every (method, path) the description gives, with its parameters filled in.
fn operations(api: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in api["paths"].as_object().expect("paths") {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("path item").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            out.push((method, concrete.clone()));
        }
    }
    out
}

/// Every described operation reaches a handler: the router's fallbacks ("no route", "not
/// allowed") never answer one.
async fn assert_every_operation_is_routed(app: axum::Router) {
    let api = get_json(&app, "/openapi.json").await;
    assert_eq!(api["openapi"], "3.1.0");
    let ops = operations(&api);
    assert!(!ops.is_empty());
    for (method, path) in ops {
        let (status, _, bytes) = send(&app, method.clone(), &path).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_ne!(status, 405, "{method} {path}: {text}");
        // The fallbacks' exact answers; a handler may refuse a name in its own words.
        let fallback = [
            format!("no route for {path}"),
            format!("{method} is not allowed on {path}"),
        ];
        let error = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        assert!(
            !error.is_some_and(|e| fallback.contains(&e)),
            "{method} {path} is described but not routed: {status} {text}"
        );
    }
}

#[tokio::test]
async fn the_description_is_openapi_3_1_and_every_operation_is_served() {
    assert_every_operation_is_routed(router(runtime(), HttpOptions::default())).await;
    assert_every_operation_is_routed(management_router(runtime(), HttpOptions::default())).await;
}

#[tokio::test]
async fn every_operation_is_documented_with_an_answer_and_a_tag() {
    let api = get_json(&router(runtime(), HttpOptions::default()), "/openapi.json").await;
    for (path, item) in api["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
    let schemas = api["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "InferenceRequest",
        "InferenceResponse",
        "Error",
        "ModelMetadata",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
}

#[tokio::test]
async fn the_console_is_served_unless_turned_off() {
    let on = router(runtime(), HttpOptions::default());
    let api = get_json(&on, "/openapi.json").await;
    assert!(api["paths"].get("/").is_some());
    let off = router(
        runtime(),
        HttpOptions {
            console: false,
            ..Default::default()
        },
    );
    let api = get_json(&off, "/openapi.json").await;
    assert!(api["paths"].get("/").is_none());
    assert!(api["paths"].get("/console/api/models").is_none());
    let (status, _, _) = send(&off, Method::GET, "/").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn docs_are_served_from_the_binary() {
    let app = router(runtime(), HttpOptions::default());
    for (path, kind) in [
        ("/docs", "text/html"),
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/docs.js", "javascript"),
    ] {
        let (status, headers, _) = send(&app, Method::GET, path).await;
        assert_eq!(status, 200, "{path}");
        let ct = headers["content-type"].to_str().expect("ascii");
        assert!(ct.contains(kind), "{path}: {ct}");
    }
}
