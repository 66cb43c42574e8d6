//! `ferroserve serve`: load the repository, serve it, and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferroserve_backend_onnx::{library_path, OnnxRuntime};
use ferroserve_http::HttpOptions;
use ferroserve_runtime::{ModelState, Runtime, RuntimeOptions};
use tokio::sync::watch;

use crate::cli::{RuntimeArgs, ServeArgs};

/// Checks the shared settings, loads ONNX Runtime and creates the (empty) runtime.
pub(crate) fn start_runtime(args: &RuntimeArgs) -> anyhow::Result<Arc<Runtime>> {
    if !(args.shutdown_grace >= 0.0 && args.shutdown_grace.is_finite()) {
        anyhow::bail!("--shutdown-grace must be a number of seconds, 0 or more");
    }
    let onnx = OnnxRuntime::load(&library_path(args.ort_lib.as_deref()))?;
    tracing::info!(library = %onnx.path().display(), "ONNX Runtime loaded");
    let runtime = Runtime::new(
        onnx,
        RuntimeOptions {
            max_queue_size: args.max_queue_size.max(1),
            task_threads: args.task_threads.map(|n| n as usize),
        },
    )
    .context("cannot start the task preprocessing threads")?;
    Ok(Arc::new(runtime))
}

/// Runs the server until SIGINT or SIGTERM, then drains it.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !args.model_repository.is_dir() {
        anyhow::bail!(
            "model repository {} is not a directory",
            args.model_repository.display()
        );
    }
    let runtime = start_runtime(&args.runtime)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args, runtime))
}

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("{what} listening on http://{bound}");
    Ok(listener)
}

async fn serve(args: ServeArgs, runtime: Arc<Runtime>) -> anyhow::Result<()> {
    // Listen first, so liveness probes answer while models load; readiness waits for them.
    let http = bind(SocketAddr::new(args.host, args.http_port), "HTTP").await?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = ferroserve_http::router(
        runtime.clone(),
        HttpOptions {
            max_request_bytes: args.runtime.max_request_bytes,
        },
    );
    let mut servers = vec![tokio::spawn(ferroserve_http::serve(
        http,
        app,
        until_stopped(stopped.clone()),
    ))];
    let grpc = bind(SocketAddr::new(args.host, args.grpc_port), "gRPC").await?;
    let grpc_options = ferroserve_grpc::GrpcOptions {
        max_message_bytes: args.grpc_max_message_bytes,
    };
    let grpc_runtime = runtime.clone();
    let grpc_stop = until_stopped(stopped.clone());
    servers.push(tokio::spawn(async move {
        ferroserve_grpc::serve(grpc, grpc_runtime, grpc_options, grpc_stop)
            .await
            .map_err(std::io::Error::other)
    }));
    if let Some(port) = args.metrics_port {
        let listener = bind(SocketAddr::new(args.host, port), "metrics").await?;
        servers.push(tokio::spawn(ferroserve_http::serve(
            listener,
            ferroserve_http::metrics_router(runtime.clone()),
            until_stopped(stopped.clone()),
        )));
    }

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let repo = args.model_repository.clone();
    let loader = runtime.clone();
    let loading = tokio::task::spawn_blocking(move || loader.load_repository(&repo));
    tokio::select! {
        loaded = loading => {
            loaded
                .context("model loading panicked")?
                .with_context(|| format!("cannot read model repository {}", args.model_repository.display()))?;
            let rows = runtime.index(false);
            let ready = rows.iter().filter(|r| r.state == ModelState::Ready).count();
            tracing::info!(ready, unavailable = rows.len() - ready, "server ready");
            signal.await;
        }
        () = &mut signal => {}
    }

    drain(stop, servers, runtime, args.runtime.shutdown_grace).await
}

/// Stops the listeners (through `stop`), waits for requests in flight and the models' queues,
/// up to `grace_s` seconds.
pub(crate) async fn drain(
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Arc<Runtime>,
    grace_s: f64,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs_f64(grace_s);
    tracing::info!(
        grace_s,
        "shutting down: no new connections, finishing requests in flight"
    );
    let _ = stop.send(true);
    let drain = async {
        for s in servers {
            s.await.context("HTTP server task failed")??;
        }
        let rt = runtime.clone();
        tokio::task::spawn_blocking(move || rt.shutdown())
            .await
            .context("stopping the models failed")?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => {
            result?;
            tracing::info!("shut down cleanly");
        }
        Err(_) => tracing::warn!(
            grace_s,
            "requests still running when the shutdown grace period ended; exiting anyway"
        ),
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
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
}
