//! ferroserve's gRPC frontend.
//!
//! Serves `inference.GRPCInferenceService`, the Open Inference Protocol's gRPC service with
//! Triton's model-configuration, statistics and repository-index extensions, plus the standard
//! `grpc.health.v1.Health`, on top of the same [`Runtime`] as the HTTP frontend: validation,
//! batching and errors are the runtime's, so both protocols behave alike.
//!
//! ```no_run
//! # async fn run(runtime: std::sync::Arc<ferroserve_runtime::Runtime>) -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8001").await?;
//! ferroserve_grpc::serve(listener, runtime, ferroserve_grpc::GrpcOptions::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod convert;
mod documents;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod service;

use std::future::Future;
use std::sync::Arc;

use ferroserve_runtime::Runtime;
use tonic_health::ServingStatus;

pub use documents::DocumentsService;
pub use service::{model_config, status, InferenceService};

/// The protocol's messages and the generated client and server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

/// The documents service's messages and the generated client and server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod documents_proto {
    tonic::include_proto!("ferroserve.documents");
}

/// Settings of the gRPC frontend.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// When set, the repository extension's load and unload need the `authorization` metadata
    /// `Bearer TOKEN`.
    pub management_token: Option<ferroserve_core::Token>,
    /// Whether load and unload are served without a token (see the HTTP frontend's option of
    /// the same name). Default: true.
    pub repository_changes_without_token: bool,
    /// Bounds on the listener's connections: how many, idle and keep-alive times.
    pub limits: ferroserve_listen::Limits,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            management_token: None,
            repository_changes_without_token: true,
            limits: ferroserve_listen::Limits::default(),
        }
    }
}

/// Serves the inference and health services on `listener` until `shutdown` completes, then
/// lets in-flight calls finish. Health reports SERVING once the runtime is ready.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    options: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, runtime, None, options, shutdown).await
}

/// [`serve`], plus `ferroserve.documents.DocumentService` for `flow` when given (what
/// `ferroserve run` serves).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    flow: Option<Arc<ferroserve_flow::Flow>>,
    options: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Known from the start (NOT_SERVING while models load), so a check never finds the service
    // unregistered.
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<proto::grpc_inference_service_server::GrpcInferenceServiceServer<InferenceService>>()
        .await;
    let ready = runtime.clone();
    tokio::spawn(async move {
        while !ready.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_serving::<proto::grpc_inference_service_server::GrpcInferenceServiceServer<InferenceService>>()
            .await;
        // Readiness only turns false again when the server drains, for good.
        while ready.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<proto::grpc_inference_service_server::GrpcInferenceServiceServer<InferenceService>>()
            .await;
    });
    let inference = proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        InferenceService::new(runtime).with_token(
            options.management_token.clone(),
            options.repository_changes_without_token,
        ),
    )
    .max_decoding_message_size(options.max_message_bytes)
    .max_encoding_message_size(options.max_message_bytes);
    let mut routes = tonic::service::Routes::new(health_service).add_service(inference);
    if let Some(f) = flow {
        routes = routes.add_service(
            documents_proto::document_service_server::DocumentServiceServer::new(
                DocumentsService::new(f),
            )
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(options.max_message_bytes),
        );
    }
    let app = routes
        .prepare()
        .into_axum_router()
        .layer(tower::util::MapResponseLayer::new(
            too_large_is_resource_exhausted,
        ));
    ferroserve_listen::serve(listener, app, options.limits, shutdown).await
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; gRPC's own servers (and
/// Triton) say RESOURCE_EXHAUSTED, the twin of HTTP's 413, which is what clients handle.
fn too_large_is_resource_exhausted<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        headers.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    response
}
