//! `ferroserve serve`: load the repository and serve it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ferroserve_backend_onnx::{library_path, OnnxRuntime};
use ferroserve_http::HttpOptions;
use ferroserve_runtime::{Runtime, RuntimeOptions};

use crate::cli::ServeArgs;

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !args.model_repository.is_dir() {
        anyhow::bail!(
            "model repository {} is not a directory",
            args.model_repository.display()
        );
    }
    let onnx = OnnxRuntime::load(&library_path(args.ort_lib.as_deref()))?;
    tracing::info!(library = %onnx.path().display(), "ONNX Runtime loaded");
    let runtime = Arc::new(Runtime::new(
        onnx,
        RuntimeOptions {
            max_queue_size: args.max_queue_size.max(1),
        },
    ));
    let http = HttpOptions {
        max_request_bytes: args.max_request_bytes,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args, runtime, http))
}

async fn serve(args: ServeArgs, runtime: Arc<Runtime>, http: HttpOptions) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.http_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // Listen first, so liveness probes answer while models load; readiness waits for them.
    tracing::info!("listening on http://{bound}");
    let app = ferroserve_http::router(runtime.clone(), http);
    let server = tokio::spawn(ferroserve_http::serve(listener, app, shutdown_signal()));

    let repo = args.model_repository.clone();
    let loader = runtime.clone();
    tokio::task::spawn_blocking(move || loader.load_repository(&repo))
        .await
        .context("model loading panicked")?
        .with_context(|| {
            format!(
                "cannot read model repository {}",
                args.model_repository.display()
            )
        })?;
    let rows = runtime.index(false);
    let ready = rows
        .iter()
        .filter(|r| r.state == ferroserve_runtime::ModelState::Ready)
        .count();
    tracing::info!(ready, unavailable = rows.len() - ready, "server ready");

    server.await.context("HTTP server task failed")??;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
